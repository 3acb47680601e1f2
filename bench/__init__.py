"""Benchmark scripts (run with python -m bench.<name>); numbers go in the README."""
