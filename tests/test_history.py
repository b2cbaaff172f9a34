"""History sequences built by the task pipeline: ``build_tasks(..., history=L)`` on ml-latest-small, time split.

A row's history is the last ``L`` support rows strictly before it (support rows) or the last ``L`` support rows
(query rows); query ratings and a row's own target must never be visible.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest

import jaxrec
import jaxrec.data as jd
from jaxrec import models
from jaxrec.data.tasks import build_tasks, cold_start_split, task_batches

L = 5


@pytest.fixture(scope="module")
def ds():
    return jd.load()


@pytest.fixture(scope="module")
def split(ds):
    return cold_start_split(ds, "time", seed=0)


@pytest.fixture(scope="module")
def feat(ds, split):
    return jd.Featurizer.fit(ds, split.train)


@pytest.fixture(scope="module")
def tasks(split, feat):
    return build_tasks(split.train, feat, "time", history=L, seed=0)


@pytest.fixture(scope="module")
def epoch(tasks):
    """One epoch of numpy batches, with the task indices of each."""
    plan = tasks.batch_plan(64, None)
    return [(index, tasks.make_batch(index)) for index in plan]


def _support_query_pairs(tasks, t):
    """(vocabulary item, rating) of task ``t``'s support rows (in support order) and of its query rows."""
    item_index = tasks.featurizer.item_index
    s = slice(tasks.support_start[t], tasks.support_start[t] + tasks.support_len[t])
    q = slice(tasks.query_start[t], tasks.query_start[t] + tasks.query_len[t])
    pairs = lambda r: list(zip(item_index[tasks.row_item[r]].tolist(), tasks.row_rating[r].tolist(), strict=True))
    return pairs(s), pairs(q)


def test_spec_reports_history_and_featurizer_is_untouched(tasks, feat, split):
    assert tasks.spec.history == L and tasks.history == L
    assert feat.spec.history == 0
    assert dataclasses.replace(tasks.spec, history=0) == feat.spec
    plain = build_tasks(split.train, feat, "time", seed=0)
    assert plain.spec == feat.spec
    batch = plain.make_batch(np.arange(2))
    assert "history_item" not in batch.support and "history_item" not in batch.query
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="history"):
            build_tasks(split.train, feat, "time", history=bad)


def test_shapes_dtypes_padding_and_masks_align(epoch):
    for _, b in epoch:
        for rows, mask in ((b.support, b.support_mask), (b.query, b.query_mask)):
            hi, hr = rows["history_item"], rows["history_rating"]
            assert hi.dtype == np.int32 and hr.dtype == np.float32
            assert hi.shape == (*mask.shape, L) and hr.shape == hi.shape
            assert ((hi == 0) == (hr == 0)).all()  # ml ratings are > 0: one padding mask for both keys
            assert (hi[~mask] == 0).all() and (hr[~mask] == 0).all()  # padded rows: all-padding history
            real = hi > 0
            assert (real[..., 1:] >= real[..., :-1]).all()  # left padding: real steps form a suffix


def test_support_history_matches_slow_reference(tasks, epoch):
    """Plain Python loops over a few tasks: support row j sees support rows max(0, j-L)..j-1, query rows the last
    L support rows; left-padded with (0, 0)."""
    checked = 0
    for index, b in epoch[:3]:
        for slot, t in enumerate(index[:4]):
            if t < 0:
                continue
            support, query = _support_query_pairs(tasks, t)
            for j in range(len(support)):
                expected = support[max(0, j - L) : j]
                expected = [(0, 0.0)] * (L - len(expected)) + expected
                got = list(
                    zip(
                        b.support["history_item"][slot, j].tolist(),
                        b.support["history_rating"][slot, j].tolist(),
                        strict=True,
                    )
                )
                assert got == expected, (t, j)
                assert b.support["item"][slot, j] == support[j][0]  # the row itself is not in its history
            last = support[-L:]
            last = [(0, 0.0)] * (L - len(last)) + last
            for j in range(len(query)):
                got = list(
                    zip(
                        b.query["history_item"][slot, j].tolist(),
                        b.query["history_rating"][slot, j].tolist(),
                        strict=True,
                    )
                )
                assert got == last, (t, j)
            checked += 1
    assert checked >= 8


