"""Addresses in MLflow's UI that need no MLflow import (``distill status`` builds them, and
importing MLflow costs it seconds); the rest of the links are made in ``tasks.tracking``."""

from __future__ import annotations

# MLflow 3's UI opens in its GenAI mode ("Evaluations") unless the URL asks for the training view
# ("Model training": runs, metrics, charts); the experiment tag mlflow.experimentKind alone does
# not switch it (checked in a browser against MLflow 3.17).
TRAINING_VIEW = "workflowType=machine_learning"


def home_url(server: str) -> str:
    """A server UI's experiment list in the training view (its bare address opens the GenAI
    home)."""
    return f"{server.rstrip('/')}/#/experiments?{TRAINING_VIEW}"
