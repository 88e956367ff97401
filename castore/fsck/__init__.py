"""castore.fsck.check."""