def test_support_order_is_time_order(tasks, split, ds):
    """Under split='time' "preceding" means earlier: support rows are in time order, all before the query."""
    frame = split.train.set_index(["user", "item"])["timestamp"]
    for t in range(0, len(tasks), max(1, len(tasks) // 10)):
        s = np.arange(tasks.support_start[t], tasks.support_start[t] + tasks.support_len[t])
        q = np.arange(tasks.query_start[t], tasks.query_start[t] + tasks.query_len[t])
        time = lambda r: frame.loc[list(zip(tasks.row_user[r].tolist(), tasks.row_item[r].tolist(), strict=True))]
        ts, tq = time(s).to_numpy(), time(q).to_numpy()
        assert (np.diff(ts) >= 0).all() and ts.max() <= tq.min()


def test_no_query_item_or_rating_ever_in_a_history(tasks, epoch):
    # 1) every history step is one of the task's own support rows, never one of its query rows
    n_vocab = tasks.spec.categorical["item"]
    for index, b in epoch:
        for slot, t in enumerate(index):
            if t < 0:
                continue
            support, query = _support_query_pairs(tasks, t)
            s_items = {i for i, _ in support}
            q_items = {i for i, _ in query}
            for rows in (b.support, b.query):
                hist = set(np.unique(rows["history_item"][slot]).tolist()) - {0}
                assert hist <= s_items and not hist & q_items, t
        assert b.support["history_item"].max() < n_vocab
    # 2) scrambling every query row (item and rating) leaves every history unchanged
    scrambled = dataclasses.replace(tasks, row_item=tasks.row_item.copy(), row_rating=tasks.row_rating.copy())
    for start, length in zip(tasks.query_start, tasks.query_len, strict=True):
        scrambled.row_item[start : start + length] = 0
        scrambled.row_rating[start : start + length] = np.nan
    for index, b in epoch[::4]:
        again = scrambled.make_batch(index)
        for key in ("history_item", "history_rating"):
            np.testing.assert_array_equal(again.support[key], b.support[key])
            np.testing.assert_array_equal(again.query[key], b.query[key])


def test_implicit_negatives_share_the_history_of_their_real_row(ds, split):
    feat = jd.Featurizer.fit(ds, split.train, implicit_threshold=4.0)
    ts = build_tasks(split.train, feat, "time", history=3, negatives=2, seed=0, support_buckets=[32], query_buckets=[8])
    assert ts.spec.history == 3 and ts.spec.target == "label"
    b = ts.make_batch(np.array([0, 1, 2, -1]), np.random.default_rng(0))
    for rows, mask in ((b.support, b.support_mask), (b.query, b.query_mask)):
        size = mask.shape[1] // 3
        real = rows["history_item"][:, :size]
        for k in (1, 2):
            neg = rows["history_item"][:, k * size : (k + 1) * size]
            neg_mask = mask[:, k * size : (k + 1) * size]
            np.testing.assert_array_equal(neg[neg_mask], real[neg_mask])
            assert (neg[~neg_mask] == 0).all()
        assert (rows["history_item"][3] == 0).all()  # the padding task


def test_task_batches_threads_history(split, feat):
    stream = task_batches(
        split.train, featurizer=feat, split="time", batch_size=4, history=3, epochs=1, shuffle=False, prefetch=False
    )
    b = next(iter(stream))
    assert b.support["history_item"].shape[-1] == 3 and b.query["history_rating"].shape[-1] == 3


def test_gru_meta_trains_on_history_batches(split, feat):
    """A short MAML run of the GRU on real history batches (8 fixed tasks, tiny sizes): finite, decreasing loss."""
    users = np.sort(split.train["user"].unique())[:8]
    ratings = split.train[split.train["user"].isin(users)]
    ts = build_tasks(ratings, feat, "time", history=2, seed=0, support_buckets=[16], query_buckets=[8])
    assert len(ts) == 8
    model = models.create("gru", ts.spec, embed=4, hidden_state=4, hidden=(4,))
    params = models.init_params(model, ts.spec, jax.random.key(0))
    params, hist = jaxrec.meta_train(
        params,
        task_batches(ts, batch_size=8, seed=0, prefetch=False),
        loss_fn=models.default_loss(model),
        order="first",
        inner_lr=0.05,
        inner_steps=1,
        optimizer=optax.adam(3e-2),
        steps=20,
        mesh=None,
    )
    loss = np.asarray(hist["loss"])
    assert len(loss) == 20 and np.isfinite(loss).all()
    assert loss[-5:].mean() < 0.7 * loss[:5].mean(), loss
