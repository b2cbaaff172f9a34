"""Cold-start splits, task construction and batch streams: partitions, no leaks, masks, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrec.data as jd
from jaxrec import TaskBatch
from jaxrec.data.tasks import bucket_sizes, build_tasks, cold_start_split, task_batches


@pytest.fixture(scope="module")
def ds():
    return jd.load()


@pytest.fixture(scope="module")
def melu_split(ds):
    return cold_start_split(ds, "melu", seed=0)


@pytest.fixture(scope="module")
def feat(ds, melu_split):
    return jd.Featurizer.fit(ds, melu_split.train)


def _pairs(frame: pd.DataFrame) -> set:
    return set(zip(frame["user"].tolist(), frame["item"].tolist(), strict=True))


# ---- cold-start splits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["melu", "time"])
def test_cold_start_split_partitions_ratings_without_leaks(ds, scheme):
    split = cold_start_split(ds, scheme, seed=1)
    parts = [split.train, *split.scenarios.values()]
    assert set(split.scenarios) == {"warm", "new_user", "new_item", "new_user_new_item"}
    assert sum(map(len, parts)) == ds.n_ratings
    assert len(set.union(*map(_pairs, parts))) == ds.n_ratings  # disjoint and complete
    train_users, train_items = set(split.train["user"]), set(split.train["item"])
    assert not train_users & set(split.new_users.tolist())
    assert not train_items & set(split.new_items.tolist())
    sc = split.scenarios
    assert set(sc["new_user"]["user"]) <= set(split.new_users) and not set(sc["new_user"]["item"]) & set(
        split.new_items
    )
    assert set(sc["new_item"]["item"]) <= set(split.new_items) and not set(sc["new_item"]["user"]) & set(
        split.new_users
    )
    assert set(sc["new_user_new_item"]["user"]) <= set(split.new_users)
    assert set(sc["new_user_new_item"]["item"]) <= set(split.new_items)
    assert not set(sc["warm"]["user"]) & set(split.new_users) and not set(sc["warm"]["item"]) & set(split.new_items)
    assert all(len(v) > 0 for v in sc.values())


def test_melu_split_protocol(ds, melu_split):
    years = ds.items["year"].to_numpy(dtype=float, na_value=np.nan)
    new = melu_split.new_items
    assert len(new) == round(0.2 * ds.n_items)
    old_known = np.setdiff1d(np.flatnonzero(~np.isnan(years)), new)
    assert np.nanmin(years[new]) >= np.nanmax(years[old_known])  # newest by release year
    assert len(melu_split.new_users) == round(0.2 * ds.n_users)
    # warm users are known to the model: each also has train rows
    assert set(melu_split.scenarios["warm"]["user"]) <= set(melu_split.train["user"])
    again = cold_start_split(ds, "melu", seed=0)
    pd.testing.assert_frame_equal(again.train, melu_split.train)
    other = cold_start_split(ds, "melu", seed=1)
    assert not np.array_equal(other.new_users, melu_split.new_users)


def test_a_task_set_prints_its_sizes_not_its_arrays(ds, melu_split):
    """The dataclass's own repr printed every row array and the featurizer: 84 kB for the bundled data."""
    tasks = build_tasks(melu_split.train, jd.Featurizer.fit(ds, melu_split.train), split="melu")
    text = repr(tasks)
    assert len(text) < 400 and text.startswith(f"TaskSet({len(tasks)} tasks by user, {len(tasks.row_user) - 1} rows")
    assert "x10" in text and "array" not in text


def test_time_split_cutoff(ds):
    split = cold_start_split(ds, "time", seed=0, time_quantile=0.7)
    cutoff = split.stats["cutoff"]
    assert split.train["timestamp"].max() <= cutoff < split.scenarios["warm"]["timestamp"].min()
    first = ds.ratings.groupby("user")["timestamp"].min()
    np.testing.assert_array_equal(np.sort(split.new_users), np.flatnonzero(first.to_numpy() > cutoff))


def test_split_without_new_items_gives_empty_frames_not_a_crash():
    log = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [5, 6, 5, 6, 5], "rating": [1, 2, 3, 4, 5]})
    ds = jd.from_dataframe(log)  # no years, no timestamps, and 20% of 2 items rounds to no new item
    split = cold_start_split(ds, "melu", seed=0)
    assert len(split.new_items) == 0 and split.scenarios["new_item"].empty
    with pytest.raises(jd.DataError, match="timestamps"):
        cold_start_split(ds, "time")


