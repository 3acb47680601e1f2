"""Benchmark scripts (python -m bench.<name>); numbers go in the docs/ page of their topic."""
