"""castore.gc.collect."""
