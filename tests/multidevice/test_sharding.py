"""Sharding the task axis over 4 (forced CPU) devices gives the single-device result.

Run in their own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (``tests/test_multidevice.py``
does this inside the main suite); skipped where fewer than 4 devices are visible.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

import jaxrec
from jaxrec.scale.sharding import TASK_AXIS, shard_batch

from . import workload

pytestmark = [
    pytest.mark.multidevice,
    pytest.mark.skipif(jax.device_count() < 4, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4"),
]

# (algorithm, order, mesh): one case uses mesh="auto", which is all 4 devices here
ALGORITHMS = [
    ("maml", "second", 4),
    ("maml", "first", "auto"),
    ("reptile", "second", 4),
    ("metasgd", "second", 4),
]


def _train(batches, mesh, algorithm="maml", order="second"):
    return jaxrec.meta_train(
        workload.init_params(),
        batches,
        loss_fn=workload.loss_fn,
        algorithm=algorithm,
        order=order,
        inner_lr=0.1,
        inner_steps=1,
        optimizer=optax.adam(1e-2),
        mesh=mesh,
    )


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("algorithm,order,mesh", ALGORITHMS)
def test_mesh_of_four_equals_single_device(algorithm, order, mesh):
    batches = workload.batches(4, tasks=8)
    sharded, history = _train(batches, jaxrec.make_mesh(mesh) if isinstance(mesh, int) else mesh, algorithm, order)
    single, single_history = _train(batches, None, algorithm, order)
    _assert_close(sharded, single)
    np.testing.assert_allclose(history["loss"], single_history["loss"], rtol=1e-5, atol=1e-6)
    assert history["compilations"] == 1


def test_uneven_batch_is_padded_not_refused():
    # 6 tasks on 4 devices are padded to 8 with empty tasks; an 8-task batch then has the same device shape
    batches = workload.batches(3, tasks=6) + workload.batches(2, tasks=8, seed=10)
    sharded, history = _train(batches, jaxrec.make_mesh(4))
    single, single_history = _train(batches, None)
    _assert_close(sharded, single)
    np.testing.assert_allclose(history["loss"], single_history["loss"], rtol=1e-5, atol=1e-6)
    # compiled once per (padded) shape, not per step: one shape on the mesh, two on one device
    assert history["steps"] == 5
    assert history["compilations"] == 1
    assert single_history["compilations"] == 2


def test_an_inner_adam_without_eps_root_trains_on_a_padded_batch():
    # the padding tasks' inner gradients are all 0, where Adam's square root has no derivative: they must not make
    # every meta-step NaN (skipped), as they did while one device trained the same batches
    batches = workload.batches(3, tasks=6)
    kwargs = dict(loss_fn=workload.loss_fn, inner_lr=None, inner_steps=2, inner_optimizer=optax.adam(0.05))
    kwargs.update(optimizer=optax.adam(1e-2))
    sharded, history = jaxrec.meta_train(workload.init_params(), batches, mesh=jaxrec.make_mesh(4), **kwargs)
    single, single_history = jaxrec.meta_train(workload.init_params(), batches, mesh=None, **kwargs)
    assert history["skipped"] == single_history["skipped"] == 0
    _assert_close(sharded, single)
    np.testing.assert_allclose(history["loss"], single_history["loss"], rtol=1e-5, atol=1e-6)


def test_auto_mesh_is_all_devices():
    assert jaxrec.scale.sharding.default_mesh().size == jax.device_count() >= 4


def test_batch_is_sharded_and_params_replicated():
    mesh = jaxrec.make_mesh(4)
    trainer = jaxrec.MetaTrainer(loss_fn=workload.loss_fn, inner_lr=0.1, inner_steps=2, mesh=mesh)
    state = trainer.init(workload.init_params())
    batch = shard_batch(workload.task_batch(6, seed=1), mesh)

    # every batch array is split along its task axis: 8 padded tasks, 2 per device
    mask = batch.support_mask
    assert isinstance(mask.sharding, NamedSharding) and mask.sharding.spec[0] == TASK_AXIS
    assert mask.shape[0] == 8 and {s.data.shape[0] for s in mask.addressable_shards} == {2}
    assert len({s.device for s in batch.query["x"].addressable_shards}) == 4

    # the compiled step reduces the gradient across devices and keeps one replicated copy of the params
    compiled = trainer._step.lower(state, batch).compile()
    assert "all-reduce" in compiled.as_text()
    for _ in range(3):
        state, _ = compiled(state, batch)
    for leaf in jax.tree.leaves(state.params):
        assert leaf.sharding.is_fully_replicated
        copies = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(copies) == 4
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0])


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_newton_inner_step_on_four_devices_finishes_and_equals_one(algorithm):
    # jaxrec's Newton step solves in plain XLA ops here: jaxlib's batched LAPACK solve waits on the intra-op pool
    # that the devices' executables hold, and hung on one device per core (jaxrec.core.newton.solve)
    batches = workload.batches(3, tasks=8)
    kwargs = {"algorithm": algorithm, "order": "second", "inner_optimizer": jaxrec.newton()}
    sharded, history = jaxrec.meta_train(
        workload.init_params(), batches, loss_fn=workload.loss_fn, inner_lr=0.1, inner_steps=1,
        optimizer=optax.adam(1e-2), mesh=jaxrec.make_mesh(4), **kwargs,
    )  # fmt: skip
    single, single_history = jaxrec.meta_train(
        workload.init_params(), batches, loss_fn=workload.loss_fn, inner_lr=0.1, inner_steps=1,
        optimizer=optax.adam(1e-2), mesh=None, **kwargs,
    )  # fmt: skip
    _assert_close(sharded, single)
    np.testing.assert_allclose(history["loss"], single_history["loss"], rtol=1e-5, atol=1e-6)
