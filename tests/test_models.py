"""Tests for jaxrec.models: shapes, jit/vmap, gradients, OOV, adapt filters, the MeLU reference workload, training."""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrec
from jaxrec import FeatureSpec
from jaxrec import models as M
from jaxrec.models.common import spec_field, valid_ids

ITEMS, USERS, HISTORY = 30, 20, 5
SIDE = dataclasses.replace(
    jaxrec.testing.reference_spec(ITEMS),
    categorical={**jaxrec.testing.reference_spec(ITEMS).categorical, "user": USERS},
    history=HISTORY,
)
PLAIN = FeatureSpec({"user": USERS, "item": ITEMS}, rating_range=(1.0, 5.0), history=HISTORY)
IMPLICIT = FeatureSpec({"user": USERS, "item": ITEMS}, target="label", history=HISTORY)
NAMES = sorted(M.MODELS)
SPECS = {"side": SIDE, "plain": PLAIN}


ROWS = 8  # one row count everywhere, so each model's jitted apply compiles once
# XLA's CPU backend spends most of these tests compiling; unoptimised code generation halves that (local to the
# functions jitted here, nothing global).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn):
    return jax.jit(fn, compiler_options=FAST_COMPILE)


def make(name: str, spec: FeatureSpec):
    # MeLU, TaNP and MAMO use features only by default; on an id-only spec they need the ids.
    kwargs = {"use_ids": ("user", "item")} if name in ("melu", "tanp", "mamo") and not spec.fields("user_") else {}
    if name == "mamo":  # its published width (100) makes 200 training steps here slow; the structure is the same
        kwargs["width"] = 16
    return M.create(name, spec, **kwargs)


def shapes_of(model, spec):
    """The variables and scores of ``model`` on ``spec`` as ShapeDtypeStructs (traced, nothing compiled)."""
    rows = jaxrec.testing.synthetic_rows(spec, ROWS, jax.random.key(1))
    variables = jax.eval_shape(model.init, jax.random.key(0), rows)
    return variables, jax.eval_shape(model.apply, variables, rows)


