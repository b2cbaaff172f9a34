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

import jaxrec
from jaxrec import models
from jaxrec.local_embeddings import local_tables_context, localize

pytestmark = pytest.mark.usefixtures("float64")

INNER_LR = 0.5
SPEC = jaxrec.FeatureSpec(
    categorical={"user": 1, "item": 40, "user_gender": 2, "user_zip": 30, "item_year": 9},
    multi_hot={"item_genres": 5},
    target="rating",
    rating_range=(1.0, 5.0),
)
MODEL = models.MeLU(SPEC, embed=4, hidden=(6,), use_ids=("item",), interaction=None)


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
    batch = models.synthetic_task_batch(SPEC, tasks, support, query, jax.random.PRNGKey(1), padded=True)
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
        meta = jaxrec.maml.init_metasgd(p, 0.3)
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
        jaxrec.MetaTrainer(LOSS, INNER_LR, 2, optimizer=optax.sgd(0.1), objective_options=options)
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
    # the trainer really took a step
    assert np.abs(train_full[0]["params"]["head"]["output"]["bias"] - params["params"]["head"]["output"]["bias"]) > 0
