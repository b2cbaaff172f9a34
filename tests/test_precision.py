"""bf16 compute with float32 master parameters: it trains, and its meta-gradient stays close to float32's."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrec
from jaxrec.scale.precision import cast_floats, mixed_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multidevice import workload  # noqa: E402

OPTIONS = dict(inner_lr=0.1, inner_steps=2)


def test_cast_floats_leaves_ids_and_masks():
    rows = {"x": jnp.ones((2, 3)), "item": jnp.arange(2), "flag": jnp.array([True, False])}
    cast = cast_floats(rows, jnp.bfloat16)
    assert cast["x"].dtype == jnp.bfloat16
    assert cast["item"].dtype == rows["item"].dtype and cast["flag"].dtype == jnp.bool_


def test_loss_is_float32_and_computed_in_bf16():
    seen = []

    def loss(params, rows, mask):
        seen.append((params["w1"].dtype, rows["x"].dtype))
        return workload.loss_fn(params, rows, mask)

    batch = workload.task_batch(1, seed=0)
    rows = jax.tree.map(lambda x: jnp.asarray(x[0]), batch.support)
    value, grads = jax.jit(jax.value_and_grad(mixed_precision(loss)))(
        workload.init_params(), rows, jnp.asarray(batch.support_mask[0])
    )
    assert value.dtype == jnp.float32
    assert seen[0] == (jnp.bfloat16, jnp.bfloat16)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def _meta_grad(loss_fn):
    return jax.jit(functools.partial(jaxrec.meta_value_and_grad, loss_fn=loss_fn, **OPTIONS))


def test_meta_gradient_close_to_float32():
    params, batch = workload.init_params(), workload.task_batch(16, seed=3)
    full_loss, full = _meta_grad(workload.loss_fn)(params, batch)
    mixed_loss, mixed = _meta_grad(mixed_precision(workload.loss_fn))(params, batch)
    assert mixed_loss.dtype == jnp.float32
    np.testing.assert_allclose(mixed_loss, full_loss, rtol=2e-2)
    for name in full:
        assert mixed[name].dtype == jnp.float32
        error = np.linalg.norm(np.asarray(mixed[name]) - np.asarray(full[name]))
        assert error <= 3e-2 * np.linalg.norm(np.asarray(full[name])) + 1e-4, name


def test_trains_with_float32_master_params():
    batches = workload.batches(1, tasks=16) * 30
    params, history = jaxrec.meta_train(
        workload.init_params(),
        batches,
        loss_fn=mixed_precision(workload.loss_fn),
        optimizer=optax.adam(3e-2),
        mesh=None,
        **OPTIONS,
    )
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    state = history["state"]
    assert all(
        x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)
    )
    assert np.all(np.isfinite(history["loss"])) and history["skipped"] == 0
    assert history["loss"][-5:].mean() < 0.9 * history["loss"][:5].mean()
