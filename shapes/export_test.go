package shapes

// ForgetShapes does what a push that met a changed table does: the store
// forgets its checked shapes, and the next request checks them again.
func (s *Store) ForgetShapes() {
	s.mu.Lock()
	set := s.set
	s.mu.Unlock()
	s.recheckOn(set, ErrSchemaChanged)
}
