"""castore.mount."""
