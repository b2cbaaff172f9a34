"""Tests for jaxrec.models: shapes, jit/vmap, gradients, OOV, adapt filters, the MeLU reference workload, training."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec import FeatureSpec
from jaxrec import models as M

ITEMS, USERS, HISTORY = 30, 20, 5
SIDE = dataclasses.replace(
    M.reference_spec(ITEMS), categorical={**M.reference_spec(ITEMS).categorical, "user": USERS}, history=HISTORY
)
PLAIN = FeatureSpec({"user": USERS, "item": ITEMS}, rating_range=(1.0, 5.0), history=HISTORY)
IMPLICIT = FeatureSpec({"user": USERS, "item": ITEMS}, target="label", history=HISTORY)
NAMES = sorted(M.MODELS)
SPECS = {"side": SIDE, "plain": PLAIN}


ROWS = 8  # one row count everywhere, so each model's jitted apply compiles once


def make(name: str, spec: FeatureSpec):
    # MeLU uses features only by default; on an id-only spec it needs the ids.
    kwargs = {"use_ids": ("user", "item")} if name == "melu" and not spec.fields("user_") else {}
    return M.create(name, spec, **kwargs)


@functools.cache
def built(name: str, spec_name: str = "side"):
    """(model, variables, jitted apply), initialised once per model and spec."""
    spec = SPECS[spec_name]
    model = make(name, spec)
    return model, M.init_params(model, spec, jax.random.key(0)), jax.jit(model.apply)


@functools.cache
def side_rows(seed: int = 1):
    return M.synthetic_rows(SIDE, ROWS, jax.random.key(seed))


def leaves_with_paths(variables):
    return jax.tree_util.tree_flatten_with_path(variables)[0]


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("name", NAMES)
def test_scores_have_one_value_per_row(name, spec_name):
    _, variables, apply = built(name, spec_name)
    scores = apply(variables, M.synthetic_rows(SPECS[spec_name], ROWS, jax.random.key(1)))
    chex.assert_shape(scores, (ROWS,))
    chex.assert_type(scores, jnp.float32)
    chex.assert_tree_all_finite(scores)


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_over_tasks_and_finite_gradients(name):
    model, variables, _ = built(name)
    batch = M.synthetic_task_batch(SIDE, tasks=3, support=4, query=6, key=jax.random.key(1)).validate()
    # task 0 is a cold-start user on OOV / unknown everything, with an empty history
    query = {k: (v.at[0].set(0) if v.dtype == jnp.int32 else v) for k, v in batch.query.items()}
    loss_fn = M.default_loss(model)

    @jax.jit
    def per_task(params, rows, mask):
        return jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0, 0))(params, rows, mask)

    losses, grads = per_task(variables, query, batch.query_mask)
    chex.assert_shape(losses, (3,))
    chex.assert_tree_all_finite((losses, grads))
    chex.assert_trees_all_equal_shapes(jax.tree.map(lambda g: g[0], grads), variables)
    assert any(float(jnp.max(jnp.abs(g[0]))) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", NAMES)
def test_oov_padding_and_out_of_range_ids_are_valid(name):
    _, variables, apply = built(name)
    rows = side_rows()
    oov = {k: (jnp.zeros_like(v) if v.dtype == jnp.int32 else v) for k, v in rows.items()}
    out_of_range = {k: (v + 1000 if v.dtype == jnp.int32 else v) for k, v in oov.items()}
    out_of_range["item"] = jnp.full_like(rows["item"], -3)
    scores_oov = apply(variables, oov)
    chex.assert_tree_all_finite(scores_oov)
    chex.assert_trees_all_close(apply(variables, out_of_range), scores_oov)


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_scored_independently(name):
    # no batch statistics: garbage in a padded row cannot leak into a real row's score
    _, variables, apply = built(name)
    rows, other = side_rows(1), side_rows(2)
    mixed = {k: v.at[5:].set(other[k][5:]) for k, v in rows.items()}
    chex.assert_trees_all_close(apply(variables, mixed)[:5], apply(variables, rows)[:5], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_untrained_predictions_start_mid_range(name):
    _, variables, apply = built(name)
    assert abs(float(jnp.mean(apply(variables, side_rows()))) - 3.0) < 0.75


@pytest.mark.parametrize("name", NAMES)
def test_default_adapt_filter_selects_a_strict_subset(name):
    model, variables, _ = built(name)
    leaves = leaves_with_paths(variables)
    selected = [M.path_names(p) for p, leaf in leaves if model.default_adapt_filter(p, leaf)]
    assert 0 < len(selected) < len(leaves)
    if name in ("melu", "neumf", "gru"):
        assert all("head" in names for names in selected)
    mask = M.adapt_mask(variables, M.adapt_filter("default", model))
    assert sum(jax.tree.leaves(mask)) == len(selected)


def test_adapt_filter_strings():
    model, variables, _ = built("melu")
    leaves = leaves_with_paths(variables)

    def chosen(predicate):
        return {"/".join(M.path_names(p)) for p, leaf in leaves if predicate(p, leaf)}

    assert len(chosen(M.adapt_filter("all"))) == len(leaves)
    assert chosen(M.adapt_filter("head")) == chosen(model.default_adapt_filter)
    assert chosen(M.adapt_filter(None, model)) == chosen(model.default_adapt_filter)
    assert chosen(M.adapt_filter("head/output")) == {"params/head/output/bias", "params/head/output/kernel"}
    assert chosen(M.adapt_filter(r"embed_user_\w+/embedding$")) == {
        f"params/embed_user_{f}/embedding" for f in ("age", "gender", "occupation", "zip")
    }
    predicate = lambda path, leaf: leaf.ndim == 1
    assert M.adapt_filter(predicate) is predicate
    with pytest.raises(ValueError, match="needs the model"):
        M.adapt_filter("default")
    with pytest.raises(ValueError, match="selects no parameter"):
        M.adapt_mask(variables, M.adapt_filter("no_such_module"))


def test_path_names():
    tree = {"params": {"head": [jnp.zeros(1), (jnp.zeros(2),)]}}
    paths = [M.path_names(p) for p, _ in leaves_with_paths(tree)]
    assert paths == [("params", "head", "0"), ("params", "head", "1", "0")]


@pytest.mark.parametrize("name", NAMES)
def test_embedding_tables_name_the_row_key_that_indexes_them(name):
    _, variables, _ = built(name)
    tables = M.embedding_tables(variables)
    assert tables
    leaves = dict((M.path_names(p), leaf) for p, leaf in leaves_with_paths(variables))
    for path, row_key in tables.items():
        vocab_key = "item" if row_key == "history_item" else row_key
        assert leaves[path].shape[0] == SIDE.categorical[vocab_key], (path, row_key)


def test_melu_reference_workload_has_exact_parameter_shapes():
    vocab, width = 1700, 32
    spec = M.reference_spec(vocab)
    model = M.MeLU(spec, embed=width, hidden=(64, 64), use_ids=("item",), interaction=None)
    variables = M.init_params(model, spec, jax.random.key(0))
    embedded = {key: n for key, n in spec.categorical.items() if key != "user"}
    assert sorted(embedded.values()) == [2, 7, 8, 21, 100, vocab]
    concat = len(embedded) * width + len(spec.multi_hot) * width  # 6 * 32 + 32
    expected = {("params", f"embed_{key}", "embedding"): (n, width) for key, n in embedded.items()}
    expected[("params", "dense_item_genres", "kernel")] = (19, width)  # bias-free
    expected[("params", "head", "hidden_0", "kernel")] = (concat, 64)
    expected[("params", "head", "hidden_0", "bias")] = (64,)
    expected[("params", "head", "hidden_1", "kernel")] = (64, 64)
    expected[("params", "head", "hidden_1", "bias")] = (64,)
    expected[("params", "head", "output", "kernel")] = (64, 1)
    expected[("params", "head", "output", "bias")] = (1,)
    shapes = {M.path_names(p): leaf.shape for p, leaf in leaves_with_paths(variables)}
    assert shapes == expected
    assert concat == 224
    chex.assert_shape(model.apply(variables, M.synthetic_rows(spec, 3, jax.random.key(1))), (3,))


def test_melu_fm_interaction_adds_no_parameters_but_changes_scores():
    plain = M.MeLU(SIDE, interaction=None)
    fm = M.MeLU(SIDE, interaction="fm")
    v_plain = M.init_params(plain, SIDE, jax.random.key(0))
    v_fm = M.init_params(fm, SIDE, jax.random.key(0))
    assert (
        v_fm["params"]["head"]["hidden_0"]["kernel"].shape[0]
        == v_plain["params"]["head"]["hidden_0"]["kernel"].shape[0] + 32
    )
    assert set(v_fm["params"]) == set(v_plain["params"])


def test_fm_pairwise_term_matches_the_quadratic_sum():
    spec = FeatureSpec({"user": 4, "item": 5, "user_age": 3}, multi_hot={"item_genres": 4}, rating_range=(1.0, 5.0))
    model = M.FactorizationMachine(spec, embed=6)
    variables = M.init_params(model, spec, jax.random.key(0))
    rows = M.synthetic_rows(spec, 8, jax.random.key(1))
    p = variables["params"]
    # explicit O(n^2) sum over the active features of each row, weights x_j
    linear = M.LinearModel(spec).apply({"params": p["linear"]}, rows)
    for r in range(8):
        vectors, weights = [], []
        for key in ("user", "user_age", "item"):
            vectors.append(p[f"factors_embed_{key}"]["embedding"][rows[key][r]])
            weights.append(1.0)
        for g in range(4):
            vectors.append(p["factors_dense_item_genres"]["kernel"][g])
            weights.append(float(rows["item_genres"][r, g]))
        pairwise = sum(
            weights[a] * weights[b] * jnp.dot(vectors[a], vectors[b])
            for a in range(len(vectors))
            for b in range(a + 1, len(vectors))
        )
        np.testing.assert_allclose(model.apply(variables, rows)[r], linear[r] + pairwise, rtol=1e-5, atol=1e-5)


def test_gru_ignores_padding_steps_wherever_they_are():
    model = M.GRURecommender(PLAIN)
    variables = M.init_params(model, PLAIN, jax.random.key(0))
    rows = {
        "user": jnp.array([1, 1]),
        "item": jnp.array([3, 3]),
        "history_item": jnp.array([[4, 5, 0, 0, 0], [0, 4, 0, 5, 0]]),
        "history_rating": jnp.array([[5.0, 1.0, 0, 0, 0], [2.0, 5.0, 3.0, 1.0, 4.0]]),
    }
    scores = model.apply(variables, rows)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)


def test_implicit_models_return_logits_and_bce():
    for name in ("mf", "linear", "fm", "neumf", "gru"):
        model = M.create(name, IMPLICIT)
        variables = M.init_params(model, IMPLICIT, jax.random.key(0))
        rows = M.synthetic_rows(IMPLICIT, 6, jax.random.key(1))
        assert set(np.unique(np.asarray(rows["label"]))) <= {0.0, 1.0}
        loss = M.default_loss(model)(variables, rows, jnp.ones(6, bool))
        assert abs(float(loss) - np.log(2.0)) < 0.3  # logits start near 0


def test_synthetic_task_batch():
    batch = M.synthetic_task_batch(SIDE, tasks=4, support=5, query=7, key=jax.random.key(3)).validate()
    assert batch.shape == (4, 5, 7)
    assert bool(jnp.all(jnp.any(batch.support_mask, 1))) and bool(jnp.all(jnp.any(batch.query_mask, 1)))
    for side in (batch.support, batch.query):
        ratings = np.asarray(side["rating"])
        assert ratings.min() >= 1 and ratings.max() <= 5 and np.all(ratings == np.round(ratings))
        for key in ("user", "user_age", "user_zip", "history_item"):
            assert np.all(np.asarray(side[key]) == np.asarray(side[key])[:, :1]), key
    np.testing.assert_array_equal(batch.support["user"][:, 0], batch.query["user"][:, 0])
    full = M.synthetic_task_batch(SIDE, 2, 3, 3, jax.random.key(0), padded=False)
    assert bool(jnp.all(full.support_mask)) and bool(jnp.all(full.query_mask))


def test_registry_and_errors():
    assert set(M.MODELS) == {"mf", "linear", "fm", "melu", "neumf", "gru"}
    with pytest.raises(ValueError, match="unknown model"):
        M.create("svd++", SIDE)
    spec = FeatureSpec({"user": 3, "item": 3}, rating_range=(1.0, 5.0))
    with pytest.raises(ValueError, match="history"):
        M.init_params(M.create("gru", spec), spec, jax.random.key(0))
    with pytest.raises(ValueError, match="use_ids"):
        M.init_params(M.create("melu", spec, use_ids=("zip",)), spec, jax.random.key(0))


def _learnable_rows(key, rows=512):
    """Rows whose rating is a fixed function of the user's and item's features (themselves fixed per id), so
    both id models and feature models can fit it: additive effects plus a gender x genre interaction."""
    keys = jax.random.split(key, 8)
    user_gender = jax.random.randint(keys[0], (USERS,), 0, 2)
    user_age = jax.random.randint(keys[1], (USERS,), 0, 7)
    item_year = jax.random.randint(keys[2], (ITEMS,), 0, 8)
    item_genres = jax.random.bernoulli(keys[3], 0.3, (ITEMS, 19)).astype(jnp.float32)
    genre_effect = jax.random.normal(keys[4], (19,))
    user = jax.random.randint(keys[5], (rows,), 0, USERS)
    item = jax.random.randint(keys[6], (rows,), 0, ITEMS)
    out = M.synthetic_rows(SIDE, rows, keys[7])  # occupation, zip, histories: noise the models must ignore
    out.update(
        user=user,
        item=item,
        user_gender=user_gender[user],
        user_age=user_age[user],
        item_year=item_year[item],
        item_genres=item_genres[item],
    )
    genre_score = item_genres[item] @ genre_effect
    signed = jnp.where(user_gender[user] == 1, 1.0, -1.0)
    additive = 0.25 * (user_age[user] - 3) + 0.2 * (item_year[item] - 4) + 0.3 * genre_score
    out["rating"] = 3.0 + additive + 0.15 * signed * genre_score
    return out


@pytest.mark.parametrize("name", NAMES)
def test_adam_training_reduces_mse(name):
    model = make(name, SIDE)
    rows = _learnable_rows(jax.random.key(0))
    if name == "gru":  # the rating is the user's mean past rating, shifted by an item effect
        history_mean = jnp.sum(rows["history_rating"], 1) / jnp.maximum(jnp.sum(rows["history_item"] > 0, 1), 1)
        rows["rating"] = history_mean + 0.2 * (rows["item_year"] - 4)
    variables = M.init_params(model, SIDE, jax.random.key(1))
    loss_fn = M.default_loss(model)
    mask = jnp.ones(rows["rating"].shape, bool)
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, rows, mask)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params, state = variables, optimizer.init(variables)
    losses = []
    for _ in range(200):
        params, state, loss = step(params, state)
        losses.append(loss)
    initial, final = float(losses[0]), float(loss_fn(params, rows, mask))
    assert np.isfinite(final)
    assert final < 0.3 * initial, (initial, final)
