"""MAMO (``jaxrec.methods.mamo``, :class:`jaxrec.models.MAMO`): each user reads a personalised initialisation from
memories keyed by their profile; after each meta-step the memories are written from the batch's adapted users by
the paper's moving averages; the meta-gradient through the local update is exact in float64."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA
from jax.flatten_util import ravel_pytree
from small_melu import SPEC

import jaxrec
from jaxrec import cli, methods, models
from jaxrec.experiment import Experiment, ExperimentConfig
from jaxrec.experiment.config import resolve
from jaxrec.experiment.protocol import Learner, meta_optimizer
from jaxrec.models.mamo import FROZEN, MAMO, USER_NETWORK
from jaxrec.testing import central_differences, float64_rows, perturbed, synthetic_task_batch

SMALL = {"width": 3}


def mamo_learner(order="first", **small):
    fields = methods.mamo(order=order)
    fields["model_kwargs"] = {**fields["model_kwargs"], **SMALL, **small}
    config = resolve(ExperimentConfig.make(**fields))
    learner = Learner.build(config, SPEC)
    params = models.init_params(learner.model, SPEC, jax.random.key(0))
    # a written memory layer is not zero; and every unit off its kink for the finite differences
    return config, learner, perturbed(params, 0.1)


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def hand_scores(model, params, rows):
    """The paper's forward pass written out for one user's rows, weights formed explicitly."""
    v = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    p = np.asarray(model.apply(params, rows, method=MAMO.profile), np.float64)[0]  # every row: the same user
    cos = v["memory_profile"] @ p / (np.linalg.norm(v["memory_profile"], axis=1) * np.linalg.norm(p))
    a = np.exp(cos) / np.sum(np.exp(cos))
    user = {name: v[name] - model.tau * np.tensordot(a, v[f"memory_fast_{name}"], 1) for name in USER_NETWORK}
    e_u = leaky(leaky(p @ user["user_kernel_0"] + user["user_bias_0"]) @ user["user_kernel_1"] + user["user_bias_1"])
    year = v["embed_item_year"]["embedding"][np.asarray(rows["item_year"])]
    e_i = np.concatenate([year, np.asarray(rows["item_genres"], np.float64) @ v["dense_item_genres"]["kernel"]], 1)
    for layer in ("item_tower_0", "item_tower_1"):
        e_i = leaky(e_i @ v[layer]["kernel"] + v[layer]["bias"])
    x = np.concatenate([np.broadcast_to(e_u, (len(e_i), e_u.size)), e_i], 1)
    memory_layer = v["preference"] + np.tensordot(a, v["memory_preference"], 1)
    h = leaky((x @ memory_layer + v["preference_bias"]) @ v["rec_hidden"]["kernel"] + v["rec_hidden"]["bias"])
    return (h @ v["rec_output"]["kernel"] + v["rec_output"]["bias"])[:, 0], a


def test_recipe_freezes_the_memories_and_refuses_what_the_write_cannot_serve():
    config = resolve(ExperimentConfig.make(**methods.recipe("mamo")))
    assert (config.model.name, config.meta.order, config.meta.inner_steps) == ("mamo", "first", 3)
    assert config.meta.frozen == FROZEN and config.meta.adapt == "default"
    assert resolve(ExperimentConfig.make(**methods.recipe("mamo-2"))).meta.order == "second"
    # a frozen pattern of the user's own is kept beside the memories'
    config = resolve(ExperimentConfig.make(**{**methods.mamo(), "frozen": "embed_"}))
    assert config.meta.frozen == f"embed_|{FROZEN}"
    for bad in ({"algorithm": "reptile"}, {"algorithm": "metasgd"}, {"feedback": "implicit"}, {"groups": 2}):
        with pytest.raises(ValueError, match="writes its memories"):
            resolve(ExperimentConfig.make(**{**methods.mamo(), **bad}))
    with pytest.raises(ValueError, match="item side features"):
        models.init_params(MAMO(jaxrec.FeatureSpec({"user": 3, "item": 4, "user_gender": 2})), SPEC, jax.random.key(0))


def test_the_read_is_the_personalised_initialisation_of_the_paper():
    _, learner, params = mamo_learner()
    batch = synthetic_task_batch(SPEC, tasks=3, support=4, query=5, key=jax.random.key(2), padded=False)
    attentions = []
    for t in range(3):
        rows = jax.tree.map(lambda x, t=t: x[t], batch.query)
        scores = np.asarray(learner.model.apply(params, rows))
        expected, a = hand_scores(learner.model, params, rows)
        np.testing.assert_allclose(scores, expected, rtol=2e-5, atol=2e-5)
        attentions.append(a)
    # users of different profiles read different mixtures of the slots; each a distribution
    np.testing.assert_allclose(np.sum(attentions, axis=1), 1.0, rtol=1e-6)
    assert np.max(np.abs(attentions[0] - attentions[1])) > 1e-3


def test_the_local_update_moves_the_networks_and_the_memory_layer_not_the_embeddings_or_memories():
    config, learner, params = mamo_learner()
    mask = models.adapt_mask(params, learner.inner.adapt_filter)
    for path, adapted in jax.tree_util.tree_flatten_with_path(mask)[0]:
        name = models.path_names(path)[1]
        local = name.startswith(("user_kernel", "user_bias", "item_tower", "rec_", "preference"))
        assert adapted == local, name
    # the outer optimiser never moves a memory or the memory layer's per-user start
    tx = meta_optimizer(config)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name = models.path_names(path)[1]
        frozen = name.startswith("memory_") or name == "preference"
        assert (np.max(np.abs(update)) == 0) == frozen, name


def test_the_write_is_the_papers_moving_average_over_the_batchs_adapted_users(float64):
    _, learner, params = mamo_learner()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    model, inner, lr = learner.model, learner.inner, 0.05
    batch = synthetic_task_batch(SPEC, tasks=4, support=5, query=4, key=jax.random.key(5))
    # task 3 is padding (no query row): it writes nothing
    batch = batch.replace(query_mask=batch.query_mask.at[3].set(False))
    write = jax.jit(lambda p, b: model.memory_write(inner)(p, p, b, lr))
    written = write(params, batch)["params"]

    # the same, task by task (jitted only to spare op-by-op dispatch its compilations)
    adapt = jax.jit(lambda p, rows, mask: jaxrec.adapt(p, rows, mask, inner, inner_lr=lr))
    query_grad = jax.jit(lambda phi, rows, mask: jax.grad(inner.loss_fn)(phi, jaxrec.zero_padding(rows, mask), mask))
    profile = jax.jit(lambda p, rows: model.apply(p, rows, method=MAMO.profile))
    old = jax.device_get(params["params"])
    host = jax.device_get(batch)
    targets = {"memory_profile": 0.0, "memory_preference": 0.0, **{f"memory_fast_{n}": 0.0 for n in USER_NETWORK}}
    for t in range(3):
        take = lambda tree, t=t: {k: v[t] for k, v in tree.items()}  # noqa: E731
        support, smask, query, qmask = take(host.support), host.support_mask[t], take(host.query), host.query_mask[t]
        phi = adapt(params, support, smask)
        p = np.asarray(profile(params, support))[0]
        cos = old["memory_profile"] @ p / (np.linalg.norm(old["memory_profile"], axis=1) * np.linalg.norm(p))
        a = np.exp(cos) / np.sum(np.exp(cos))
        grads = query_grad(phi, query, qmask)["params"]
        values = {
            "memory_profile": p,
            "memory_preference": phi["params"]["preference"] + np.tensordot(a, old["memory_preference"], 1),
            **{f"memory_fast_{n}": grads[n] for n in USER_NETWORK},
        }
        for name, value in values.items():
            targets[name] = targets[name] + np.multiply.outer(a, np.asarray(value)) / 3
    rates = {"memory_profile": model.profile_rate, "memory_preference": model.preference_rate}
    for name, target in targets.items():
        rate = rates.get(name, model.fast_rate)
        np.testing.assert_allclose(written[name], rate * target + (1 - rate) * old[name], rtol=1e-10, atol=1e-12)
    for name in old:  # nothing else is written
        if not name.startswith("memory_"):
            jax.tree.map(np.testing.assert_array_equal, written[name], old[name])
    # a batch of padding tasks only leaves every memory as it was
    empty = batch.replace(query_mask=jnp.zeros_like(batch.query_mask))
    unchanged = write(params, empty)
    jax.tree.map(np.testing.assert_array_equal, unchanged, params)


@pytest.mark.parametrize("order", ["second", "first"])
def test_the_meta_gradient_through_the_read_and_the_local_update_is_exact(float64, order):
    _, learner, params = mamo_learner(order="second")
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    batch = synthetic_task_batch(SPEC, tasks=2, support=4, query=3, key=jax.random.key(3))
    batch = float64_rows(batch)

    def meta(p, order="second"):
        return jaxrec.meta_loss(p, batch, learner.inner.replace(order=order), inner_lr=0.3)

    grad = ravel_pytree(jax.jit(jax.grad(lambda p: meta(p, order)))(params))[0]
    if order == "second":
        fd = central_differences(jax.jit(meta), params)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    else:  # first order drops the local update's Hessian terms: a different vector
        second = ravel_pytree(jax.jit(jax.grad(meta))(params))[0]
        assert np.max(np.abs(grad - second)) > 1e-4 * np.max(np.abs(second))


def test_meta_training_writes_the_memories_and_keeps_the_frozen_leaves():
    _, learner, params = mamo_learner()
    state = learner.trainer.init(params)
    batch = synthetic_task_batch(SPEC, tasks=4, support=5, query=4, key=jax.random.key(7))
    for _ in range(2):
        state, metrics = learner.trainer.step(state, batch)
    assert bool(metrics["finite"]) and learner.trainer.traces == 1
    new = state.params["params"]
    for name, old in params["params"].items():
        moved = any(
            np.max(np.abs(a - b)) > 0 for a, b in zip(jax.tree.leaves(new[name]), jax.tree.leaves(old), strict=True)
        )
        assert moved != (name == "preference"), name  # the memories by their writes, the networks by Adam


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k").is_dir(), reason=f"ml-100k not found under {SHARED_DATA}")
def test_mamo_on_ml100k_reads_user_profiles_and_scores_new_users():
    """With demographics, different new users read different memory mixtures, and the run is scored."""
    fields = {**methods.mamo(), "model_kwargs": {**methods.mamo()["model_kwargs"], "width": 8}, "epochs": 1}
    config = ExperimentConfig.make(
        **fields, dataset="ml-100k", data_dir=str(SHARED_DATA), baselines=(), bootstrap=10, seed=0
    )
    experiment = Experiment(config)
    params = experiment.train(steps=4).params
    batch = next(iter(experiment.batches(0)))
    profiles = jax.vmap(lambda r, m: experiment.model.apply(params, r, m, method=MAMO.task_profile))(
        batch.support, batch.support_mask
    )
    a = np.asarray(experiment.model.apply(params, profiles, method=MAMO.attention))
    assert np.ptp(a, axis=0).max() > 1e-3, a
    assert np.isfinite(experiment.evaluate(params)["new_user"]["maml"]["mae"])


def test_train_mamo_from_the_command_line(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    out = tmp_path / "run"
    argv = ["train", "--method", "mamo", "--model-kwargs", '{"width": 8}', "--epochs", "1", "--steps", "2"]
    assert cli.main(argv + ["--baselines", "none", "--out", str(out)]) == 0, lines
    metrics = json.loads((out / "metrics.json").read_text())
    config = ExperimentConfig.from_dict(metrics["config"])
    assert (config.model.name, config.meta.frozen) == ("mamo", FROZEN)
    assert np.isfinite(metrics["scenarios"]["new_user"]["maml"]["mae"])
    # a new user's few ratings -> their top items, from the checkpoint (the memories travel in the params)
    mine = tmp_path / "mine.csv"
    mine.write_text("item,rating\n1,5\n50,4\n260,5\n")
    lines.clear()
    assert cli.main(["recommend", "--checkpoint", str(out), "--ratings", str(mine), "-k", "5"]) == 0, lines
    assert sum("(item " in line for line in lines) == 5, lines


def test_a_log_without_item_features_is_a_clear_error_naming_the_fix(tmp_path, capsys):
    log = tmp_path / "log.csv"
    rng = np.random.default_rng(0)
    rows = [f"u{u},it{i},{rng.integers(1, 6)}" for u in range(60) for i in rng.choice(40, 20, replace=False)]
    log.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    argv = ["train", "--data", str(log), "--columns", "user,item,rating", "--method", "mamo", "--steps", "1"]
    assert cli.main(argv + ["--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "model 'mamo' cannot read" in err and "use_ids" in err and "unexpected" not in err
