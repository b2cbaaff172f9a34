"""Test and benchmark helpers: synthetic rows and task batches of any :class:`~jaxrec.core.features.FeatureSpec`,
the reference workload's spec, and central finite differences of a scalar function of a pytree.

Nothing here reads data: the generators draw valid random rows on the host (NumPy, seeded by a JAX key), so
that tests and benchmarks build inputs without a compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxrec.core.batch import TaskBatch
from jaxrec.core.features import FeatureSpec

__all__ = [
    "central_differences",
    "float64_rows",
    "perturbed",
    "reference_spec",
    "synthetic_rows",
    "synthetic_task_batch",
]


def reference_spec(item_vocab: int = 1700) -> FeatureSpec:
    """The FeatureSpec of the benchmark reference workload (MovieLens-1M-like MeLU).

    Args:
      item_vocab: the size of the ``"item"`` vocabulary (slot 0 included).

    Returns:
      The :class:`~jaxrec.core.features.FeatureSpec`: one user, ``item_vocab`` items, the user's gender, age,
      occupation and zip, the item's year and 19 multi-hot genres, an explicit ``"rating"`` target in 1..5.
    """
    return FeatureSpec(
        categorical={
            "user": 1,
            "item": int(item_vocab),
            "user_gender": 2,
            "user_age": 7,
            "user_occupation": 21,
            "user_zip": 100,
            "item_year": 8,
        },
        multi_hot={"item_genres": 19},
        target="rating",
        rating_range=(1.0, 5.0),
    )


def _user_side(key: str) -> bool:
    return key == "user" or key.startswith("user_") or key.startswith("history_")


def _host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (typed or raw uint32), so synthetic data costs no compilation."""
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def _host_rows(spec: FeatureSpec, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, vocab in sorted(spec.categorical.items()):
        out[name] = rng.integers(0, vocab, rows, dtype=np.int32)
    for name, width in sorted(spec.multi_hot.items()):
        out[name] = (rng.random((rows, width)) < 0.2).astype(np.float32)
    low, high = spec.rating_range if spec.rating_range is not None else (1.0, 5.0)
    if spec.target == "label":
        out["label"] = (rng.random(rows) < 0.5).astype(np.float32)
        out["neg_item"] = rng.integers(0, spec.categorical["item"], rows, dtype=np.int32)
    else:
        out[spec.target] = rng.integers(int(low), int(high) + 1, rows).astype(np.float32)
    if spec.history > 0:
        length = spec.history
        real = np.arange(length)[None, :] < rng.integers(0, length + 1, (rows, 1))
        items = rng.integers(1, max(spec.categorical["item"], 2), (rows, length), dtype=np.int32)
        ratings = rng.integers(int(low), int(high) + 1, (rows, length))
        out["history_item"] = np.where(real, items, 0).astype(np.int32)
        out["history_rating"] = np.where(real, ratings, 0).astype(np.float32)
    return out


def synthetic_rows(spec: FeatureSpec, rows: int, key: jax.Array) -> dict[str, jax.Array]:
    """Random valid rows of a feature spec.

    Ids are uniform over the whole vocabulary (OOV slot 0 included), multi-hot bits are set with probability 0.2,
    ratings are integers in ``spec.rating_range`` (default 1..5), implicit specs get 0/1 labels with a
    ``neg_item``, and histories are right-padded when ``spec.history > 0``. The rows are generated on the host
    with NumPy seeded by ``key``, so they are deterministic.

    Args:
      spec: the :class:`~jaxrec.core.features.FeatureSpec` the rows follow.
      rows: the number of rows.
      key: a JAX PRNG key (typed or raw ``uint32``); it must be concrete, not traced.

    Returns:
      A dict of arrays ``[rows, ...]``, one per row key of ``spec``.
    """
    return {name: jnp.asarray(value) for name, value in _host_rows(spec, rows, _host_rng(key)).items()}


def synthetic_task_batch(
    spec: FeatureSpec, tasks: int, support: int, query: int, key: jax.Array, padded: bool = True
) -> TaskBatch:
    """A random :class:`jaxrec.TaskBatch` of ``tasks`` users with ``support`` / ``query`` rows each.

    All rows of a task share the user-side keys (``user``, ``user_*``, ``history_*``), as in real data. The batch
    is generated on the host, like :func:`synthetic_rows`.

    Args:
      spec: the :class:`~jaxrec.core.features.FeatureSpec` the rows follow.
      tasks: the number of tasks (users).
      support: the number of support rows of each task (before masking).
      query: the number of query rows of each task (before masking).
      key: a concrete JAX PRNG key (typed or raw ``uint32``).
      padded: if true, each task keeps a random number (at least 1) of its rows on each side and masks the rest;
        if false, every row is real.

    Returns:
      The :class:`~jaxrec.TaskBatch`, with ``task_id = arange(tasks)``.
    """
    rng = _host_rng(key)
    per_task = support + query
    rows = _host_rows(spec, tasks * per_task, rng)
    users = _host_rows(spec, tasks, rng)
    rows = {name: value.reshape((tasks, per_task) + value.shape[1:]) for name, value in rows.items()}
    for name in rows:
        if _user_side(name):
            rows[name] = np.broadcast_to(users[name][:, None], rows[name].shape)

    def mask(size):
        if not padded:
            return np.ones((tasks, size), bool)
        return np.arange(size)[None, :] < rng.integers(1, size + 1, (tasks, 1))

    return TaskBatch(
        support={name: jnp.asarray(value[:, :support]) for name, value in rows.items()},
        query={name: jnp.asarray(value[:, support:]) for name, value in rows.items()},
        support_mask=jnp.asarray(mask(support)),
        query_mask=jnp.asarray(mask(query)),
        task_id=jnp.asarray(np.arange(tasks, dtype=np.int32)),
    )


def float64_rows(batch: TaskBatch) -> TaskBatch:
    """``batch`` with its floating-point rows in float64 (ids and masks as they are), for float64 exactness tests.

    Args:
      batch: a :class:`jaxrec.TaskBatch`.

    Returns:
      The batch with every float array of ``support`` and ``query`` cast to float64 (needs ``jax_enable_x64`` to
      stay float64 on the device).
    """
    cast = lambda v: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v  # noqa: E731
    return batch.replace(support=jax.tree.map(cast, batch.support), query=jax.tree.map(cast, batch.query))


def central_differences(f, params, eps: float = 1e-6) -> np.ndarray:
    """The gradient of a scalar ``f`` at ``params`` by central finite differences, one coordinate at a time.

    Args:
      f: ``f(params) -> scalar``.
      params: any pytree (float64 for a useful comparison).
      eps: the step.

    Returns:
      ``[(f(x + eps e_j) - f(x - eps e_j)) / (2 eps)]_j`` over the raveled leaves (the order of ``ravel_pytree``).
    """
    flat, unravel = ravel_pytree(params)
    basis = np.eye(flat.size)
    return np.array([(f(unravel(flat + eps * e)) - f(unravel(flat - eps * e))) / (2 * eps) for e in basis])


def perturbed(params, scale: float, seed: int = 7, dtype=None):
    """``params`` plus Gaussian noise of standard deviation ``scale``, one key per leaf.

    Flax starts biases at 0, so a ReLU unit of a fresh model can sit exactly on its kink for a whole batch, where
    central differences average the two one-sided slopes; a small random shift moves every unit off it.

    Args:
      params: any pytree of float arrays.
      scale: the noise's standard deviation.
      seed: the PRNG seed.
      dtype: cast every leaf to this dtype first (e.g. ``jnp.float64``), or None to keep each leaf's.

    Returns:
      The perturbed pytree.
    """
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    cast = [jnp.asarray(v, dtype) if dtype is not None else jnp.asarray(v) for v in leaves]
    noisy = [v + scale * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(cast, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)
