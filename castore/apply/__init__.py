"""castore.apply.run."""
