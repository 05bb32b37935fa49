"""Benchmarks: a raw engine call vs the same work through HTTP, same clips, same run (not tests)."""
