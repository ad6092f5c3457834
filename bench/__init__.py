"""Benchmark of genq against in-process transformers (`python -m bench.run`)."""
