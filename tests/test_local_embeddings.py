"""Task-local embedding adaptation is exact: float64 meta-losses and meta-gradients with and without it agree.

Each test compiles one jitted function that evaluates every variant it compares (full and local tables, both
orders, ...) side by side: one XLA compilation per test instead of one per variant keeps the file fast.
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
from jaxrec.scale.local_embeddings import local_tables_context, localize, tables_by_key

pytestmark = pytest.mark.usefixtures("float64")

INNER_LR = 0.5


def apply_fn(params, rows):
    """A small MeLU-like regressor in plain jnp (fast to compile): item, zip and genre embeddings -> tanh -> 1."""
    p = params["params"]
    x = jnp.concatenate(
        [
            jnp.take(
                p["embed_item"]["embedding"], jnp.where((rows["item"] >= 0) & (rows["item"] < 40), rows["item"], 0), 0
            ),
            jnp.take(p["embed_user_zip"]["embedding"], rows["user_zip"], 0),
            rows["item_genres"] @ p["dense_item_genres"]["kernel"],
        ],
        axis=-1,
    )
    h = jnp.tanh(x @ p["head"]["hidden_0"]["kernel"] + p["head"]["hidden_0"]["bias"])
    return h @ p["head"]["output"]["kernel"] + p["head"]["output"]["bias"] + 3.0


LOSS = jaxrec.mse_loss(apply_fn)


@functools.cache
def make_params():
    return jax.jit(_make_params)()  # one compilation instead of one per eager op


def _make_params():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    return {
        "params": {
            "embed_item": {"embedding": jax.random.normal(keys[0], (40, 3), jnp.float64)},
            "embed_user_zip": {"embedding": jax.random.normal(keys[1], (30, 3), jnp.float64)},
            "dense_item_genres": {"kernel": jax.random.normal(keys[2], (5, 3), jnp.float64)},
            "head": {
                "hidden_0": {"kernel": 0.5 * jax.random.normal(keys[3], (9, 4), jnp.float64), "bias": jnp.zeros(4)},
                "output": {"kernel": 0.5 * jax.random.normal(keys[4], (4,), jnp.float64), "bias": jnp.zeros(())},
            },
        }
    }


@functools.cache  # built once (its eager ops compile one by one)
def make_batch(tasks=3, support=4, query=3):
    """Padded rows with garbage ids, the OOV id 0, ids out of range (-3, 999) and a repeated item."""
    batch = jaxrec.testing.synthetic_task_batch(SPEC, tasks, support, query, jax.random.PRNGKey(1), padded=True)
    s, q = dict(batch.support), dict(batch.query)
    item_s = np.array(s["item"])
    item_s[0, 0], item_s[0, 1], item_s[1, 0], item_s[1, 1] = 0, 999, -3, item_s[1, 2]
    s["item"] = jnp.asarray(item_s)
    q["item"] = q["item"].at[0, 0].set(0).at[2, 0].set(item_s[2, 0])
    sm = np.array(batch.support_mask)
    sm[0] = [True, True, True, False]  # one padded support row (keeps its random id)
    sm[1] = True
    s = {k: jnp.asarray(v, jnp.float64) if v.dtype.kind == "f" else v for k, v in s.items()}
    q = {k: jnp.asarray(v, jnp.float64) if v.dtype.kind == "f" else v for k, v in q.items()}
    return jaxrec.TaskBatch(s, q, jnp.asarray(sm), batch.query_mask, batch.task_id)


TABLES = {("params", "embed_item", "embedding"): "item", ("params", "embed_user_zip", "embedding"): "user_zip"}


def value_and_grad(params, batch, **kwargs):
    """``meta_value_and_grad`` with this file's defaults (call inside :func:`jit_together`)."""
    kwargs = {"loss_fn": LOSS, "inner_lr": INNER_LR, "inner_steps": 3, **kwargs}
    return jaxrec.meta_value_and_grad(params, batch, **kwargs)


# tiny graphs: LLVM's expensive optimisation passes cost more compile time than they could save at run time
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_together(*fns):
    """The results of ``fns`` (each ``f(params)``) from one jitted function: a single (fast) compilation."""
    return jax.jit(lambda p: tuple(f(p) for f in fns), compiler_options=FAST_COMPILE)


def close(a, b):
    chex.assert_trees_all_close(a, b, rtol=1e-10, atol=1e-12)