def test_split_without_years_or_timestamps_picks_random_new_items():
    rng = np.random.default_rng(0)
    log = pd.DataFrame({"user": rng.integers(0, 60, 3000), "item": rng.integers(0, 50, 3000)})
    log = log.drop_duplicates().assign(rating=lambda f: rng.integers(1, 6, len(f)))
    ds = jd.from_dataframe(log)
    a, b = cold_start_split(ds, "melu", seed=3), cold_start_split(ds, "melu", seed=3)
    assert len(a.new_items) == round(0.2 * ds.n_items) and np.array_equal(a.new_items, b.new_items)
    assert not np.array_equal(a.new_items, cold_start_split(ds, "melu", seed=4).new_items)
    assert a.stats["new_items_by"] == "random"
    assert len(a.scenarios["new_item"]) and len(a.scenarios["new_user_new_item"])
    total = len(a.train) + sum(len(v) for v in a.scenarios.values())
    assert total == len(ds.ratings)


# ---- tasks ---------------------------------------------------------------------------------------------------------


def _task_rows(tasks, t, side):
    start = getattr(tasks, f"{side}_start")[t]
    length = getattr(tasks, f"{side}_len")[t]
    return np.arange(start, start + length)


@pytest.mark.parametrize("split", ["random", "time", "melu"])
def test_support_and_query_partition_each_users_ratings(melu_split, feat, split):
    train = melu_split.train
    tasks = build_tasks(train, feat, split, seed=3)
    counts = train.groupby("user").size()
    assert (tasks.row_user[:-1] >= 0).all()
    for t in np.random.default_rng(0).choice(len(tasks), 40, replace=False):
        user = tasks.users[t]
        s, q = _task_rows(tasks, t, "support"), _task_rows(tasks, t, "query")
        assert (tasks.row_user[s] == user).all() and (tasks.row_user[q] == user).all()
        assert len(np.intersect1d(s, q)) == 0
        assert len(s) + len(q) == counts[user]
        if split == "time":
            assert (
                tasks.row_item[q].size
                and train.set_index(["user", "item"])
                .loc[list(zip([user] * len(q), tasks.row_item[q], strict=True)), "timestamp"]
                .min()
                >= train.set_index(["user", "item"])
                .loc[list(zip([user] * len(s), tasks.row_item[s], strict=True)), "timestamp"]
                .max()
            )
    if split == "melu":
        assert (tasks.query_len == 10).all()
        n = counts[tasks.users].to_numpy()
        assert n.min() >= 13 and n.max() <= 100
        assert tasks.stats["users_dropped"] == int(((counts < 13) | (counts > 100)).sum())
    else:
        assert len(tasks) == train["user"].nunique()


def test_kshot_tasks_of_a_scenario(melu_split, feat):
    scenario = melu_split.scenarios["new_user"]
    tasks = build_tasks(scenario, feat, "kshot", support=5, seed=0)
    counts = scenario.groupby("user").size()
    assert (tasks.support_len == 5).all()
    np.testing.assert_array_equal(tasks.query_len, counts[tasks.users].to_numpy() - 5)
    assert tasks.stats["users_dropped"] == int((counts <= 5).sum())


def test_full_pass_covers_every_task_once_with_padding_tasks(melu_split, feat):
    tasks = build_tasks(melu_split.scenarios["new_user"], feat, "kshot", support=3, query=20)
    batches = list(task_batches(tasks, batch_size=16, shuffle=False, epochs=1))
    assert all(isinstance(b, TaskBatch) and b.num_tasks == 16 for b in batches)
    ids = np.concatenate([np.asarray(b.task_id) for b in batches])
    assert sorted(ids[ids >= 0].tolist()) == sorted(tasks.users.tolist())
    assert (ids == -1).sum() == -len(tasks) % 16
    for b in batches:
        b.validate()
        pad = np.asarray(b.task_id) < 0
        assert not np.asarray(b.support_mask)[pad].any() and not np.asarray(b.query_mask)[pad].any()
        assert np.asarray(b.support["user"]).dtype == np.int32 and np.asarray(b.query["rating"]).dtype == np.float32
        # padded rows are all-zero (out-of-vocabulary ids, zero features)
        assert not np.asarray(b.query["item_genres"])[~np.asarray(b.query_mask)].any()


