"""Shared test settings: deterministic torch on few threads, no hub lookups."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect: a throwaway home, no telemetry, and time for a fresh temporary server to start.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="distill-lab-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
