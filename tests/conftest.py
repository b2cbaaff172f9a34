"""Shared fixtures."""

import os
from pathlib import Path

# The suite compiles hundreds of small XLA programs and runs each a few times: without backend optimisation the
# compiles are about a third cheaper on CPU, and results are unchanged within the tests' tolerances. Set before
# JAX starts; subprocesses (CLI, notebooks, multi-device runs) inherit it. An explicit setting wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def float64():
    """Run one test in float64 (gradients are compared to 1e-10 there)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
