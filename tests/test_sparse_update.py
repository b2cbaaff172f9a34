"""Row-sparse outer updates (jaxrec.scale.row_sparse): exact against dense SGD, lazy Adam against a NumPy reference,
untouched rows bitwise unchanged, one compilation per batch shape, padding / OOV ids, the non-finite guard, resume.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from small_melu import MODEL, SPEC

import jaxrec
from jaxrec import models
from jaxrec.scale.row_sparse import RowIndex, localize_batch, row_sparse_adam, row_sparse_sgd

pytestmark = pytest.mark.usefixtures("float64")

INNER_LR = 0.05
LOSS = models.default_loss(MODEL)
ITEM = ("params", "embed_item", "embedding")
ZIP = ("params", "embed_user_zip", "embedding")


@functools.cache
def make_params():
    params = models.init_params(MODEL, SPEC, jax.random.PRNGKey(0))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)


def tables():
    return models.embedding_tables(make_params())


def _paths(params):
    return [models.path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


@functools.cache
def make_batch(seed=1, tasks=3, support=4, query=3, nan=False):
    """Padded rows keeping random (garbage) ids, real rows with OOV ids (-3, 999) and the OOV id 0."""
    batch = jaxrec.testing.synthetic_task_batch(SPEC, tasks, support, query, jax.random.PRNGKey(seed), padded=True)
    s, q = ({k: np.array(v) for k, v in side.items()} for side in (batch.support, batch.query))
    sm, qm = np.array(batch.support_mask), np.array(batch.query_mask)
    sm[0], qm[0] = [True, True, True, False], [True, True, False]  # task 0 has padded rows on both sides
    s["item"][0, 0], s["item"][0, 1], q["item"][0, 0] = 999, -3, 0
    s["item"][0, 3] = 37  # garbage id on a padded row
    if nan:
        q["rating"][1, 0], qm[1, 0] = np.nan, True
    cast = lambda v: jnp.asarray(v, jnp.float64) if v.dtype.kind == "f" else jnp.asarray(v)  # noqa: E731
    return jaxrec.TaskBatch(
        {k: cast(v) for k, v in s.items()},
        {k: cast(v) for k, v in q.items()},
        jnp.asarray(sm),
        jnp.asarray(qm),
        batch.task_id,
    )


def read_rows(batch, key="item", vocab=40):
    """Global rows that real rows of ``batch`` read (OOV ids read row 0)."""
    out = set()
    for rows, mask in ((batch.support, batch.support_mask), (batch.query, batch.query_mask)):
        ids = np.asarray(rows[key])[np.asarray(mask)]
        out |= {int(i) if 0 <= i < vocab else 0 for i in ids.ravel()}
    return out


def trainer(algorithm="maml", order="second", sparse=None, dense=None):
    dense = optax.sgd(0.1) if dense is None else dense
    options = {"local_embeddings": tables()}
    extra = {} if sparse is None else {"sparse_tables": tables(), "sparse_optimizer": sparse}
    return jaxrec.MetaTrainer(
        loss_fn=LOSS,
        inner_lr=INNER_LR,
        inner_steps=2,
        algorithm=algorithm,
        order=order,
        optimizer=dense,
        objective_options=options,
        **extra,
    )


def run(t, steps=3, batches=None):
    state = t.init(make_params())
    metrics = []
    for i in range(steps):
        state, m = t.step(state, make_batch(seed=i + 1) if batches is None else batches[i])
        metrics.append(m)
    return state, jax.device_get(metrics)


@pytest.mark.parametrize(
    "algorithm, order",
    [("maml", "second"), ("maml", "first"), ("reptile", "second"), ("metasgd", "second")],
)
def test_row_sparse_sgd_equals_dense_sgd(algorithm, order):
    dense_state, dense_metrics = run(trainer(algorithm, order))
    sparse_state, sparse_metrics = run(trainer(algorithm, order, sparse=row_sparse_sgd(0.1)))
    chex.assert_trees_all_close(sparse_state.params, dense_state.params, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(sparse_metrics, dense_metrics, rtol=1e-12, atol=1e-14)
    assert all(bool(m["finite"]) for m in sparse_metrics)
    # the item table really moved, and only on rows the batches read (it is larger than the batch's row count)
    init = make_params()["params"]["embed_item"]["embedding"]
    item = sparse_state.params.params if algorithm == "metasgd" else sparse_state.params
    moved = np.flatnonzero(np.any(np.asarray(item["params"]["embed_item"]["embedding"]) != np.asarray(init), 1))
    assert 0 < moved.size < 40
    assert set(moved.tolist()) <= set().union(*(read_rows(make_batch(seed=i + 1)) for i in range(3)))


def lazy_adam_reference(table, steps, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """NumPy lazy Adam: ``steps`` is a list of ``(rows, grads, commit)``."""
    table, m, v, t = table.copy(), np.zeros_like(table), np.zeros_like(table), 0
    for rows, grads, commit in steps:
        if not commit:
            continue
        t += 1
        for r, g in zip(rows, grads, strict=True):
            m[r] = b1 * m[r] + (1 - b1) * g
            v[r] = b2 * v[r] + (1 - b2) * g * g
            table[r] -= lr * (m[r] / (1 - b1**t)) / (np.sqrt(v[r] / (1 - b2**t)) + eps)
    return table, m, v, t


def test_row_sparse_adam_is_lazy_adam():
    rng = np.random.default_rng(0)
    full = {"a": {"w": rng.normal(size=(10, 3))}, "b": rng.normal(size=(6, 2))}
    # (ids, touched) per step; slots past the distinct ids repeat id 0 untouched (must not overwrite row 0)
    plan_a = [([1, 3, 5, 0], [1, 1, 1, 0]), ([0, 3, 4, 7], [1, 1, 1, 1]), ([2, 8, 9, 0], [1, 1, 1, 0]), None]
    plan_b = [([0, 2, 0, 0], [1, 1, 0, 0]), ([2, 3, 4, 5], [1, 1, 1, 1]), ([0, 1, 0, 0], [0, 1, 0, 0]), None]
    opt = row_sparse_adam(0.01)
    tables, state = jax.tree.map(jnp.asarray, full), opt.init(full)
    update = jax.jit(opt.update)
    steps_a, steps_b = [], []
    for i, (pa, pb) in enumerate(zip(plan_a, plan_b, strict=True)):
        commit = pa is not None
        pa, pb = pa or plan_a[0], pb or plan_b[0]
        grads = {"a": {"w": rng.normal(size=(4, 3))}, "b": rng.normal(size=(4, 2))}
        index = {
            ("a", "w"): RowIndex(jnp.asarray(pa[0], jnp.int32), jnp.asarray(pa[1], bool)),
            ("b",): RowIndex(jnp.asarray(pb[0], jnp.int32), jnp.asarray(pb[1], bool)),
        }
        before = tables
        tables, state = update(grads, state, tables, index, jnp.asarray(commit))
        for steps, plan, g in ((steps_a, pa, grads["a"]["w"]), (steps_b, pb, grads["b"])):
            touched = np.asarray(plan[1], bool)
            steps.append((np.asarray(plan[0])[touched], g[touched], commit))
        if not commit:  # the guard: nothing written, the count not advanced
            chex.assert_trees_all_equal(tables, before)
        assert int(state.count) == min(i + 1, 3)
    for name, steps, got, mu, nu in (
        ("a", steps_a, tables["a"]["w"], state.mu["a"]["w"], state.nu["a"]["w"]),
        ("b", steps_b, tables["b"], state.mu["b"], state.nu["b"]),
    ):
        start = full["a"]["w"] if name == "a" else full["b"]
        want, m, v, t = lazy_adam_reference(start, steps)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_allclose(mu, m, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(nu, v, rtol=1e-12, atol=1e-300)
        untouched = sorted(set(range(start.shape[0])) - {int(r) for rows, _, c in steps if c for r in rows})
        np.testing.assert_array_equal(np.asarray(got)[untouched], start[untouched])  # bitwise


def test_row_sparse_adam_equals_optax_adam_when_every_row_is_touched():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(5, 2))
    opt, dense = row_sparse_adam(0.05), optax.adam(0.05)
    sparse_table, state = jnp.asarray(table), opt.init(jnp.asarray(table))
    dense_table, dense_state = jnp.asarray(table), dense.init(jnp.asarray(table))
    for _ in range(3):
        perm = rng.permutation(5)
        grads = rng.normal(size=(5, 2))
        index = {(): RowIndex(jnp.asarray(perm, jnp.int32), jnp.ones(5, bool))}
        sparse_table, state = opt.update(jnp.asarray(grads[perm]), state, sparse_table, index)
        updates, dense_state = dense.update(jnp.asarray(grads), dense_state)
        dense_table = optax.apply_updates(dense_table, updates)
    np.testing.assert_allclose(sparse_table, dense_table, rtol=1e-12)
    np.testing.assert_allclose(state.mu, dense_state[0].mu, rtol=1e-12)


def test_untouched_rows_are_bitwise_unchanged_and_the_step_compiles_once():
    t = trainer(sparse=row_sparse_adam(0.05), dense=optax.adam(0.05))
    batches = [make_batch(seed=s) for s in (4, 5, 6)]
    state, metrics = run(t, batches=batches)
    assert t.traces == 1  # three batches of one shape: one compilation
    assert all(bool(m["finite"]) for m in metrics)
    init = make_params()["params"]
    for path, key, vocab in ((ITEM, "item", 40), (ZIP, "user_zip", 30)):
        read = set().union(*(read_rows(b, key, vocab) for b in batches))
        assert len(read) < vocab
        untouched = sorted(set(range(vocab)) - read)
        table = np.asarray(state.params["params"][path[1]]["embedding"])
        mu = np.asarray(state.opt_state.sparse_state.mu["params"][path[1]]["embedding"])
        np.testing.assert_array_equal(table[untouched], np.asarray(init[path[1]]["embedding"])[untouched])
        assert not np.any(mu[untouched]) and not np.any(
            np.asarray(state.opt_state.sparse_state.nu["params"][path[1]]["embedding"])[untouched]
        )
        assert np.all(np.any(table[sorted(read)] != np.asarray(init[path[1]]["embedding"])[sorted(read)], 1))
        if key == "item":  # the garbage id 37 of a padded row is read by no real row: its row stays as it was
            assert 37 in untouched
    assert int(state.opt_state.sparse_state.count) == 3
    # the optax optimiser covers only the other parameters
    mu = state.opt_state.optax_state[0].mu["params"]
    assert mu["embed_item"]["embedding"] is None and mu["head"]["output"]["kernel"] is not None


def test_padding_and_oov_ids_map_to_row_zero():
    batch = make_batch()
    params = make_params()
    local_params, local_batch, index = jax.jit(lambda p, b: localize_batch(p, b, tables()))(params, batch)
    rows = index[ITEM]
    size = 3 * (4 + 3)  # capped at V = 40: not reached
    assert rows.ids.shape == (size,) and local_params["params"]["embed_item"]["embedding"].shape == (size, 4)
    ids, touched = np.asarray(rows.ids), np.asarray(rows.touched)
    assert set(ids[touched].tolist()) == read_rows(batch)  # OOV 999, -3 and id 0 read row 0; 37 (padding) no row
    assert 0 in ids[touched].tolist() and 37 not in ids.tolist()
    assert len(set(ids[touched].tolist())) == touched.sum()  # touched slots are distinct rows
    for side, mask in (("support", batch.support_mask), ("query", batch.query_mask)):
        glob, loc = (np.asarray(getattr(b, side)["item"]) for b in (batch, local_batch))
        mask = np.asarray(mask)
        want = np.where(mask & (glob >= 0) & (glob < 40), glob, 0)
        np.testing.assert_array_equal(ids[loc], want)  # u[local id] = the (valid) global id; padded rows -> 0
    np.testing.assert_array_equal(
        local_params["params"]["embed_item"]["embedding"], params["params"]["embed_item"]["embedding"][ids]
    )
    # small tables are capped at their vocabulary (gender: 2 rows) and still row-indexed
    assert index[("params", "embed_user_gender", "embedding")].ids.shape == (2,)
    # no real row reads id 0 -> row 0 holds a slot (padding reads it) but is not touched
    s = dict(batch.support)
    q = dict(batch.query)
    s["item"] = jnp.where(batch.support_mask, 5 + jnp.arange(4)[None, :], 0)
    q["item"] = jnp.where(batch.query_mask, 20 + jnp.arange(3)[None, :], 0)
    no_zero = batch.replace(support=s, query=q)
    _, _, index2 = jax.jit(lambda p, b: localize_batch(p, b, {ITEM: "item"}))(params, no_zero)
    ids2, touched2 = np.asarray(index2[ITEM].ids), np.asarray(index2[ITEM].touched)
    assert 0 not in read_rows(no_zero) and {5, 20} <= read_rows(no_zero)
    assert ids2[0] == 0 and not touched2[0] and set(ids2[touched2].tolist()) == read_rows(no_zero)


def test_negative_ids_share_the_index():
    params, batch = make_params(), make_batch()
    s = dict(batch.support) | {"neg_item": jnp.full(batch.support_mask.shape, 33, jnp.int32)}
    q = dict(batch.query) | {"neg_item": jnp.full(batch.query_mask.shape, 39, jnp.int32)}
    _, local, index = jax.jit(lambda p, b: localize_batch(p, b, {ITEM: "item"}))(
        params, batch.replace(support=s, query=q)
    )
    ids = np.asarray(index[ITEM].ids)
    assert {33, 39} <= set(ids[np.asarray(index[ITEM].touched)].tolist())
    np.testing.assert_array_equal(ids[np.asarray(local.support["neg_item"])][np.asarray(batch.support_mask)], 33)


def test_nonfinite_batch_leaves_tables_and_moments_unchanged():
    t = trainer(sparse=row_sparse_adam(0.05), dense=optax.adam(0.05))
    state = t.init(make_params())
    state, _ = t.step(state, make_batch(seed=1))
    before = jax.device_get(state)
    state, metrics = t.step(state, make_batch(seed=1, nan=True))
    assert not bool(metrics["finite"]) and int(state.skipped) == 1 and int(state.step) == 2
    chex.assert_trees_all_equal(jax.device_get(state.params), before.params)
    chex.assert_trees_all_equal(jax.device_get(state.opt_state), before.opt_state)  # optax and lazy Adam states
    assert t.traces == 1


def test_checkpoint_resume_with_sparse_state(tmp_path):
    from jaxrec.experiment.checkpoint import CheckpointStore

    t = trainer(algorithm="metasgd", sparse=row_sparse_adam(0.05), dense=optax.adam(0.05))
    state, _ = t.step(t.init(make_params()), make_batch(seed=1))
    with CheckpointStore(tmp_path / "ck") as store:
        store.save(state, {})
        restored = store.restore(t.init(make_params())).state
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(state))
    continued, _ = t.step(state, make_batch(seed=2))
    resumed, _ = t.step(t.place(restored), make_batch(seed=2))
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(continued))
    assert t.traces == 1


def test_configuration_errors(caplog):
    with pytest.raises(ValueError, match="sparse_optimizer"):
        jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=INNER_LR, inner_steps=1, sparse_tables=tables())
    with pytest.raises(ValueError, match="sparse_tables"):
        jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=INNER_LR, inner_steps=1, sparse_optimizer=row_sparse_sgd(0.1))
    t = jaxrec.MetaTrainer(
        loss_fn=LOSS,
        inner_lr=INNER_LR,
        inner_steps=1,
        sparse_tables={("params", "nope"): "item"},
        sparse_optimizer=row_sparse_sgd(1),
    )
    with pytest.raises(KeyError, match="nope"):
        t.init(make_params())
    with pytest.raises(KeyError, match="row key"):  # a table named for a key the batch lacks
        params = make_params()
        extra = {**params["params"], "embed_missing_key": {"embedding": jnp.zeros((5, 2))}}
        localize_batch({"params": extra}, make_batch(), {("params", "embed_missing_key", "embedding"): "missing_key"})
    # a key the batch has but that does not index the table: ids outside the local table read NaN, every step was
    # skipped without an error; a leaf that is not a table was gathered by ids as if it were one
    with pytest.raises(ValueError, match="embed_item/embedding is indexed by the row key 'item'.*not 'user'"):
        localize_batch(make_params(), make_batch(), {ITEM: "user"})
    kernel = next(p for p in map(tuple, _paths(make_params())) if p[-1] == "kernel")
    with caplog.at_level("WARNING", logger="jaxrec"):  # a model of one's own may name its tables otherwise
        localize_batch(make_params(), make_batch(), {kernel: "item"})
    assert "is not named as an embedding table" in caplog.text


def test_local_gradient_rows_are_the_dense_gradient_rows_with_shared_row_keys():
    """NeuMF's gmf_/mlp_embed_item share the row key "item" (and so the index); the gradient of the gathered rows
    is the dense gradient's rows, every other dense row is zero, padding slots get a zero gradient."""
    spec = jaxrec.FeatureSpec(categorical={"user": 50, "item": 60}, multi_hot={}, target="rating", rating_range=(1, 5))
    model = models.NeuMF(spec, embed=4, hidden=(6,))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), models.init_params(model, spec, jax.random.PRNGKey(0)))
    batch = jaxrec.testing.synthetic_task_batch(spec, 2, 4, 3, jax.random.PRNGKey(1))
    cast = lambda side: {k: v.astype(jnp.float64) if v.dtype.kind == "f" else v for k, v in side.items()}  # noqa: E731
    batch = batch.replace(support=cast(batch.support), query=cast(batch.query))
    tabs = models.embedding_tables(params)
    kw = dict(loss_fn=models.default_loss(model), inner_lr=0.05, inner_steps=2)

    def both(p):
        local, local_batch, index = localize_batch(p, batch, tabs)
        with jaxrec.scale.local_embeddings.local_tables_context():
            sparse = jaxrec.meta_value_and_grad(local, local_batch, **kw)
        return jaxrec.meta_value_and_grad(p, batch, **kw), sparse, index

    (loss, dense), (sparse_loss, sparse), index = jax.jit(both)(params)
    np.testing.assert_allclose(sparse_loss, loss, rtol=1e-12)
    chex.assert_trees_all_equal(
        index[("params", "gmf_embed_item", "embedding")], index[("params", "mlp_embed_item", "embedding")]
    )
    for path in tabs:
        rows = index[path]
        full = np.asarray(dense["params"][path[1]]["embedding"])
        local = np.asarray(sparse["params"][path[1]]["embedding"])
        ids, touched = np.asarray(rows.ids), np.asarray(rows.touched)
        distinct = np.unique(ids, return_index=True)[1]  # first slot of each id (padding slots repeat id 0)
        np.testing.assert_allclose(local[distinct], full[ids[distinct]], rtol=1e-12, atol=1e-15)
        assert not np.any(local[np.setdiff1d(np.arange(ids.size), distinct)])  # padding slots: zero gradient
        assert not np.any(np.delete(full, ids, axis=0))  # rows outside the batch: zero dense gradient
        assert touched.sum() == len(set(ids[touched].tolist()))
    chex.assert_trees_all_close(
        {k: v for k, v in sparse["params"].items() if "embed" not in k},
        {k: v for k, v in dense["params"].items() if "embed" not in k},
        rtol=1e-12,
    )