def test_batches_match_the_ratings_they_come_from(ds, melu_split, feat):
    tasks = build_tasks(melu_split.train, feat, "melu", seed=0)
    batch = next(tasks.batches(8, seed=0, shuffle=False, epochs=1))
    lookup = melu_split.train.set_index(["user", "item"])["rating"]
    item_of_slot = np.concatenate([[-1], np.flatnonzero(feat.item_index[:-1])])  # slot -> item code
    for t in range(8):
        m = batch.query_mask[t]
        items = item_of_slot[batch.query["item"][t][m]]
        expected = lookup.loc[list(zip([batch.task_id[t]] * len(items), items, strict=True))].to_numpy()
        np.testing.assert_array_equal(batch.query["rating"][t][m], expected)


def test_stream_is_deterministic_and_bucketed(melu_split, feat):
    tasks = build_tasks(melu_split.train, feat, "random", seed=0)

    def first(seed, n=6):
        it = task_batches(tasks, batch_size=8, seed=seed)
        return [next(it) for _ in range(n)]

    a, b, c = first(0), first(0), first(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.task_id, y.task_id)
        np.testing.assert_array_equal(x.support["item"], y.support["item"])
    assert any(not np.array_equal(x.task_id, z.task_id) for x, z in zip(a, c, strict=True))
    stats = tasks.padding_stats(8)
    assert stats["shapes"] <= 2 * int(np.log2(tasks.support_len.max()) + 2)
    assert 0.0 <= stats["padding_waste"] < 0.6
    epoch = list(tasks.batches(8, seed=0, epochs=1))
    assert len({b.shape for b in epoch}) == stats["shapes"] and len(epoch) == stats["batches_per_epoch"]


def test_dataframe_input_builds_tasks(melu_split, feat):
    it = task_batches(melu_split.train, featurizer=feat, split="kshot", support=4, query=6, batch_size=4, seed=0)
    batch = next(it)
    assert batch.shape == (4, 4, 6)
    with pytest.raises(ValueError, match="featurizer"):
        next(task_batches(melu_split.train, batch_size=4))


def test_implicit_mode_samples_unrated_negatives(ds, melu_split):
    feat = jd.Featurizer.fit(ds, melu_split.train, implicit_threshold=4.0)
    tasks = build_tasks(melu_split.train, feat, "melu", negatives=2, seed=0)
    batch = tasks.make_batch(np.arange(6), np.random.default_rng(0))
    s = batch.support_mask.shape[1] // 3
    rated = set(zip(melu_split.train["user"], melu_split.train["item"], strict=True))
    item_of_slot = np.concatenate([[-1], np.flatnonzero(feat.item_index[:-1])])
    for t in range(6):
        real, neg = batch.support_mask[t, :s], batch.support_mask[t, s:]
        assert neg.sum() == 2 * real.sum()
        assert (batch.support["label"][t, s:][neg] == 0).all()
        user = int(batch.task_id[t])
        for slot in batch.support["item"][t, s:][neg]:
            assert (user, item_of_slot[slot]) not in rated or slot == 0
        assert "neg_item" in batch.support and "neg_item_genres" in batch.support
    labels = batch.support["label"][:, :s][batch.support_mask[:, :s]]
    assert 0 < labels.mean() < 1


