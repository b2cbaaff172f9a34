"""Runs ``tests/multidevice`` in its own pytest process with 4 forced CPU devices.

The device count of a JAX process is fixed when its backend starts, so the multi-device tests cannot share this
process (they are collected here too, and skip). This wrapper makes the README's single ``python -m pytest -q``
really run them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


# one process per file, so that pytest-xdist can run them side by side
SUITE = sorted(p.name for p in (ROOT / "tests" / "multidevice").glob("test_*.py"))


@pytest.mark.multidevice
@pytest.mark.parametrize("suite", SUITE)
def test_multidevice_suite_passes_on_four_cpu_devices(suite):
    env = dict(os.environ)
    # unoptimised XLA code generation: these tests compare results and spend most of their time compiling
    flags = " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + flags).strip()
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/multidevice/{suite}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), output[-6000:]
    assert "skipped" not in summary, f"multi-device tests were skipped, not run: {summary}"


def test_use_every_core_says_the_count_xla_flags_already_set():
    """It returned the count asked for while XLA_FLAGS' count stayed in effect (and the mesh used that one)."""
    code = "import jax, jaxrec; print(jaxrec.use_every_core(2), jax.device_count())"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "3"]
