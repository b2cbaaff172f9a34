"""Item-id dropout (jaxrec.data.augment): what it drops, what it leaves, and that it trains the OOV slot."""

import itertools

import jax
import numpy as np
import pytest

import jaxrec
from jaxrec import models as M
from jaxrec.data.augment import drop_ids, drop_item_ids, unknown_fraction
from jaxrec.evaluation.baselines import train_supervised
from jaxrec.experiment import Experiment, ExperimentConfig

SPEC = jaxrec.testing.reference_spec(40)
# a tiny MeLU experiment on the bundled data, for the meta-train batch stream
TINY = dict(
    model_kwargs={"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": None},
    inner_steps=1,
    pretrain=False,
)


def test_drop_ids_replaces_a_rate_fraction_by_the_oov_slot_and_nothing_else():
    ids = np.arange(1, 100_001, dtype=np.int32) % 39 + 1  # no OOV id to begin with
    dropped = drop_ids(ids, 0.3, np.random.default_rng(0))
    assert dropped.dtype == ids.dtype and dropped.shape == ids.shape
    hit = dropped != ids
    assert np.all(dropped[hit] == 0)
    # binomial(100000, 0.3): standard deviation 145, so 5 of them is 725
    assert abs(int(hit.sum()) - 30_000) < 725
    np.testing.assert_array_equal(dropped, drop_ids(ids, 0.3, np.random.default_rng(0)))  # the rng decides
    np.testing.assert_array_equal(drop_ids(ids, 0.0, np.random.default_rng(0)), ids)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout rate"):
            drop_ids(ids, bad, np.random.default_rng(0))


def test_drop_item_ids_touches_only_the_item_column_of_both_sides():
    batch = jaxrec.testing.synthetic_task_batch(SPEC, tasks=8, support=32, query=16, key=jax.random.key(0))
    batch = jax.tree.map(np.asarray, batch)
    out = drop_item_ids(batch, 0.5, np.random.default_rng(1))
    for side, new in ((batch.support, out.support), (batch.query, out.query)):
        assert set(new) == set(side)
        for key in side:
            if key != "item":
                np.testing.assert_array_equal(new[key], side[key])
        changed = new["item"] != side["item"]
        assert changed.any() and np.all(new["item"][changed] == 0)
    np.testing.assert_array_equal(out.support_mask, batch.support_mask)
    no_item = batch.replace(support={k: v for k, v in batch.support.items() if k != "item"})
    assert drop_item_ids(no_item, 0.5, np.random.default_rng(1)) is no_item


