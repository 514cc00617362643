"""Benchmarks of the screening platform against a plain baseline (``lungscreen bench``)."""
