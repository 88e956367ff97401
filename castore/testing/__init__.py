"""castore.testing.compare."""
