"""Helpers shared by tests and benchmarks (no pytest fixtures here)."""
