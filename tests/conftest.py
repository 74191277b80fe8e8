"""Test-wide settings: float32 on CPU, deterministic."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
