"""Shared fixtures."""

from pathlib import Path

import jax
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def float64():
    """Run one test in float64 (gradients are compared to 1e-10 there)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
