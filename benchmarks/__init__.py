"""Benchmark scripts (not part of the observer package; see docs/benchmarks.md)."""
