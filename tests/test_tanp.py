"""TaNP (``jaxrec.methods.tanp``, :class:`jaxrec.models.TaNP`): adaptation is an encoding of the support set,
invariant to its order and padding, read only from the support (never the query's targets); the neural-process
bound pools the context and target sets as the paper writes it; the meta-gradient through the encoder is exact."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from small_melu import SPEC

import jaxrec
from jaxrec import cli, methods, models
from jaxrec.evaluation.predict import meta_predict
from jaxrec.experiment import ExperimentConfig
from jaxrec.experiment.config import resolve
from jaxrec.experiment.protocol import Learner
from jaxrec.models.tanp import TaNP
from jaxrec.testing import central_differences, float64_rows, perturbed, synthetic_task_batch

SMALL = {"width": 3, "encoder": [4, 3], "latent_hidden": 3, "latent": 2, "task_encoder": [3, 2], "clusters": 3}


def tanp_learner(order="second", **small):
    fields = methods.tanp()
    fields["model_kwargs"] = {**fields["model_kwargs"], **SMALL, **small}
    fields["order"] = order
    config = resolve(ExperimentConfig.make(**fields))
    learner = Learner.build(config, SPEC)
    params = models.init_params(learner.model, SPEC, jax.random.key(0))
    return config, learner, perturbed(params, 0.1)  # every ReLU off its kink


def one_task(key=1, support=6, query=4):
    batch = synthetic_task_batch(SPEC, tasks=1, support=support, query=query, key=jax.random.key(key), padded=False)
    take = lambda tree: jax.tree.map(lambda v: np.asarray(v[0]), tree)  # noqa: E731
    return take(batch.support), take(batch.query)


def rows_at(rows, index):
    return {k: v[np.asarray(index)] for k, v in rows.items()}


_ADAPT = {}  # learner.inner -> its jitted adaptation


def context(learner, params, rows, mask):
    # jitted (compiled once per shape): op-by-op dispatch of a flax model is most of these tests' time otherwise
    inner = learner.inner
    if inner not in _ADAPT:
        _ADAPT[inner] = jax.jit(lambda p, r, m: jaxrec.adapt(p, r, m, inner, inner_lr=None))  # no step size
    return _ADAPT[inner](params, rows, mask)


def test_recipe_resolves_to_the_encoder_and_refuses_a_gradient_inner_loop():
    config = resolve(ExperimentConfig.make(**methods.recipe("tanp")))
    assert (config.model.name, config.meta.inner_solver, config.meta.inner_steps) == ("tanp", "encode", 1)
    assert config.model.kwargs["clusters"] == 10 and config.meta.meta_lr == 1e-4
    with pytest.raises(ValueError, match="encoding the support set"):
        resolve(ExperimentConfig.make(**{**methods.tanp(), "inner_solver": "sgd"}))
    with pytest.raises(ValueError, match="encoding the support set"):
        resolve(ExperimentConfig.make(**{**methods.tanp(), "adapt": "all"}))
    with pytest.raises(ValueError, match="algorithm='maml'"):
        resolve(ExperimentConfig.make(**{**methods.tanp(), "algorithm": "reptile"}))
    with pytest.raises(ValueError, match="inner_steps 1"):
        resolve(ExperimentConfig.make(**{**methods.tanp(), "inner_steps": 5}))
    with pytest.raises(ValueError, match="implicit"):
        resolve(ExperimentConfig.make(**{**methods.tanp(), "feedback": "implicit"}))
    with pytest.raises(ValueError, match="encodes a support set"):
        resolve(ExperimentConfig.make(model="melu", inner_solver="encode"))


def test_x_is_each_sides_layers_over_its_summed_fields_as_released(float64):
    """The released code forms x from a user MLP and an item MLP over each side's one-hot features: a linear map of
    one-hot fields (one embedding per field, summed, plus a bias), ReLU, a dense layer of 16, ReLU."""
    _, learner, params = tanp_learner()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    support, _ = one_task(support=5)
    x = learner.model.apply(params, support, method=TaNP.features)
    assert x.shape == (5, 32) and x.dtype == jnp.float64
    p = params["params"]
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731

    def side(name, embedded):
        layers = p[f"side_{name}"]
        hidden = relu(sum(embedded) + layers["bias"])
        return relu(hidden @ layers["layer_0"]["kernel"] + layers["layer_0"]["bias"])

    embed = lambda key: np.asarray(p[f"embed_{key}"]["embedding"])[support[key]]  # noqa: E731
    user = side("user", [embed("user_gender"), embed("user_zip")])
    genres = support["item_genres"] @ np.asarray(p["dense_item_genres"]["kernel"])
    item = side("item", [embed("item_year"), genres])
    np.testing.assert_allclose(x, np.concatenate([user, item], axis=-1), rtol=1e-12)
    # the user's fields move the first half only, the item's the second
    other = dict(support, user_zip=(support["user_zip"] + 1) % 30)
    moved = np.asarray(learner.model.apply(params, other, method=TaNP.features)) != np.asarray(x)
    assert moved[:, :16].any() and not moved[:, 16:].any()


def test_the_encoding_is_the_mean_of_each_rows_code_and_their_count():
    _, learner, params = tanp_learner()
    support, _ = one_task(support=5)
    encode = jax.jit(lambda m: learner.model.apply(params, support, m, method=TaNP.encode_support))
    singles = [encode(np.arange(5) == i) for i in range(5)]
    whole = encode(np.ones(5, bool))
    for leaf in ("context_r", "context_t"):
        np.testing.assert_allclose(whole[leaf], np.mean([s[leaf] for s in singles], axis=0), rtol=1e-5, atol=1e-6)
    assert float(whole["context_n"]) == 5.0 and all(float(s["context_n"]) == 1.0 for s in singles)
    empty = encode(np.zeros(5, bool))
    assert all(np.all(np.asarray(v) == 0) for v in empty.values())  # the prior: the leaves a model starts with


def test_adaptation_is_invariant_to_the_order_and_the_padding_of_the_support_set():
    _, learner, params = tanp_learner()
    support, query = one_task(support=6)
    mask = np.ones(6, bool)
    adapted = context(learner, params, support, mask)
    permuted = context(learner, params, rows_at(support, [4, 2, 0, 5, 1, 3]), mask)
    # padding: two rows of junk appended and masked out
    padded_rows = {k: np.concatenate([v, v[:2] * 3 + 1]) for k, v in support.items()}
    padded = context(learner, params, padded_rows, np.r_[mask, False, False])
    score = jax.jit(learner.model.apply)
    scores = [score(p, query) for p in (adapted, permuted, padded)]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores[2], scores[0], rtol=1e-5, atol=1e-6)
    # and the support set matters: another user's support moves the scores
    other, _ = one_task(key=9, support=6)
    moved = score(context(learner, params, other, mask), query)
    assert np.max(np.abs(np.asarray(moved) - np.asarray(scores[0]))) > 1e-3
    # only the context leaves change
    for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(adapted)[0], jax.tree.leaves(params), strict=True):
        if "context_" not in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(new, old)


def test_evaluation_reads_the_support_targets_and_never_the_query_targets():
    """The path every scenario is scored by (``meta_predict``: adapt on the support, score the query)."""
    _, learner, params = tanp_learner()
    batch = synthetic_task_batch(SPEC, tasks=3, support=6, query=4, key=jax.random.key(4))
    state = (params, None)
    predict = jax.jit(lambda st, b: meta_predict(st, b, learner.inner, apply_fn=learner.model.apply))

    def scores(b):
        return np.asarray(predict(state, b))

    base = scores(batch)
    flipped_query = batch.replace(query={**batch.query, "rating": 6.0 - np.asarray(batch.query["rating"])})
    np.testing.assert_array_equal(scores(flipped_query), base)
    flipped_support = batch.replace(support={**batch.support, "rating": 6.0 - np.asarray(batch.support["rating"])})
    assert np.max(np.abs(scores(flipped_support) - base)) > 1e-4


def test_the_query_loss_is_the_neural_process_bound_on_the_pooled_context_and_target(float64):
    config, learner, params = tanp_learner()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    support, query = one_task(support=5, query=3)
    c_mask, t_mask = np.ones(5, bool), np.ones(3, bool)
    adapted = context(learner, params, support, c_mask)
    query_loss = jax.jit(learner.inner.query_loss_fn)
    got = query_loss(adapted, query, t_mask)
    # by hand: z's Gaussian from C, and from C u T encoded as one set
    union = {k: np.concatenate([support[k], query[k]]) for k in support}
    pooled = learner.model.apply(params, union, np.ones(8, bool), method=TaNP.encode_support)["context_r"]
    gaussian = jax.jit(lambda r: learner.model.apply(params, r, method=TaNP.gaussian))
    mu0, v0 = map(np.asarray, gaussian(adapted["params"]["context_r"]))
    mu1, v1 = map(np.asarray, gaussian(pooled))
    var0, var1 = np.exp(v0), np.exp(v1)
    kl = np.sum(np.log(np.sqrt(var0 / var1)) + (var1 + (mu1 - mu0) ** 2) / (2 * var0) - 0.5)
    decoded = {**adapted, "params": {**adapted["params"], "context_r": pooled}}
    mse = np.mean((np.asarray(jax.jit(learner.model.apply)(decoded, query)) - query["rating"]) ** 2)
    np.testing.assert_allclose(got, mse + kl, rtol=1e-10)
    assert kl > 1e-6
    # with an empty target set the two Gaussians are one: no KL, no reconstruction
    np.testing.assert_allclose(query_loss(adapted, query, np.zeros(3, bool)), 0.0, atol=1e-12)


def test_the_latent_spread_is_bounded_so_the_kl_cannot_be_inflated_away():
    """Only the mean of z is decoded: an unbounded variance would let training shrink the KL to 0 by growing it."""
    _, learner, params = tanp_learner()
    gaussian = jax.jit(lambda r: learner.model.apply(params, r, method=TaNP.gaussian))
    width = params["params"]["context_r"].shape[0]
    for r in (jnp.full((width,), 1e4), jnp.full((width,), -1e4), jnp.zeros(width)):
        _, logvar = gaussian(r)
        sigma = np.exp(np.asarray(logvar) / 2)
        assert np.all(sigma >= 0.1 - 1e-6) and np.all(sigma <= 1.0 + 1e-6)


def test_the_task_code_is_a_distribution_over_the_centres_with_a_gradient_at_a_centre(float64):
    _, learner, params = tanp_learner()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    centre = params["params"]["centres"][1]
    code = lambda t: learner.model.apply(params, t, method=TaNP.task_code)  # noqa: E731
    assignment, _ = code(centre + 0.3)
    np.testing.assert_allclose(jnp.sum(assignment), 1.0, rtol=1e-12)
    assert np.all(np.asarray(assignment) > 0)
    at_centre, _ = code(centre)
    assert int(jnp.argmax(at_centre)) == 1  # the nearest centre gets the most weight
    grad = jax.grad(lambda t: jnp.sum(code(t)[1]))(centre)
    assert np.all(np.isfinite(grad))


def test_the_meta_gradient_through_the_encoder_is_exact_and_the_same_in_both_orders(float64):
    """No inner gradient to drop: first order's meta-gradient is second order's, and both match central
    differences."""
    _, learner, params = tanp_learner(order="second")
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    batch = synthetic_task_batch(SPEC, tasks=3, support=5, query=4, key=jax.random.key(3))
    batch = float64_rows(batch)

    def meta(p, order="second"):
        return jaxrec.meta_loss(p, batch, learner.inner.replace(order=order))

    grad = ravel_pytree(jax.jit(jax.grad(meta))(params))[0]
    first = ravel_pytree(jax.jit(jax.grad(lambda p: meta(p, "first")))(params))[0]
    np.testing.assert_allclose(first, grad, rtol=1e-12, atol=1e-14)
    fd = central_differences(jax.jit(meta), params)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # every meta-parameter that scores or encodes gets a gradient (the context leaves are overwritten: none)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    sizes = [np.size(v) for v in jax.tree.leaves(params)]
    offsets = np.cumsum([0] + sizes)
    for name, start, stop in zip(names, offsets[:-1], offsets[1:], strict=True):
        moved = np.max(np.abs(grad[start:stop])) > 0
        assert moved != ("context_" in name), name


def test_train_tanp_from_the_command_line(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    out = tmp_path / "run"
    argv = ["train", "--method", "tanp", "--epochs", "1", "--steps", "2", "--baselines", "none", "--out", str(out)]
    assert cli.main(argv) == 0, lines
    metrics = json.loads((out / "metrics.json").read_text())
    config = ExperimentConfig.from_dict(metrics["config"])
    assert (config.model.name, config.meta.inner_solver) == ("tanp", "encode")
    assert np.isfinite(metrics["scenarios"]["new_user"]["maml"]["mae"])