def test_meta_gradient_is_exact_second_and_first_order():
    params, batch = make_params(), make_batch()
    variants = [(order, local) for order in ("second", "first") for local in ({}, {"local_embeddings": TABLES})]
    fns = [lambda p, o=order, loc=local: value_and_grad(p, batch, order=o, **loc) for order, local in variants]
    plain = lambda p: value_and_grad(p, batch, inner_steps=0)  # noqa: E731 - no adaptation
    second_full, second_local, first_full, first_local, unadapted = jit_together(*fns, plain)(params)
    close(second_full, second_local)
    close(first_full, first_local)
    # the orders differ (the second-order terms are really there), and the item table really adapts: its
    # meta-gradient is not the zero-step (no adaptation) gradient
    item = ("params", "embed_item", "embedding")
    assert item in TABLES
    for local in (second_local, first_local):
        diff = np.abs(local[1]["params"]["embed_item"]["embedding"] - unadapted[1]["params"]["embed_item"]["embedding"])
        assert diff.max() > 1e-4
    out = [g[1]["params"]["head"]["output"]["kernel"] for g in (second_local, first_local)]
    assert np.abs(out[0] - out[1]).max() > 1e-8


def test_head_chunked_remat_and_metasgd_are_exact():
    params, batch = make_params(), make_batch()
    head = dict(adapt_filter=models.adapt_filter("head"), task_chunk=2, remat=True)

    def metasgd(p):  # Meta-SGD parameters with distinct per-parameter rates (built inside the jit)
        meta = jaxrec.core.metasgd.init_metasgd(p, 0.3)
        rates = jax.tree.map(lambda a: a * (1.0 + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size), meta.inner_lr)
        return meta.replace(inner_lr=rates)

    head_full, head_local, sgd_full, sgd_local = jit_together(
        lambda p: value_and_grad(p, batch, **head),
        lambda p: value_and_grad(p, batch, local_embeddings=TABLES, **head),
        lambda p: value_and_grad(metasgd(p), batch, inner_lr=None),
        lambda p: value_and_grad(metasgd(p), batch, inner_lr=None, local_embeddings=TABLES),
    )(params)
    close(head_full, head_local)
    close(sgd_full, sgd_local)


def test_adapted_query_predictions_agree_for_flax_melu():
    """Flax ``nn.Embed`` reads the local tables (interceptor); adapted query predictions are the same."""
    spec_params = models.init_params(MODEL, SPEC, jax.random.PRNGKey(0))
    tables = models.embedding_tables(spec_params)
    loss = models.default_loss(MODEL)
    batch = make_batch()

    def predictions(spec_params, s, sm, q, qm, local):
        theta = params = jax.tree.map(lambda x: 3.0 * jnp.asarray(x, jnp.float64), spec_params)
        if local:
            theta, s, q, index = localize(params, s, sm, q, qm, tables)
            assert index[("params", "embed_item", "embedding")].shape == (7,)
            assert ("params", "embed_user_gender", "embedding") not in index  # vocab 2 <= 7 rows: kept whole
        with local_tables_context():
            phi = jaxrec.adapt(theta, s, sm, loss_fn=loss, inner_lr=INNER_LR, inner_steps=2, order="first")
            return MODEL.apply(phi, jaxrec.zero_padding(q, qm))

    args = (batch.support, batch.support_mask, batch.query, batch.query_mask)
    full, local = jax.jit(
        lambda *a: (
            jax.vmap(predictions, (None, 0, 0, 0, 0, None))(spec_params, *a, False),
            jax.vmap(predictions, (None, 0, 0, 0, 0, None))(spec_params, *a, True),
        ),
        compiler_options=FAST_COMPILE,
    )(*args)
    np.testing.assert_allclose(np.where(batch.query_mask, full, 0), np.where(batch.query_mask, local, 0), rtol=1e-10)


def test_reptile_direction_is_exact_and_trainer_option():
    params, batch = make_params(), make_batch()
    kwargs = dict(loss_fn=LOSS, inner_lr=INNER_LR, inner_steps=3)
    trainers = [
        jaxrec.MetaTrainer(
            loss_fn=LOSS,
            inner_lr=INNER_LR,
            inner_steps=3,
            optimizer=optax.sgd(0.1),
            algorithm="reptile",
            objective_options=options,
        )
        for options in ({}, {"local_embeddings": TABLES})
    ]

    def train(trainer, p):
        state, metrics = trainer._step(trainer.init(p), batch)  # the trainer's jitted step, inlined here
        return state.params, metrics["loss"]

    full, local, train_full, train_local = jit_together(
        lambda p: jaxrec.reptile_direction(p, batch, **kwargs),
        lambda p: jaxrec.reptile_direction(p, batch, local_embeddings=TABLES, **kwargs),
        lambda p: train(trainers[0], p),
        lambda p: train(trainers[1], p),
    )(params)
    close(full, local)
    close(train_full, train_local)
    # the trainer's step is Reptile's: theta - eps (theta - mean_t phi_t), the direction above
    close(train_full[0], jax.tree.map(lambda p, d: p - 0.1 * d, params, full[1]))
    # the trainer really took a step
    assert np.abs(train_full[0]["params"]["head"]["output"]["bias"] - params["params"]["head"]["output"]["bias"]) > 0


