"""Interop tests with upstream containerd/continuity (Go)."""
