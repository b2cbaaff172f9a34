"""Items as tasks (``tasks_by="item"``) and the item cold-start methods LWA and NLBA (``jaxrec.methods.lwa`` /
``nlba``, Vartak et al. NeurIPS 2017): an item task holds only that item's ratings, split and bucketed as user tasks
are; the class representatives are the means of the engaged and the non-engaged support users' embeddings,
invariant to the order and padding of the support; the predictors are the paper's formulas; the meta-gradient
through the class means is exact; the bias baseline folds in a new item's offset beside its users' fitted ones."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

import jaxrec
from jaxrec import cli, methods, models
from jaxrec.data import Featurizer, build_tasks, load
from jaxrec.evaluation.baselines import bias_predict
from jaxrec.experiment import ExperimentConfig
from jaxrec.experiment.config import resolve
from jaxrec.experiment.protocol import Learner
from jaxrec.models.item_history import LWA, NLBA, engagement_threshold
from jaxrec.testing import central_differences, float64_rows, perturbed, synthetic_task_batch

SPEC = jaxrec.FeatureSpec(
    categorical={"user": 12, "item": 20, "user_gender": 3, "item_year": 5},
    multi_hot={"item_genres": 4},
    target="rating",
    rating_range=(1.0, 5.0),
)
SMALL = {"width": 3, "user_hidden": [4], "dim": 3}


def learner_of(name, order="second", **small):
    fields = methods.recipe(name)
    fields["model_kwargs"] = {**fields["model_kwargs"], **SMALL, **small}
    fields["order"] = order
    config = resolve(ExperimentConfig.make(**fields))
    learner = Learner.build(config, SPEC)
    params = models.init_params(learner.model, SPEC, jax.random.key(0))
    return learner, perturbed(params, 0.1)  # every ReLU off its kink, the context leaves non-zero


def one_task(key=1, support=6, query=4):
    batch = synthetic_task_batch(SPEC, tasks=1, support=support, query=query, key=jax.random.key(key), padded=False)
    take = lambda tree: jax.tree.map(lambda v: np.asarray(v[0]), tree)  # noqa: E731
    return take(batch.support), take(batch.query)


# -- item tasks ----------------------------------------------------------------------------------------------------


def test_item_tasks_hold_one_item_each_split_like_user_tasks():
    ds = load()
    ratings = ds.ratings
    feat = Featurizer.fit(ds, ratings)
    tasks = build_tasks(ratings, feat, "melu", seed=3, by="item")
    assert tasks.by == "item" and len(tasks) > 100
    counts = ratings["item"].value_counts()
    # the melu split's rules per item: 13..100 ratings, 10 in the query, the rest in the support
    eligible = counts[(counts >= 13) & (counts <= 100)]
    assert sorted(tasks.users.tolist()) == sorted(eligible.index.tolist())
    assert tasks.stats["users_dropped"] == ratings["item"].nunique() - len(eligible)
    batch = tasks.make_batch(np.arange(8))
    (support, s_mask), (query, q_mask) = tasks.codes(np.arange(8))
    for t in range(8):
        item = tasks.users[t]
        assert set(support["item"][t][s_mask[t]]) == {item} and set(query["item"][t][q_mask[t]]) == {item}
        users = np.r_[support["user"][t][s_mask[t]], query["user"][t][q_mask[t]]]
        assert len(set(users)) == len(users) == counts[item]  # every rating of the item, once
        assert q_mask[t].sum() == 10
    np.testing.assert_array_equal(batch.task_id, tasks.users[:8])
    # the same seed gives the same tasks; another seed other support/query rows
    again = build_tasks(ratings, feat, "melu", seed=3, by="item")
    np.testing.assert_array_equal(again.row_user, tasks.row_user)
    other = build_tasks(ratings, feat, "melu", seed=4, by="item")
    assert not np.array_equal(other.row_user, tasks.row_user)


def test_item_tasks_refuse_what_is_drawn_per_user():
    ds = load()
    feat = Featurizer.fit(ds, ds.ratings)
    with pytest.raises(ValueError, match="unknown task side"):
        build_tasks(ds.ratings, feat, by="genre")
    with pytest.raises(ValueError, match="without histories"):
        build_tasks(ds.ratings, feat, by="item", history=3)
    implicit = Featurizer.fit(ds, ds.ratings, implicit_threshold=4.0)
    with pytest.raises(ValueError, match="implicit"):
        build_tasks(ds.ratings, implicit, by="item")
    with pytest.raises(ValueError, match="cross-domain"):
        ExperimentConfig.make(tasks_by="item", scheme="cross-domain", target_genres=["Drama"])
    with pytest.raises(ValueError, match="top-N"):
        ExperimentConfig.make(tasks_by="item", feedback="implicit")
    with pytest.raises(ValueError, match="tasks_by='item'"):
        resolve(ExperimentConfig.make(**{**methods.lwa(), "tasks_by": "user"}))
    with pytest.raises(ValueError, match="use_ids may name 'user' only"):
        models.init_params(LWA(SPEC, use_ids=("user", "item")), SPEC, jax.random.key(0))


# -- LWA and NLBA ----------------------------------------------------------------------------------------------------


def test_engagement_threshold_is_the_top_quarter_of_the_rating_scale():
    assert engagement_threshold(SPEC) == 4.0
    assert engagement_threshold(jaxrec.FeatureSpec({"user": 2, "item": 2}, rating_range=(0.5, 5.0))) == 3.875
    assert engagement_threshold(jaxrec.FeatureSpec({"user": 2, "item": 2}, target="label")) == 0.5
    assert engagement_threshold(SPEC, 3.0) == 3.0


@pytest.mark.parametrize("name", ["lwa", "nlba"])
def test_class_representatives_are_the_means_of_each_classs_user_embeddings(name):
    learner, params = learner_of(name)
    model = learner.model
    support, _ = one_task(support=7)
    support["rating"] = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 4.5, 1.0], np.float32)  # engaged: rows 0, 2, 5
    users = np.asarray(jax.jit(lambda r: model.apply(params, r, method=type(model).user_embedding))(support))
    mask = np.array([True] * 6 + [False])  # the last row is padding
    encode = jax.jit(lambda r, m: model.apply(params, r, m, method=type(model).encode_support))
    context = encode(support, mask)
    np.testing.assert_allclose(context["context_r1"], users[[0, 2, 5]].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context["context_r0"], users[[1, 3, 4]].mean(0), rtol=1e-5, atol=1e-6)
    # order and padding change nothing
    order = np.array([4, 2, 0, 5, 1, 3, 6])
    permuted = encode({k: v[order] for k, v in support.items()}, mask[order])
    for key in context:
        np.testing.assert_allclose(permuted[key], context[key], rtol=1e-5, atol=1e-6)
    # an empty class is the zero vector (an item nobody liked yet)
    low = encode({**support, "rating": np.ones(7, np.float32)}, mask)
    np.testing.assert_array_equal(low["context_r1"], np.zeros(3))


def test_the_predictors_are_the_papers_formulas():
    _, query = one_task(key=5, query=5)
    learner, params = learner_of("lwa")
    p = params["params"]
    users = learner.model.apply(params, query, method=LWA.user_embedding)
    weight = p["weight_r0"] @ p["context_r0"] + p["weight_r1"] @ p["context_r1"]
    np.testing.assert_allclose(learner.model.apply(params, query), users @ weight + p["bias"], rtol=1e-5, atol=1e-6)

    learner, params = learner_of("nlba", hidden=[4, 3])
    p = params["params"]
    r0, r1 = p["context_r0"], p["context_r1"]
    h = learner.model.apply(params, query, method=NLBA.user_embedding)
    for i in range(2):
        dense = p[f"layers_{i}"]
        bias = r0 @ p[f"layer_bias_r0_{i}"]["kernel"] + r1 @ p[f"layer_bias_r1_{i}"]["kernel"] + dense["bias"]
        h = np.maximum(h @ dense["kernel"] + bias, 0.0)
    out = h @ p["output"]["kernel"] + p["output"]["bias"]
    out = out + r0 @ p["output_bias_r0"]["kernel"] + r1 @ p["output_bias_r1"]["kernel"]
    np.testing.assert_allclose(learner.model.apply(params, query), out[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lwa", "nlba"])
def test_the_meta_gradient_through_the_class_means_is_exact_and_the_same_in_both_orders(float64, name):
    learner, params = learner_of(name)
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    batch = synthetic_task_batch(SPEC, tasks=3, support=6, query=4, key=jax.random.key(3))
    batch = float64_rows(batch)

    def meta(p, order="second"):
        return jaxrec.meta_loss(p, batch, learner.inner.replace(order=order))

    grad = ravel_pytree(jax.jit(jax.grad(meta))(params))[0]
    first = ravel_pytree(jax.jit(jax.grad(lambda p: meta(p, "first")))(params))[0]
    np.testing.assert_allclose(first, grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, central_differences(jax.jit(meta), params), rtol=1e-6, atol=1e-8)
    # the user network, the predictor and the item-side-free embeddings learn; the overwritten context does not
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    offsets = np.cumsum([0] + [np.size(v) for v in jax.tree.leaves(params)])
    for path, start, stop in zip(names, offsets[:-1], offsets[1:], strict=True):
        if "context_" in path:
            assert not np.any(grad[start:stop]), path
    assert np.max(np.abs(grad)) > 0


# -- the harness ----------------------------------------------------------------------------------------------------


def test_bias_baseline_of_an_item_task_folds_in_the_items_offset_beside_its_users():
    batch = synthetic_task_batch(SPEC, tasks=2, support=4, query=3, key=jax.random.key(2))
    user_bias = np.linspace(-0.5, 0.6, 12).astype(np.float32)
    mu, item_reg = 3.5, 2.0
    scores = np.asarray(bias_predict((mu, user_bias, item_reg), batch, task_side="item"))
    s_users, s_mask = np.asarray(batch.support["user"]), np.asarray(batch.support_mask)
    residual = np.asarray(batch.support["rating"]) - mu - user_bias[s_users]
    b_item = (residual * s_mask).sum(1) / (item_reg + s_mask.sum(1))
    expected = mu + user_bias[np.asarray(batch.query["user"])] + b_item[:, None]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_train_lwa_from_the_command_line_on_new_items(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    out = tmp_path / "run"
    argv = ["train", "--method", "lwa", "--epochs", "1", "--steps", "3", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0, lines
    assert any("meta-train items" in line for line in lines), lines
    metrics = json.loads((out / "metrics.json").read_text())
    config = ExperimentConfig.from_dict(metrics["config"])
    assert (config.model.name, config.protocol.tasks_by, config.meta.inner_solver) == ("lwa", "item", "encode")
    assert list(metrics["scenarios"]) == ["new_item"]  # the only scenario of item tasks
    scores = metrics["scenarios"]["new_item"]
    assert {"maml", "bias", "finetune", "user_mean"} <= set(scores)
    assert all(np.isfinite(s["mae"]) for s in scores.values())
    # the bias baseline with the users' fitted offsets beats the item's support mean (as on user tasks)
    assert scores["bias"]["mae"] < scores["user_mean"]["mae"]
    # recommending to a new user is not what an item-task model learned: a clear refusal, not constant scores
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("item,rating\n1,5\n50,4\n")
    lines.clear()
    assert cli.main(["recommend", "--checkpoint", str(out), "--ratings", str(ratings)]) != 0
    assert any("item tasks" in line for line in lines), lines


def test_item_task_experiment_validates_on_held_out_items_and_scores_only_new_items():
    from jaxrec.experiment import Experiment

    exp = Experiment(ExperimentConfig.make(**{**methods.lwa(), "epochs": 1}))
    new_items = set(exp.split.new_items.tolist())
    assert set(exp.scenario_tasks) == {"new_item"}
    assert set(exp.scenario_tasks["new_item"].users.tolist()) <= new_items
    val_items = set(exp.val_tasks.users.tolist())
    assert val_items and not val_items & new_items
    # validation items are out of training and of the item vocabulary, as new items are
    assert not val_items & set(exp.train_ratings["item"].tolist())
    assert np.all(exp.featurizer.item_index[np.array(sorted(val_items))] == 0)
    # their raters are meta-train users, known to the model
    val_users = set(exp.val_item_ratings["user"].tolist())
    assert val_users <= set(exp.train_ratings["user"].tolist())
    assert len(pd.unique(exp.train_tasks.users)) == len(exp.train_tasks)


# -- MWUF ------------------------------------------------------------------------------------------------------------


def mwuf_learner(order="second"):
    fields = {**methods.mwuf(), "order": order, "model_kwargs": {"width": 3, "hidden": [4], "meta_hidden": 3}}
    config = resolve(ExperimentConfig.make(**fields))
    learner = Learner.build(config, SPEC)
    params = models.init_params(learner.model, SPEC, jax.random.key(0))
    return config, learner, perturbed(params, 0.1)


def test_mwuf_warms_the_cold_embedding_from_item_features_and_the_support_users():
    from jaxrec.models.item_warmup import MWUF

    _, learner, params = mwuf_learner()
    model = learner.model
    support, query = one_task(key=6, support=6, query=5)
    mask = np.array([True] * 5 + [False])
    encode = jax.jit(lambda p, r, m: model.apply(p, r, m, method=MWUF.encode_support))
    context = encode(params, support, mask)
    table = params["params"]["embed_user"]["embedding"]
    np.testing.assert_allclose(context["context_users"], table[support["user"][:5]].mean(0), rtol=1e-5, atol=1e-6)
    assert float(context["context_n"]) == 5.0
    order = np.array([3, 0, 4, 1, 2, 5])
    permuted = encode(params, {k: v[order] for k, v in support.items()}, mask[order])
    np.testing.assert_allclose(permuted["context_users"], context["context_users"], rtol=1e-5, atol=1e-6)
    # phi_warm = sigmoid-scaled phi_cold (the table's mean, OOV slot excluded) plus the shift of the users' mean
    p = {**params["params"], **context}
    warm = model.apply({"params": p}, query, method=MWUF.warm_embedding)
    cold = p["embed_item"]["embedding"][1:].mean(0)
    year = p["embed_item_year"]["embedding"][query["item_year"]]
    genres = query["item_genres"] @ p["dense_item_genres"]["kernel"]
    hidden = np.maximum(np.concatenate([year, genres], -1) @ p["scale_hidden"]["kernel"] + p["scale_hidden"]["bias"], 0)
    scale = 1 / (1 + np.exp(-(hidden @ p["scale_out"]["kernel"] + p["scale_out"]["bias"])))
    shift_hidden = np.maximum(p["context_users"] @ p["shift_hidden"]["kernel"] + p["shift_hidden"]["bias"], 0)
    shift = shift_hidden @ p["shift_out"]["kernel"] + p["shift_out"]["bias"]
    np.testing.assert_allclose(warm, scale * cold + shift, rtol=1e-5, atol=1e-6)
    # once warmed, a row never reads its item's id; with no support (context_n = 0) it is the base model, which does
    score = jax.jit(model.apply)
    other_id = {**query, "item": (query["item"] + 7) % 20}
    np.testing.assert_allclose(score({"params": p}, other_id), score({"params": p}, query), rtol=1e-6)
    base = {"params": {**p, "context_n": jnp.zeros(())}}
    assert np.max(np.abs(np.asarray(score(base, other_id)) - np.asarray(score(base, query)))) > 1e-4


def test_mwuf_meta_training_keeps_the_base_model_and_fits_the_meta_networks():
    from jaxrec.experiment.protocol import meta_optimizer

    config, _, params = mwuf_learner()
    tx = meta_optimizer(config)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name = "/".join(models.path_names(path))
        base = name.startswith(("params/embed_", "params/dense_", "params/head/"))
        assert (np.max(np.abs(update)) == 0) == base, name


def test_mwuf_meta_gradient_is_exact_and_the_same_in_both_orders(float64):
    _, learner, params = mwuf_learner()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    batch = synthetic_task_batch(SPEC, tasks=3, support=5, query=4, key=jax.random.key(8))
    batch = float64_rows(batch)

    def meta(p, order="second"):
        return jaxrec.meta_loss(p, batch, learner.inner.replace(order=order))

    grad = ravel_pytree(jax.jit(jax.grad(meta))(params))[0]
    first = ravel_pytree(jax.jit(jax.grad(lambda p: meta(p, "first")))(params))[0]
    np.testing.assert_allclose(first, grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, central_differences(jax.jit(meta), params), rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(grad)) > 0


# -- MetaEmb ---------------------------------------------------------------------------------------------------------


def metaemb_learner(order="second"):
    fields = {**methods.metaemb(order), "model_kwargs": {"width": 3, "hidden": [4], "meta_hidden": 3}}
    config = resolve(ExperimentConfig.make(**fields))
    learner = Learner.build(config, SPEC)
    params = models.init_params(learner.model, SPEC, jax.random.key(0))
    return config, learner, perturbed(params, 0.1)


def test_metaemb_generates_a_cold_items_embedding_from_its_features_alone():
    from jaxrec.models.item_warmup import MetaEmb

    config, learner, params = metaemb_learner()
    assert (config.meta.inner_solver, config.meta.task_item_dropout) == ("sgd", 1.0)
    model = learner.model
    _, query = one_task(key=7, query=6)
    cold = {**query, "item": np.zeros(6, np.int32)}
    generate = jax.jit(lambda r: model.apply(params, r, method=MetaEmb.generated_embedding))
    base = np.asarray(generate(cold))
    # other users, other ids: the same embedding; other item features: another one
    moved_users = {**cold, "user": (cold["user"] + 3) % 12, "user_gender": (cold["user_gender"] + 1) % 3}
    np.testing.assert_allclose(generate(moved_users), base, rtol=1e-6)
    np.testing.assert_allclose(generate({**cold, "item": np.full(6, 13, np.int32)}), base, rtol=1e-6)
    assert np.max(np.abs(np.asarray(generate({**cold, "item_year": (cold["item_year"] + 1) % 5})) - base)) > 1e-4
    # scoring: an unknown (OOV) item reads the generated embedding, a known one its own id embedding
    p = params["params"]
    rows_embedding = jax.jit(lambda r: model.apply(params, r, method=MetaEmb.item_id_embedding))
    np.testing.assert_allclose(rows_embedding(cold), base + p["context_delta"], rtol=1e-5, atol=1e-6)
    known = {**query, "item": np.full(6, 5, np.int32)}
    np.testing.assert_allclose(rows_embedding(known), np.tile(p["embed_item"]["embedding"][5], (6, 1)), rtol=1e-6)
    # the meta-objective weighs the cold-start loss (context_delta at 0) and the warm-up loss by alpha = 0.1
    loss = jaxrec.mse_loss(model.apply, "rating")
    mask = np.ones(6, bool)
    zero = {"params": {**p, "context_delta": jnp.zeros(3)}}
    expected = 0.1 * loss(zero, cold, mask) + 0.9 * loss(params, cold, mask)
    np.testing.assert_allclose(model.query_loss(loss)(params, cold, mask), expected, rtol=1e-6)
    bare = jaxrec.FeatureSpec({"user": 4, "item": 4}, rating_range=(1.0, 5.0))
    with pytest.raises(ValueError, match="side features"):
        models.init_params(MetaEmb(bare), bare, jax.random.key(0))


def test_metaemb_meta_gradient_through_the_warm_up_step_is_exact(float64):
    _, learner, params = metaemb_learner()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    batch = synthetic_task_batch(SPEC, tasks=3, support=5, query=4, key=jax.random.key(9))
    batch = float64_rows(batch)
    cold = lambda side: {**side, "item": np.zeros_like(side["item"])}  # noqa: E731
    batch = batch.replace(support=cold(batch.support), query=cold(batch.query))

    def meta(p, order="second"):
        return jaxrec.meta_loss(p, batch, learner.inner.replace(order=order), inner_lr=0.1)

    grad = ravel_pytree(jax.jit(jax.grad(meta))(params))[0]
    np.testing.assert_allclose(grad, central_differences(jax.jit(meta), params), rtol=1e-6, atol=1e-8)
    # first order drops the step's dependence on the generator: a different, cheaper gradient
    first = ravel_pytree(jax.jit(jax.grad(lambda p: meta(p, "first")))(params))[0]
    assert np.max(np.abs(first - grad)) > 1e-6 * np.max(np.abs(grad))
