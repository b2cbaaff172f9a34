"""A tiny MLP workload for the multi-device tests: cheap to compile, deterministic host-side data."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxrec import TaskBatch, mse_loss

FEATURES = 6
HIDDEN = 8


def init_params(seed: int = 0) -> dict:
    """Float32 parameters of a one-hidden-layer regressor."""
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.normal(0, 0.5, (FEATURES, HIDDEN)), jnp.float32),
        "b1": jnp.zeros((HIDDEN,), jnp.float32),
        "w2": jnp.asarray(rng.normal(0, 0.5, (HIDDEN,)), jnp.float32),
        "b2": jnp.zeros((), jnp.float32),
    }


def apply(params: dict, rows: dict) -> jnp.ndarray:
    """Scores ``[rows]``."""
    hidden = jnp.tanh(rows["x"] @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


loss_fn = mse_loss(apply)


def task_batch(tasks: int, seed: int, support: int = 5, query: int = 4) -> TaskBatch:
    """``tasks`` random tasks with ragged (masked) support and query sets, as host NumPy arrays."""
    rng = np.random.default_rng(seed)

    def side(rows):
        x = rng.normal(size=(tasks, rows, FEATURES)).astype(np.float32)
        rating = rng.normal(size=(tasks, rows)).astype(np.float32)
        mask = np.arange(rows)[None, :] < rng.integers(1, rows + 1, (tasks, 1))
        return {"x": x, "rating": rating}, mask

    support_rows, support_mask = side(support)
    query_rows, query_mask = side(query)
    return TaskBatch(support_rows, query_rows, support_mask, query_mask, np.arange(tasks, dtype=np.int32))


def batches(count: int, tasks: int, seed: int = 0) -> list[TaskBatch]:
    """``count`` batches of ``tasks`` tasks each."""
    return [task_batch(tasks, seed + i) for i in range(count)]