def test_drop_item_ids_with_negatives_drops_the_sampled_negatives_ids_at_the_same_rates():
    batch = jaxrec.testing.synthetic_task_batch(SPEC, tasks=64, support=32, query=16, key=jax.random.key(0))
    batch = jax.tree.map(np.asarray, batch)
    rng = np.random.default_rng(2)
    negatives = {k: rng.integers(1, 50, (64, n, 5)) for k, n in (("support", 32), ("query", 16))}
    batch = batch.replace(
        support=dict(batch.support, neg_item=negatives["support"]), query=dict(batch.query, neg_item=negatives["query"])
    )
    plain = drop_item_ids(batch, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(plain.support["neg_item"], batch.support["neg_item"])  # positives only, as before
    out = drop_item_ids(batch, 0.3, np.random.default_rng(1), negatives=True)
    for side, new in ((batch.support, out.support), (batch.query, out.query)):
        for key in ("item", "neg_item"):
            changed = new[key] != side[key]
            assert np.all(new[key][changed] == 0)
            # binomial: 64 * 16 * 5 draws at 0.3 have a standard deviation under 0.01 of the fraction
            assert abs(changed.mean() - 0.3) < 0.05, (key, changed.mean())
        np.testing.assert_array_equal(new["item_year"], side["item_year"])
    cold = drop_item_ids(batch, 0.0, np.random.default_rng(3), task_rate=0.5, negatives=True)
    whole = np.all(cold.support["item"] == 0, axis=1)
    assert 0 < whole.sum() < 64
    np.testing.assert_array_equal(np.all(cold.support["neg_item"] == 0, axis=(1, 2)), whole)
    np.testing.assert_array_equal(np.all(cold.query["neg_item"] == 0, axis=(1, 2)), whole)
    assert unknown_fraction(0.3, 0.5) == pytest.approx(0.65)


def test_supervised_training_with_dropout_trains_the_oov_item_slot():
    model = M.MeLU(SPEC, embed=4, hidden=(8,), use_ids=("item",), interaction=None, item_bias=True)
    variables = M.init_params(model, SPEC, jax.random.key(0))
    rows = {k: np.asarray(v) for k, v in jaxrec.testing.synthetic_rows(SPEC, 512, jax.random.key(1)).items()}
    rows["item"] = np.maximum(rows["item"], 1)  # every row names a known item
    train = dict(loss_fn=M.default_loss(model), epochs=2, batch_size=32)
    plain, _ = train_supervised(variables, rows, **train)
    dropped, _ = train_supervised(variables, rows, item_dropout=0.25, **train)
    start = variables["params"]
    for name in ("embed_item", "bias_embed_item"):
        before = np.asarray(start[name]["embedding"][0])
        np.testing.assert_array_equal(np.asarray(plain["params"][name]["embedding"][0]), before)  # never read
        assert np.abs(np.asarray(dropped["params"][name]["embedding"][0]) - before).max() > 1e-3


def test_experiment_drops_a_rate_fraction_of_the_item_ids_of_meta_train_batches():
    plain = Experiment(ExperimentConfig.make(**TINY, item_dropout=0.0))
    dropping = Experiment(ExperimentConfig.make(**TINY, item_dropout=0.2))
    valid = dropped = 0
    for a, b in itertools.islice(zip(plain.batches(), dropping.batches(), strict=True), 3):
        for side, mask in (("support", "support_mask"), ("query", "query_mask")):
            ids, ids_dropped, m = getattr(a, side)["item"], getattr(b, side)["item"], getattr(a, mask)
            assert not np.any(ids[m] == 0)  # meta-train items are all known
            np.testing.assert_array_equal(ids_dropped[ids_dropped != 0], ids[ids_dropped != 0])
            valid += int(m.sum())
            dropped += int(np.sum((ids_dropped == 0) & m))
    assert valid > 2000 and abs(dropped / valid - 0.2) < 5 * np.sqrt(0.2 * 0.8 / valid)


def test_task_dropout_drops_every_item_id_of_whole_tasks_and_only_of_them():
    batch = jax.tree.map(
        np.asarray, jaxrec.testing.synthetic_task_batch(SPEC, tasks=400, support=8, query=4, key=jax.random.key(2))
    )
    batch = batch.replace(
        support=dict(batch.support, item=np.maximum(batch.support["item"], 1)),
        query=dict(batch.query, item=np.maximum(batch.query["item"], 1)),
    )
    out = drop_item_ids(batch, 0.0, np.random.default_rng(3), task_rate=0.3)
    whole = np.all(out.support["item"] == 0, axis=1)
    np.testing.assert_array_equal(np.all(out.query["item"] == 0, axis=1), whole)  # support and query together
    np.testing.assert_array_equal(out.support["item"][~whole], batch.support["item"][~whole])  # the rest untouched
    np.testing.assert_array_equal(out.query["item"][~whole], batch.query["item"][~whole])
    assert abs(whole.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 400)
    # without task dropout the rng stream, and so the row dropout, is that of before the option: support then query
    rng = np.random.default_rng(4)
    before = drop_ids(batch.support["item"], 0.2, rng), drop_ids(batch.query["item"], 0.2, rng)
    rows_only = drop_item_ids(batch, 0.2, np.random.default_rng(4))
    np.testing.assert_array_equal(rows_only.support["item"], before[0])
    np.testing.assert_array_equal(rows_only.query["item"], before[1])
    every = drop_item_ids(batch, 0.0, np.random.default_rng(0), task_rate=1.0)  # every task cold
    assert not np.any(every.support["item"]) and not np.any(every.query["item"])
    with pytest.raises(ValueError, match="task id dropout rate"):
        drop_item_ids(batch, 0.0, np.random.default_rng(0), task_rate=1.5)


def test_experiment_hides_every_item_id_of_a_task_dropout_fraction_of_meta_train_tasks():
    plain = Experiment(ExperimentConfig.make(**TINY, item_dropout=0.0))
    dropping = Experiment(ExperimentConfig.make(**TINY, item_dropout=0.0, task_item_dropout=0.3))
    whole = tasks = 0
    for a, b in itertools.islice(zip(plain.batches(), dropping.batches(), strict=True), 8):
        real = a.support_mask.any(axis=1)
        hidden = np.all((b.support["item"] == 0) | ~a.support_mask, axis=1) & real
        np.testing.assert_array_equal(np.all((b.query["item"] == 0) | ~a.query_mask, axis=1) & real, hidden)
        np.testing.assert_array_equal(b.support["item"][~hidden], a.support["item"][~hidden])  # the others intact
        whole, tasks = whole + int(hidden.sum()), tasks + int(real.sum())
    assert tasks >= 200 and abs(whole / tasks - 0.3) < 5 * np.sqrt(0.3 * 0.7 / tasks)
