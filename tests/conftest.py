"""Shared fixtures."""

import os
import tempfile
from pathlib import Path

# The suite compiles hundreds of small XLA programs and runs each a few times: without backend optimisation the
# compiles are about a third cheaper on CPU, and results are unchanged within the tests' tolerances. Set before
# JAX starts; subprocesses (CLI, notebooks, multi-device runs) inherit it. An explicit setting wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# Many tests compile the same programs: the in-process ones on both xdist workers, and the subprocesses (the CLI,
# servers, notebooks, the multi-device suite) again. A compilation cache shared by one test run's processes (they
# inherit the first one's setting; a new run starts empty, so every program is still compiled once per run) lets
# each slower compile be done once. An explicit setting wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"jaxrec-test-compiles-{run}")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # the unoptimised compiles are quick

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


# The longest modules first: xdist (--dist loadscope) hands each worker a whole module at a time, in collection
# order, and the longest ones sort last by name (test_topn*, test_tanp, test_serve): a worker then ran one of them
# alone at the end while the other was idle. Started first, the short modules fill in behind them. Measured on two
# cores (--durations); a module not named keeps its place after these.
LONGEST_MODULES = (
    "test_topn.py",
    "test_topn_cli.py",
    "test_serve.py",
    "test_mamo.py",
    "test_tanp.py",
    "test_multidevice.py",
    "test_side_features.py",
    "test_item_tasks.py",
    "test_local_embeddings.py",
    "test_cli.py",
    "test_experiment.py",
    "test_notebooks.py",
)


def pytest_collection_modifyitems(session, config, items):
    first = {name: rank for rank, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: each module's own order kept
