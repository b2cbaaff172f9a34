"""``meta_evaluate`` sharded over 4 (forced CPU) devices gives the single-device metrics and per-user statistics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxrec
from jaxrec.evaluation.predict import meta_evaluate

from . import workload

pytestmark = [
    pytest.mark.multidevice,
    pytest.mark.skipif(jax.device_count() < 4, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4"),
]


def _evaluate(batches, params, mesh):
    return meta_evaluate(
        params,
        batches,
        apply_fn=workload.apply,
        loss_fn=workload.loss_fn,
        inner_lr=0.1,
        inner_steps=1,
        ks=(1, 3),
        mesh=mesh,
        resamples=50,
        return_stats=True,
    )


def test_meta_evaluate_on_four_devices_equals_one():
    # 6-task batches (padded to 8 on the mesh) and a 4-task batch; params replicated by a short mesh run
    batches = workload.batches(2, tasks=6, seed=30) + workload.batches(1, tasks=4, seed=40)
    mesh = jaxrec.make_mesh(4)
    params, _ = jaxrec.meta_train(
        workload.init_params(),
        workload.batches(1, tasks=8),
        loss_fn=workload.loss_fn,
        inner_lr=0.1,
        inner_steps=1,
        mesh=mesh,
    )
    sharded, sharded_stats = _evaluate(batches, params, mesh)
    single, single_stats = _evaluate(batches, jax.device_get(params), None)
    assert sharded["users"] == single["users"] == 16
    for metric in ("mae", "rmse", "ndcg@1", "ndcg@3"):
        np.testing.assert_allclose(sharded[metric], single[metric], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sharded_stats["user"], single_stats["user"])
    for key, value in single_stats.items():
        np.testing.assert_allclose(sharded_stats[key], value, rtol=1e-5, atol=1e-6)