def host_random_like(variables, seed=0, scale=0.3):
    """Random parameters made on the host (no XLA compilation of initialisers), for exactness tests."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), variables)


@functools.cache
def built(name: str):
    """(model, variables) on SIDE, initialised once per model exactly as ``init_params`` does."""
    model = make(name, SIDE)
    data_key, param_key = jax.random.split(jax.random.key(0))
    return model, jit(model.init)(param_key, jaxrec.testing.synthetic_rows(SIDE, 2, data_key))


@functools.cache
def side_rows(seed: int = 1):
    return jaxrec.testing.synthetic_rows(SIDE, ROWS, jax.random.key(seed))


ROW_VARIANTS = ("random", "oov", "out_of_range", "mixed")


@functools.cache
def scored(name: str) -> dict[str, jax.Array]:
    """Scores of one model on several variants of the same rows, from a single jit(vmap(apply)) compilation."""
    model, variables = built(name)
    rows, other = side_rows(1), side_rows(2)
    oov = {k: (jnp.zeros_like(v) if v.dtype == jnp.int32 else v) for k, v in rows.items()}
    out_of_range = {k: (v + 1000 if v.dtype == jnp.int32 else v) for k, v in oov.items()}
    out_of_range["item"] = jnp.full_like(rows["item"], -3)
    mixed = {k: v.at[5:].set(other[k][5:]) for k, v in rows.items()}  # rows 5.. replaced by garbage
    variants = (rows, oov, out_of_range, mixed)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *variants)
    scores = jit(jax.vmap(model.apply, in_axes=(None, 0)))(variables, stacked)
    return dict(zip(ROW_VARIANTS, scores, strict=True))


def leaves_with_paths(variables):
    return jax.tree_util.tree_flatten_with_path(variables)[0]


@pytest.mark.parametrize("name", NAMES)
def test_scores_have_one_value_per_row_and_are_finite(name):
    for variant, scores in scored(name).items():
        chex.assert_shape(scores, (ROWS,))
        chex.assert_type(scores, jnp.float32)
        chex.assert_tree_all_finite(scores), variant


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("name", NAMES)
def test_score_shapes_with_and_without_side_features(name, spec_name):
    spec = SPECS[spec_name]
    if name == "metaemb" and spec_name == "plain":  # its generator reads the item's side features
        with pytest.raises(ValueError, match="side features"):
            shapes_of(make(name, spec), spec)
        return
    variables, scores = shapes_of(make(name, spec), spec)
    assert scores.shape == (ROWS,) and scores.dtype == jnp.float32
    n_tables = len(M.embedding_tables(variables))
    assert n_tables >= 1
    if spec_name == "side" and name in ("linear", "fm", "melu"):  # these read every side feature
        assert n_tables > len(M.embedding_tables(shapes_of(make(name, PLAIN), PLAIN)[0]))


@pytest.mark.parametrize("name", NAMES)
def test_oov_and_out_of_range_ids_are_valid(name):
    scores = scored(name)
    # out-of-range ids (negative, >= vocab) read the OOV row, like id 0
    chex.assert_trees_all_close(scores["out_of_range"], scores["oov"])


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_scored_independently(name):
    # no batch statistics: garbage in a padded row cannot leak into a real row's score
    scores = scored(name)
    chex.assert_trees_all_close(scores["mixed"][:5], scores["random"][:5], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_untrained_predictions_start_mid_range(name):
    assert abs(float(jnp.mean(scored(name)["random"])) - 3.0) < 0.75


@pytest.mark.parametrize("name", NAMES)
def test_default_adapt_filter_selects_a_strict_subset(name):
    model, variables = built(name)
    leaves = leaves_with_paths(variables)
    selected = [M.path_names(p) for p, leaf in leaves if model.default_adapt_filter(p, leaf)]
    assert 0 < len(selected) < len(leaves)
    if name in ("melu", "neumf", "gru"):
        assert all("head" in names for names in selected)
    mask = M.adapt_mask(variables, M.adapt_filter("default", model))
    assert sum(jax.tree.leaves(mask)) == len(selected)


def test_adapt_filter_strings():
    model, variables = built("melu")
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
    _, variables = built(name)
    tables = M.embedding_tables(variables)
    assert tables
    leaves = dict((M.path_names(p), leaf) for p, leaf in leaves_with_paths(variables))
    for path, row_key in tables.items():
        vocab_key = "item" if row_key == "history_item" else row_key
        assert leaves[path].shape[0] == SIDE.categorical[vocab_key], (path, row_key)


def test_melu_reference_workload_has_exact_parameter_shapes():
    vocab, width = 1700, 32
    spec = jaxrec.testing.reference_spec(vocab)
    model = M.MeLU(spec, embed=width, hidden=(64, 64), use_ids=("item",), interaction=None)
    variables, scores = shapes_of(model, spec)
    embedded = {key: n for key, n in spec.categorical.items() if key != "user"}
    assert sorted(embedded.values()) == [2, 7, 8, 21, 100, vocab]
    concat = len(embedded) * width + len(spec.multi_hot) * width  # 6 * 32 + 32
    assert concat == 224
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
    assert scores.shape == (ROWS,)


def test_melu_fm_interaction_appends_one_pooled_field_without_parameters():
    v_plain, _ = shapes_of(M.MeLU(SIDE, interaction=None), SIDE)
    v_fm, _ = shapes_of(M.MeLU(SIDE, interaction="fm"), SIDE)
    hidden_in = lambda v: v["params"]["head"]["hidden_0"]["kernel"].shape[0]
    assert hidden_in(v_fm) == hidden_in(v_plain) + 32
    assert jax.tree.map(lambda x: x.shape, v_fm["params"]).keys() == v_plain["params"].keys()
    with pytest.raises(ValueError, match="interaction"):
        shapes_of(M.MeLU(SIDE, interaction="attention"), SIDE)


def test_melu_item_bias_is_added_by_item_id_and_meta_learned_not_adapted():
    model = M.MeLU(SIDE, embed=4, hidden=(8,), use_ids=("item",), interaction=None, item_bias=True)
    variables, _ = shapes_of(model, SIDE)
    table_path = ("params", "bias_embed_item", "embedding")
    shapes = {M.path_names(p): leaf.shape for p, leaf in leaves_with_paths(variables)}
    assert shapes[table_path] == (ITEMS, 1)
    plain, _ = shapes_of(M.MeLU(SIDE, embed=4, hidden=(8,), use_ids=("item",), interaction=None), SIDE)
    assert "bias_embed_item" not in plain["params"]
    assert M.embedding_tables(variables)[table_path] == "item"
    adapted = {M.path_names(p) for p, leaf in leaves_with_paths(variables) if M.MeLU.default_adapt_filter(p, leaf)}
    assert table_path not in adapted and ("params", "head", "output", "bias") in adapted

    params = host_random_like(variables, seed=2)
    zero = jax.tree.map(lambda x: x, params)
    zero["params"]["bias_embed_item"]["embedding"] = jnp.zeros((ITEMS, 1))
    table = jnp.arange(ITEMS, dtype=jnp.float32)[:, None] / 10.0
    biased = jax.tree.map(lambda x: x, zero)
    biased["params"]["bias_embed_item"]["embedding"] = table
    rows = jaxrec.testing.synthetic_rows(SIDE, ROWS, jax.random.key(4))
    rows = dict(rows, item=jnp.array([0, 1, 5, 29, 7, 7, -3, ITEMS + 2]))
    apply = jit(model.apply)
    diff = np.asarray(apply(biased, rows) - apply(zero, rows))
    expected = np.array([0, 1, 5, 29, 7, 7, 0, 0]) / 10.0  # out-of-range ids read the OOV row 0
    np.testing.assert_allclose(diff, expected, atol=1e-5)
    with pytest.raises(ValueError, match="item_bias"):
        side_only = FeatureSpec({"user": USERS, "user_age": 7}, rating_range=(1.0, 5.0))
        shapes_of(M.MeLU(side_only, item_bias=True, use_ids=("user",)), side_only)


def test_melu_item_bias_starts_at_zero_and_moves_under_supervised_pretraining():
    from jaxrec.evaluation.baselines import train_supervised

    model = M.MeLU(SIDE, embed=4, hidden=(8,), use_ids=("item",), interaction=None, item_bias=True)
    variables = M.init_params(model, SIDE, jax.random.key(0))
    assert not np.any(np.asarray(variables["params"]["bias_embed_item"]["embedding"]))
    rows = _learnable_rows(rows=256)
    rows["item"] = np.where(rows["item"] == 3, 4, rows["item"])  # item 3 is never rated
    trained, _ = train_supervised(variables, rows, loss_fn=M.default_loss(model), epochs=2, batch_size=32)
    table = np.asarray(trained["params"]["bias_embed_item"]["embedding"])[:, 0]
    rated = np.unique(rows["item"])
    assert np.all(np.abs(table[rated]) > 1e-4)
    assert table[3] == 0.0  # no rating, no gradient, no Adam moment: untouched


def test_fm_pairwise_term_matches_the_quadratic_sum():
    spec = FeatureSpec({"user": 4, "item": 5, "user_age": 3}, multi_hot={"item_genres": 4}, rating_range=(1.0, 5.0))
    model = M.FactorizationMachine(spec, embed=6)
    variables = host_random_like(shapes_of(model, spec)[0])
    rows = jaxrec.testing.synthetic_rows(spec, ROWS, jax.random.key(1))
    p = jax.tree.map(np.asarray, variables["params"])
    x = {k: np.asarray(v) for k, v in rows.items()}
    scores = np.asarray(jit(model.apply)(variables, rows))
    for r in range(ROWS):
        # explicit O(n^2) FM over the active features of row r: (value x_j, weight w_j, factor v_j)
        features = [
            (1.0, p["linear"][f"embed_{k}"]["embedding"][x[k][r], 0], p[f"factors_embed_{k}"]["embedding"][x[k][r]])
            for k in ("user", "user_age", "item")
        ]
        features += [
            (
                x["item_genres"][r, g],
                p["linear"]["dense_item_genres"]["kernel"][g, 0],
                p["factors_dense_item_genres"]["kernel"][g],
            )
            for g in range(4)
        ]
        expected = p["linear"]["bias"] + sum(value * weight for value, weight, _ in features)
        expected += sum(
            features[a][0] * features[b][0] * np.dot(features[a][2], features[b][2])
            for a in range(len(features))
            for b in range(a + 1, len(features))
        )
        np.testing.assert_allclose(scores[r], expected, rtol=1e-4, atol=1e-4)


def test_gru_ignores_padding_steps_wherever_they_are():
    model = M.GRURecommender(PLAIN)
    variables = host_random_like(shapes_of(model, PLAIN)[0])
    rows = {
        "user": jnp.array([1, 1]),
        "item": jnp.array([3, 3]),
        "history_item": jnp.array([[4, 5, 0, 0, 0], [0, 4, 0, 5, 0]]),
        "history_rating": jnp.array([[5.0, 1.0, 0, 0, 0], [2.0, 5.0, 3.0, 1.0, 4.0]]),
    }
    apply = jit(model.apply)
    scores = apply(variables, rows)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)
    swapped = dict(rows, history_item=jnp.array([[5, 4, 0, 0, 0], [0, 4, 0, 5, 0]]))
    assert abs(float(apply(variables, swapped)[0] - scores[0])) > 1e-6  # order matters


def test_implicit_models_start_at_zero_logits():
    rows = jaxrec.testing.synthetic_rows(IMPLICIT, ROWS, jax.random.key(1))
    assert set(np.unique(np.asarray(rows["label"]))) <= {0.0, 1.0} and "neg_item" in rows
    for name in ("mf", "neumf"):
        model = M.create(name, IMPLICIT)
        variables = M.init_params(model, IMPLICIT, jax.random.key(0))
        loss = jit(M.default_loss(model))(variables, rows, jnp.ones(ROWS, bool))
        assert abs(float(loss) - np.log(2.0)) < 0.1  # BCE of logits near 0


def test_synthetic_task_batch():
    batch = jaxrec.testing.synthetic_task_batch(SIDE, tasks=4, support=5, query=7, key=jax.random.key(3)).validate()
    assert batch.shape == (4, 5, 7)
    assert bool(jnp.all(jnp.any(batch.support_mask, 1))) and bool(jnp.all(jnp.any(batch.query_mask, 1)))
    for side in (batch.support, batch.query):
        ratings = np.asarray(side["rating"])
        assert ratings.min() >= 1 and ratings.max() <= 5 and np.all(ratings == np.round(ratings))
        for key in ("user", "user_age", "user_zip", "history_item"):
            assert np.all(np.asarray(side[key]) == np.asarray(side[key])[:, :1]), key
    np.testing.assert_array_equal(batch.support["user"][:, 0], batch.query["user"][:, 0])
    full = jaxrec.testing.synthetic_task_batch(SIDE, 2, 3, 3, jax.random.key(0), padded=False)
    assert bool(jnp.all(full.support_mask)) and bool(jnp.all(full.query_mask))


def test_registry_and_errors():
    assert set(M.MODELS) == {
        "mf",
        "linear",
        "fm",
        "melu",
        "neumf",
        "gru",
        "twotower",
        "tanp",
        "lwa",
        "nlba",
        "mwuf",
        "metaemb",
        "mamo",
    }
    with pytest.raises(ValueError, match="unknown model"):
        M.create("svd++", SIDE)
    spec = FeatureSpec({"user": 3, "item": 3}, rating_range=(1.0, 5.0))
    with pytest.raises(ValueError, match="history"):
        M.init_params(M.create("gru", spec), spec, jax.random.key(0))
    with pytest.raises(ValueError, match="use_ids"):
        M.init_params(M.create("melu", spec, use_ids=("zip",)), spec, jax.random.key(0))


def _learnable_rows(seed=0, rows=512):
    """Rows whose rating is a fixed function of the user's and item's features (themselves fixed per id), so
    both id models and feature models can fit it: additive effects plus a gender x genre interaction."""
    rng = np.random.default_rng(seed)
    user_gender, user_age = rng.integers(0, 2, USERS), rng.integers(0, 7, USERS)
    item_year = rng.integers(0, 8, ITEMS)
    item_genres = (rng.random((ITEMS, 19)) < 0.3).astype(np.float32)
    genre_effect = rng.standard_normal(19)
    user, item = rng.integers(0, USERS, rows), rng.integers(0, ITEMS, rows)
    out = {k: np.asarray(v) for k, v in jaxrec.testing.synthetic_rows(SIDE, rows, jax.random.key(seed)).items()}
    out.update(
        user=user,
        item=item,
        user_gender=user_gender[user],
        user_age=user_age[user],
        item_year=item_year[item],
        item_genres=item_genres[item],
    )  # occupation, zip stay random: noise the models must ignore
    genre_score = item_genres[item] @ genre_effect
    signed = np.where(user_gender[user] == 1, 1.0, -1.0)
    additive = 0.25 * (user_age[user] - 3) + 0.2 * (item_year[item] - 4) + 0.3 * genre_score
    out["rating"] = 3.0 + additive + 0.15 * signed * genre_score
    return out


@pytest.mark.parametrize("name", NAMES)
def test_vmapped_training_over_tasks_has_finite_gradients_and_reduces_mse(name):
    """200 Adam steps on the mean of per-task losses, jit(vmap(value_and_grad)) over 4 tasks of 128 rows."""
    model, variables = built(name)
    rows = _learnable_rows()
    if name == "gru":  # the rating is the user's mean past rating, shifted by an item effect
        history_mean = rows["history_rating"].sum(1) / np.maximum((rows["history_item"] > 0).sum(1), 1)
        rows["rating"] = history_mean + 0.2 * (rows["item_year"] - 4)
    tasks = {k: jnp.asarray(v).reshape((4, 128) + v.shape[1:]) for k, v in rows.items()}
    tasks["user"] = tasks["user"].at[0].set(0)  # task 0: a cold-start user (OOV id)
    mask = jnp.ones((4, 128), bool).at[3, 100:].set(False)  # task 3: padded rows
    tasks["rating"] = tasks["rating"].at[3, 100:].set(1e3)  # ... whose (garbage) targets must not leak
    loss_fn = M.default_loss(model)
    optimizer = optax.adam(1e-2)

    @jit
    def step(params, state):
        losses, grads = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0, 0))(params, tasks, mask)
        mean_grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        updates, state = optimizer.update(mean_grads, state, params)
        return optax.apply_updates(params, updates), state, losses, grads

    params, state, first_losses, first_grads = step(variables, optimizer.init(variables))
    chex.assert_shape(first_losses, (4,))
    chex.assert_tree_all_finite((first_losses, first_grads))
    chex.assert_trees_all_equal_shapes(jax.tree.map(lambda g: g[0], first_grads), variables)
    for _ in range(199):
        params, state, losses, _ = step(params, state)
    losses = step(params, state)[2]
    initial, final = float(jnp.mean(first_losses)), float(jnp.mean(losses))
    assert np.isfinite(final)
    assert final < 0.3 * initial, (initial, final)


class _BiasDot(nn.Module):
    """A model of one's own: an item bias plus a user vector (adapted) dotted with the item's embedding."""

    spec: FeatureSpec = spec_field
    embed: int = 4

    @nn.compact
    def __call__(self, rows):
        item = valid_ids(rows["item"], self.spec.categorical["item"])
        bias = nn.Embed(self.spec.categorical["item"], 1, name="bias_item")(item)[..., 0]
        vectors = nn.Embed(self.spec.categorical["item"], self.embed, name="embed_item")(item)
        user = self.param("user_vector", nn.initializers.zeros_init(), (self.embed,))
        offset = self.param("offset", nn.initializers.constant(3.5 if self.spec.rating_range else 0.0), ())
        return offset + bias + vectors @ user

    @staticmethod
    def default_adapt_filter(path, leaf):
        return "user_vector" in jaxrec.models.path_names(path)


def test_a_registered_model_of_ones_own_runs_in_both_harnesses_beside_the_baselines():
    """``jaxrec.models.register``: a config names the model, the rated and the top-N harness train and score it
    against their baselines on the same users; a loss of one's own is the one trained on; every point of the
    protocol a model breaks is named at registration."""
    from jaxrec.experiment import Experiment, ExperimentConfig
    from jaxrec.experiment.topn import TopNExperiment
    from jaxrec.models import registry

    used = []

    def own_loss(model):
        used.append(type(model).__name__)
        return jaxrec.mse_loss(model.apply)

    jaxrec.models.register("biasdot", _BiasDot, loss=own_loss)
    try:
        rated = Experiment(
            ExperimentConfig.make(
                model="biasdot",
                epochs=1,
                bootstrap=20,
                inner_steps=1,
                pretrain=False,
                supervised_epochs=1,
                finetune_lrs=(0.0, 0.1),
            )
        )
        assert used == ["_BiasDot"] and rated.config.meta.adapt == "default"
        scenarios = rated.evaluate(rated.train().params)
        new_users = scenarios["new_user"]
        assert {"maml", "finetune", "bias"} <= set(new_users) and 0.5 < new_users["maml"]["mae"] < 1.5
        assert "paired" in new_users["bias"]
        top = TopNExperiment(
            ExperimentConfig.make(
                model="biasdot",
                feedback="implicit",
                positive_threshold=4.0,
                epochs=1,
                inner_steps=1,
                topn_baselines=("popular",),
                bootstrap=20,
            )
        )
        summaries = top.validate(top.train().params)
        assert {"maml", "popular"} <= set(summaries) and 0.0 <= summaries["maml"]["recall@20"] <= 1.0
        with pytest.raises(ValueError, match="registered already"):
            jaxrec.models.register("biasdot", _BiasDot)
        jaxrec.models.register("biasdot", _BiasDot, replace=True)  # its loss goes with the replaced registration
        registry.default_loss(jaxrec.models.create("biasdot", rated.spec))
        assert used == ["_BiasDot"]
    finally:
        registry.MODELS.pop("biasdot", None)
        registry._LOSSES.pop(_BiasDot, None)

    class Hashed(_BiasDot):
        spec: FeatureSpec = None

    class NoFilter(nn.Module):
        spec: FeatureSpec = spec_field

    class NoSpec(nn.Module):
        embed: int = 4

    for cls, message in [
        (Hashed, "declares 'spec' hashed"),
        (NoFilter, "needs a @staticmethod default_adapt_filter"),
        (NoSpec, "a field 'spec'"),
        (dict, "must be a flax.linen.Module class"),
    ]:
        with pytest.raises(TypeError, match=message):
            jaxrec.models.register("broken", cls)
    with pytest.raises(ValueError, match="'melu' is a built-in model"):
        jaxrec.models.register("melu", _BiasDot)
    # a loss goes with its class: a built-in class under a second name would have given the built-in name that loss
    with pytest.raises(ValueError, match="MatrixFactorization is registered as 'mf' already: register a subclass"):
        jaxrec.models.register("mf_mine", M.MatrixFactorization, loss=lambda model: None)

    class PlainMethod(_BiasDot):
        def default_adapt_filter(self, path, leaf):  # not static: called as (path, leaf) it fails later
            return True

    with pytest.raises(TypeError, match="needs a @staticmethod default_adapt_filter"):
        jaxrec.models.register("broken", PlainMethod)
    assert "broken" not in registry.MODELS
