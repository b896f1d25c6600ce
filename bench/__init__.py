"""Benchmarks: each module prints a table for BENCHMARKS.md (run with `python -m bench.NAME`)."""