# ----------------------------------------------------------------------------------------------------------------
# tables sharing a row key (NeuMF's gmf_embed_item and mlp_embed_item, MF's embed_item and bias_embed_item, ...)

# user and item vocabularies larger than a task's 7 rows (14 with negatives), so both keys are really localised
SHARED_SPEC = jaxrec.FeatureSpec(
    categorical={"user": 20, "item": 40, "user_gender": 2, "user_zip": 30, "item_year": 9},
    multi_hot={"item_genres": 5},
    target="rating",
    rating_range=(1.0, 5.0),
)
IMPLICIT_SPEC = jaxrec.FeatureSpec(**{**SHARED_SPEC.__dict__, "target": "label", "rating_range": None})
# the models of models.MODELS whose embedding tables share a row key (checked below), small enough to compile fast
SHARED_KEY_MODELS = {
    "mf": dict(embed=3),
    "twotower": dict(embed=3),
    "fm": dict(embed=3),
    "neumf": dict(embed=3, hidden=(4,)),
}


def model_tables(name, spec, **kwargs):
    """``models.embedding_tables`` of model ``name`` from its abstract parameters (tracing only, no compilation)."""
    model = models.create(name, spec, **kwargs)
    rows = jaxrec.testing.synthetic_rows(spec, 2, jax.random.PRNGKey(0))
    return models.embedding_tables(jax.eval_shape(model.init, jax.random.PRNGKey(0), rows))


def test_shared_key_models_are_those_of_the_registry():
    spec = jaxrec.FeatureSpec(**{**SHARED_SPEC.__dict__, "history": 2})
    shared = set()
    for name in models.MODELS:
        keys = list(model_tables(name, spec).values())
        if len(set(keys)) < len(keys):
            shared.add(name)
    assert shared == set(SHARED_KEY_MODELS)


@functools.cache
def make_shared_batch(implicit=False):
    """A batch with one user per task (an out-of-range user in task 2) and the edge-case items of
    :func:`make_batch`: padded rows, OOV 0, ids out of range, items repeated within and across sides; ``implicit``:
    labels and ``neg_item`` negatives (some equal to positives, some out of range) for BPR."""
    spec = IMPLICIT_SPEC if implicit else SHARED_SPEC
    batch = jaxrec.testing.synthetic_task_batch(spec, 3, 4, 3, jax.random.PRNGKey(2), padded=True)
    s = {k: np.array(v) for k, v in batch.support.items()}
    q = {k: np.array(v) for k, v in batch.query.items()}
    s["item"][0, :2], s["item"][1, :2], s["item"][1, 1] = (0, 999), (-3, 0), s["item"][1, 2]
    q["item"][0, 0], q["item"][2, 0], q["item"][1, 1] = 0, s["item"][2, 0], s["item"][1, 3]
    s["user"][0], q["user"][0], s["user"][2], q["user"][2] = 7, 7, 25, 25
    if implicit:
        s["neg_item"][0, 0], s["neg_item"][1, 2], q["neg_item"][2, 1] = -1, s["item"][1, 3], 999
        q["neg_item"][0, 1] = s["item"][0, 2]
    sm = np.array(batch.support_mask)
    sm[0] = [True, True, True, False]
    sm[1] = True
    s, q = ({k: jnp.asarray(v, jnp.float64 if v.dtype.kind == "f" else v.dtype) for k, v in r.items()} for r in (s, q))
    return jaxrec.TaskBatch(s, q, jnp.asarray(sm), batch.query_mask, batch.task_id)


def random_params(name, spec=SHARED_SPEC):
    """Float64 parameters of model ``name`` with every leaf random (zero-initialised bias tables included, so a
    table gathered at wrong rows changes the loss, not only the gradient)."""
    model = models.create(name, spec, **SHARED_KEY_MODELS[name])
    params = models.init_params(model, spec, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    return model, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) + 0.3 * rng.normal(size=x.shape), params)


