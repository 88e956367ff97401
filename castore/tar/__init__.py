"""castore.tar."""
