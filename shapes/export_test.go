package shapes

// SetNaiveStamps switches the reference server's broken stamping scheme on
// or off, for the test that shows the concurrency check catches it.
func SetNaiveStamps(on bool) { naiveStamps = on }