def test_shared_key_tables_share_one_index_from_the_original_ids():
    model, params = random_params("neumf", IMPLICIT_SPEC)
    tables = models.embedding_tables(params)
    batch = make_shared_batch(implicit=True)
    for t in range(batch.num_tasks):
        s = {k: v[t] for k, v in batch.support.items()}
        q = {k: v[t] for k, v in batch.query.items()}
        sm, qm = batch.support_mask[t], batch.query_mask[t]
        local, ls, lq, index = localize(params, s, sm, q, qm, tables)
        for key, vocab, size in (("user", 20, 7), ("item", 40, 14)):
            paths = [("params", f"{role}_embed_{key}", "embedding") for role in ("gmf", "mlp")]
            assert all(tables[p] == key for p in paths)
            u = np.asarray(index[paths[0]])
            np.testing.assert_array_equal(index[paths[1]], u)  # one index per row key
            assert u.shape == (size,)
            # every table reads, through the remapped ids, the global rows the original ids select
            names = (key, "neg_" + key) if key == "item" else (key,)
            for rows, mask, local_rows in ((s, sm, ls), (q, qm, lq)):
                for name in names:
                    ids = np.asarray(rows[name])
                    valid = np.where(np.asarray(mask) & (ids >= 0) & (ids < vocab), ids, 0)
                    np.testing.assert_array_equal(u[np.asarray(local_rows[name])], valid)
                    for p in paths:
                        np.testing.assert_array_equal(
                            np.asarray(local["params"][p[1]]["embedding"])[np.asarray(local_rows[name])],
                            np.asarray(params["params"][p[1]]["embedding"])[valid],
                        )
    with pytest.raises(ValueError, match="gmf_embed_user/embedding is indexed by the row key 'user'.*not 'item'"):
        localize(params, s, sm, q, qm, {**tables, ("params", "gmf_embed_user", "embedding"): "item"})
    two = {
        "params": {"embed_item": {"embedding": jnp.zeros((10, 2))}, "gmf_embed_item": {"embedding": jnp.zeros((12, 2))}}
    }
    with pytest.raises(ValueError, match="share row key 'item'"):  # named alike, sized apart: one index cannot serve
        tables_by_key(two, models.embedding_tables(two))


@pytest.mark.parametrize(
    "name, implicit",
    [("fm", False), ("mf", False), ("neumf", False), ("neumf", True), ("twotower", False), ("twotower", True)],
)
def test_shared_key_models_meta_loss_and_gradient_are_exact(name, implicit):
    """Flax models whose tables share a row key (with BPR negatives read through the item tables too): the
    second-order meta-loss and meta-gradient, adapting all parameters and the model's default filter (NeuMF:
    ``head``), are the same with and without local tables."""
    model, params = random_params(name, IMPLICIT_SPEC if implicit else SHARED_SPEC)
    tables = models.embedding_tables(params)
    assert len(set(tables.values())) < len(tables)  # some tables really share a row key
    batch = make_shared_batch(implicit)
    loss = jaxrec.bpr_loss(model.apply) if implicit else models.default_loss(model)
    filters = {"all": models.adapt_filter("all"), "default": models.adapt_filter("default", model)}

    def variant(p, adapt, local):
        options = {"local_embeddings": tables} if local else {}
        kwargs = dict(loss_fn=loss, inner_lr=0.05, order="second", adapt_filter=adapt)
        return value_and_grad(p, batch, **kwargs, **options)

    fns = [functools.partial(variant, adapt=f, local=local) for f in filters.values() for local in (False, True)]
    results = jit_together(*fns)(params)
    for i, adapt in enumerate(filters):
        full, local = results[2 * i], results[2 * i + 1]
        assert 0.0 < float(full[0]) < 10.0, adapt  # a sane (not diverging) inner loop
        close(full[0], local[0])  # the meta-loss
        close(full[1], local[1])  # the meta-gradient


def test_replayed_inner_loop_is_exact_for_flax_melu_with_local_tables(remat="recompute"):
    """remat="recompute"/"sqrt" replay the inner steps in a custom VJP, outside the trace that localised the Flax
    tables: the step is closure-converted when traced, so the replay needs no interceptor and stays exact."""
    spec_params = jax.tree.map(
        lambda x: 3.0 * jnp.asarray(x, jnp.float64), models.init_params(MODEL, SPEC, jax.random.PRNGKey(2))
    )
    tables = models.embedding_tables(spec_params)
    kwargs = dict(loss_fn=models.default_loss(MODEL), inner_lr=None, inner_steps=4)
    batch = make_batch()

    def metasgd(p):
        return jaxrec.core.metasgd.init_metasgd(p, 0.2)

    plain, replayed, replayed_full = jit_together(
        lambda p: jaxrec.meta_value_and_grad(metasgd(p), batch, local_embeddings=tables, **kwargs),
        lambda p: jaxrec.meta_value_and_grad(metasgd(p), batch, local_embeddings=tables, remat=remat, **kwargs),
        lambda p: jaxrec.meta_value_and_grad(metasgd(p), batch, remat=remat, **kwargs),
    )(spec_params)
    close(plain, replayed)
    close(plain, replayed_full)
