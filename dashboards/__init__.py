"""Reports over recorded runs (MLflow, the rollout store); imports nothing from flows/."""
