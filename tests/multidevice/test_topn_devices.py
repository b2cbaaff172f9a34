"""A top-N run (``feedback="implicit"``) with ``devices=4`` shards each batch's users over 4 (forced CPU) devices and
trains the same model as on one device."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from cli_support import plays_config

from jaxrec.experiment.topn import TopNExperiment

pytestmark = [
    pytest.mark.multidevice,
    pytest.mark.skipif(jax.device_count() < 4, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4"),
]


def test_topn_training_over_four_devices_is_the_one_device_training(tmp_path):
    config = plays_config(
        tmp_path,
        model_kwargs={"embed": 8},
        batch_size=16,
        shots=3,
        query_cap=20,
        negatives=8,
        epochs=1,
        # BCE, not the default softmax: a softmax over a user's items is blind to the global bias, whose gradient
        # is then rounding noise that Adam scales to a full step of either sign, on one device as on four
        ranking_loss="bce",
    )
    one = TopNExperiment(config)
    four = TopNExperiment(config.override(devices=4))
    assert one.mesh is None and four.mesh.size == 4
    steps = 3
    single, sharded = one.train(steps=steps), four.train(steps=steps)
    assert int(single.step) == int(sharded.step) == steps
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params), strict=True):
        assert len(b.sharding.device_set) == 4  # replicated over the mesh
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the sharded run evaluates like any other: the same top lists from the same parameters
    validation = four.validate(sharded.params, baselines=False)
    assert np.isfinite(validation["maml"]["recall@20"])
