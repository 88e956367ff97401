"""Helpers for tests and benchmarks: tree comparison (compare) and fstest-style appliers (trees)."""
