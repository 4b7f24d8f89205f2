package shapes

// ForgetShapes does what a push that met a changed table does: the store
// forgets its checked shapes, and the next request checks them again.
func (s *Store) ForgetShapes() {
	s.mu.Lock()
	set := s.set
	s.mu.Unlock()
	s.recheckOn(set, ErrSchemaChanged)
}

// PerUserStampsOnly switches the fan-out off: a push into a shared scope
// stamps only its own user's cursor, as pushes did before sharing. Only
// the test that proves the concurrency check can fail uses it.
func PerUserStampsOnly(s *Store) { s.perUserStamps = true }
