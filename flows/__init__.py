"""Prefect flows: wiring only — which task runs, in what order, with which config."""