# ---- property tests ------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    split=st.sampled_from(["random", "time", "kshot"]),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_tasks_partition_and_masks_match_rows(counts, split, k, seed):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(counts)), counts)
    log = pd.DataFrame(
        {
            "user": users,
            "item": np.concatenate([rng.permutation(60)[:c] for c in counts]),
            "rating": rng.integers(1, 6, len(users)).astype(float),
            "timestamp": rng.integers(0, 50, len(users)),
        }
    )
    ds = jd.from_dataframe(log, timestamp="timestamp")
    feat = jd.Featurizer.fit(ds)
    tasks = build_tasks(ds.ratings, feat, split, support=k if split == "kshot" else None, seed=seed)
    n = np.bincount(ds.ratings["user"], minlength=ds.n_users)
    expected_users = np.flatnonzero(n > k) if split == "kshot" else np.flatnonzero(n >= 2)
    np.testing.assert_array_equal(np.sort(tasks.users), expected_users)
    assert (tasks.support_len + tasks.query_len <= n[tasks.users]).all()
    if split != "kshot":
        assert (tasks.support_len + tasks.query_len == n[tasks.users]).all()
    seen = []
    for batch in tasks.batches(4, seed=seed, epochs=1):
        batch.validate()
        real = batch.task_id >= 0
        np.testing.assert_array_equal(
            batch.support_mask.sum(1)[real], tasks.support_len[np.searchsorted(tasks.users, batch.task_id[real])]
        )
        np.testing.assert_array_equal(
            batch.query_mask.sum(1)[real], tasks.query_len[np.searchsorted(tasks.users, batch.task_id[real])]
        )
        seen.extend(batch.task_id[real].tolist())
    assert sorted(seen) == tasks.users.tolist()


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=50))
def test_bucket_sizes_fit_and_are_few(lengths):
    lengths = np.array(lengths)
    sizes = bucket_sizes(lengths, None)
    assert (sizes >= lengths).all() and (sizes < 2 * lengths).all() or (sizes == lengths.max()).any()
    assert (sizes >= lengths).all() and sizes.max() == lengths.max()
    assert len(np.unique(sizes)) <= int(np.log2(lengths.max())) + 2
    listed = bucket_sizes(lengths, [8, 64, 512])
    assert set(listed) <= {8, 64, 512} and ((listed >= lengths) | (listed == 512)).all()


@pytest.mark.parametrize("split", ["melu", "time"])
def test_subsample_turns_heavy_users_into_tasks_of_cold_start_size(melu_split, feat, split):
    train = melu_split.train
    counts = train.groupby("user").size()
    lo, hi = 13, 100
    tasks = build_tasks(train, feat, split, seed=4, max_ratings=None, query=10, subsample=(lo, hi))
    n = tasks.support_len + tasks.query_len
    heavy = counts[tasks.users].to_numpy() > hi
    assert heavy.sum() == tasks.stats["users_subsampled"] > 0
    assert (n[heavy] >= lo).all() and (n[heavy] <= hi).all()
    # light users keep every rating; a heavy user's task is a subset of their own ratings, never repeated
    assert (n[~heavy] == counts[tasks.users].to_numpy()[~heavy]).all()
    by_user = train.groupby("user")
    for t in np.flatnonzero(heavy)[:20]:
        rows = np.concatenate([_task_rows(tasks, t, "support"), _task_rows(tasks, t, "query")])
        items = tasks.row_item[rows]
        assert len(np.unique(items)) == len(items)
        user_ratings = by_user.get_group(tasks.users[t])
        assert np.isin(items, user_ratings["item"].to_numpy()).all()
        if split == "time":  # the latest ratings of the user
            cutoff = np.sort(user_ratings["timestamp"].to_numpy())[-len(items)]
            times = user_ratings.set_index("item").loc[items, "timestamp"].to_numpy()
            assert (times >= cutoff).all()
    # sizes come from subsample_seed: another seed picks other ratings of the same sizes
    other = build_tasks(train, feat, split, seed=5, subsample_seed=4, max_ratings=None, query=10, subsample=(lo, hi))
    np.testing.assert_array_equal(other.support_len, tasks.support_len)
    if split == "melu":
        assert not np.array_equal(other.row_item, tasks.row_item)


def test_subsample_rejects_an_empty_range(melu_split, feat):
    with pytest.raises(ValueError, match="subsample"):
        build_tasks(melu_split.train, feat, "melu", subsample=(20, 10))


def test_time_order_of_epoch_milliseconds_over_years_is_the_order_of_their_seconds(melu_split, feat):
    """Times spanning 2^32 units or more (epoch milliseconds over 50 days) order a user's rows as their seconds
    do: the same tasks, row for row, from the same seed (no refusal to rescale them)."""
    seconds = melu_split.train
    assert seconds["timestamp"].max() - seconds["timestamp"].min() < 2**32 < 1000 * seconds["timestamp"].max()
    millis = seconds.assign(timestamp=seconds["timestamp"] * 1000 + 999)  # an order-preserving change of unit
    a, b = (build_tasks(log, feat, "kshot", support=5, seed=4, order="time") for log in (seconds, millis))
    for field in ("users", "row_user", "row_item", "row_rating", "support_start", "support_len", "query_len"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
