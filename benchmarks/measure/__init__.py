"""The parts of `benchmarks/run.py`, one module each."""
