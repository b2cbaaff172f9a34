"""The literature's methods as recipes (``jaxrec.methods``): each recipe builds what its paper defines, on the
library's compiled path, and its meta-gradient is exact."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_support import write_plays
from jax.flatten_util import ravel_pytree
from small_melu import SPEC

import jaxrec
from jaxrec import cli, methods, models
from jaxrec.core.params import path_names
from jaxrec.experiment import ExperimentConfig
from jaxrec.experiment.config import resolve
from jaxrec.experiment.protocol import Learner
from jaxrec.testing import central_differences, perturbed, synthetic_task_batch


def melu_learner(local_steps, order="second", inner_lr=None):
    fields = methods.melu(local_steps=local_steps, order=order)
    fields["model_kwargs"] = {**fields["model_kwargs"], "embed": 3, "hidden": [4, 3]}  # small enough for FD
    if inner_lr is not None:
        fields["inner_lr"] = inner_lr
    config = resolve(ExperimentConfig.make(**fields))
    learner = Learner.build(config, SPEC)
    params = models.init_params(learner.model, SPEC, jax.random.key(0))
    return config, learner, perturbed(params, 0.05, dtype=jnp.float64)  # every ReLU off its kink


def float64_batch(batch):
    def cast(v):
        v = np.asarray(v)
        return v.astype(np.float64) if v.dtype.kind == "f" else v

    return batch.replace(support=jax.tree.map(cast, batch.support), query=jax.tree.map(cast, batch.query))


def test_melu_recipe_is_the_published_configuration():
    config = ExperimentConfig.make(**methods.recipe("melu-5"))
    assert (config.model.name, config.meta.algorithm, config.meta.order) == ("melu", "maml", "second")
    assert (config.meta.inner_steps, config.meta.inner_lr, config.meta.meta_lr) == (5, 5e-6, 5e-5)
    assert config.model.kwargs["use_ids"] == [] and config.model.kwargs["hidden"] == [64, 64]
    assert ExperimentConfig.make(**methods.recipe("melu-1")).meta.inner_steps == 1
    with pytest.raises(ValueError, match="melu-1"):
        methods.recipe("melu-3")
    with pytest.raises(ValueError, match="local update"):
        methods.melu(local_steps=0)


def test_melu_averages_a_multi_valued_field_as_the_released_code_does():
    """A film of three genres is embedded as the mean of its genres' embeddings (the released code divides the
    field by its count), so the field's scale does not grow with the number of genres; the sum stays available."""
    genres = np.eye(5)[[0, 2, 3]]  # three single-genre rows
    three = genres.sum(axis=0, keepdims=True)
    layer = models.common.MultiHotEmbed(4, mean=True)
    params = layer.init(jax.random.key(0), three)
    singles = layer.apply(params, genres)
    np.testing.assert_allclose(layer.apply(params, three), singles.mean(axis=0, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(layer.apply(params, np.zeros((1, 5))), 0.0)  # no genre: no division by zero
    half = jax.tree.map(lambda v: v.astype(jnp.float16), params)  # nor in half precision, where 1e-12 is 0
    np.testing.assert_array_equal(layer.apply(half, np.zeros((1, 5), np.float16)), 0.0)
    summed = models.common.MultiHotEmbed(4).apply(params, three)
    np.testing.assert_allclose(summed, singles.sum(axis=0, keepdims=True), rtol=1e-6)
    fields = methods.recipe("melu-5")
    assert fields["model_kwargs"]["multi_hot"] == "mean" and fields["epochs"] == 20  # the released configuration
    with pytest.raises(ValueError, match="multi_hot"):
        models.init_params(models.MeLU(SPEC, multi_hot="max"), SPEC, jax.random.key(0))


def test_melus_local_update_moves_only_the_decision_layers_by_one_gradient_step(float64):
    """MeLU-1: theta2_u = theta2 - alpha grad_theta2 L_S, the embeddings (theta1) untouched, no user or item id."""
    config, learner, params = melu_learner(1, inner_lr=0.3)
    batch = float64_batch(synthetic_task_batch(SPEC, tasks=1, support=6, query=4, key=jax.random.key(1)))
    support = jax.tree.map(lambda v: v[0], batch.support)
    mask = batch.support_mask[0]
    adapted = jaxrec.adapt(params, support, mask, learner.inner, inner_lr=config.meta.inner_lr)
    grads = jax.grad(learner.inner.loss_fn)(params, jaxrec.zero_padding(support, mask), mask)
    names = []
    for (path, new), old, g in zip(
        jax.tree_util.tree_flatten_with_path(adapted)[0], jax.tree.leaves(params), jax.tree.leaves(grads), strict=True
    ):
        names.append("/".join(path_names(path)))
        want = old - 0.3 * g if "head" in path_names(path) else old
        np.testing.assert_allclose(new, want, rtol=1e-12, atol=1e-14, err_msg=names[-1])
    assert any("head" in n for n in names) and not any(n.startswith("params/embed_user/") for n in names)
    assert not any(n.startswith(("params/embed_item/", "params/bias_embed_item")) for n in names)


@pytest.mark.parametrize("order", ["second", "first"])
def test_melu_meta_gradient_is_exact_and_first_order_drops_the_hessian_term(float64, order):
    """MeLU-2's meta-gradient against central finite differences of its meta-loss (second order), and first order
    measurably different (a local rate large enough for the Hessian term to matter)."""
    config, learner, params = melu_learner(2, order=order, inner_lr=0.5)
    batch = float64_batch(synthetic_task_batch(SPEC, tasks=3, support=6, query=5, key=jax.random.key(2)))
    second = learner.inner.replace(order="second")

    def meta(p, inner):
        return jaxrec.meta_loss(p, batch, inner, inner_lr=config.meta.inner_lr)

    grad = ravel_pytree(jax.jit(jax.grad(lambda p: meta(p, learner.inner)))(params))[0]
    fd = central_differences(jax.jit(lambda p: meta(p, second)), params)
    if order == "second":
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    else:
        assert np.max(np.abs(grad - fd)) > 1e-4


def test_train_with_a_method_records_its_configuration(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    out = tmp_path / "run"
    argv = ["train", "--method", "melu-1", "--epochs", "1", "--steps", "2", "--baselines", "none", "--out", str(out)]
    assert cli.main(argv) == 0, lines
    config = ExperimentConfig.from_dict(json.loads((out / "metrics.json").read_text())["config"])
    assert (config.model.name, config.meta.inner_steps, config.meta.inner_lr) == ("melu", 1, 5e-6)
    assert config.meta.epochs == 1  # a flag over the recipe


def test_a_method_and_a_config_file_together_are_one_clear_error(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text('{"epochs": 1}')
    assert cli.main(["train", "--method", "melu-1", "--config", str(config), "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "--method" in err and "--config" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("file", "confidence"), [("twotower_als_exact_recency.json", 10.0), ("twotower_als_exact_c1_recency.json", 1.0)]
)
def test_the_top_n_recipe_is_the_configuration_the_results_report(file, confidence):
    reported = json.loads((Path(__file__).parents[1] / "benchmarks" / "configs" / "topn" / file).read_text())
    reported.pop("positive_threshold")  # MovieLens's "liked": the log's, not the recipe's
    recipe = ExperimentConfig.make(**methods.twotower_als(confidence=confidence))
    assert recipe.to_dict() == ExperimentConfig.make(**reported).to_dict()
    with pytest.raises(ValueError, match="als_confidence must be"):
        ExperimentConfig.make(**methods.twotower_als(confidence=-1.0))


def test_train_a_click_log_with_the_top_n_recipe(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    data, out = write_plays(tmp_path / "plays.tsv"), tmp_path / "run"
    argv = ["train", "--data", str(data), "--columns", "user,item,weight,timestamp", "--method", "twotower-als"]
    argv += ["--model-kwargs", '{"embed": 8}', "--shots", "3", "--epochs", "2", "--topn-baselines", "popular"]
    argv += ["--bootstrap", "20", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0, lines
    assert not any("field defaults" in line for line in lines)
    document = json.loads((out / "metrics.json").read_text())
    config = ExperimentConfig.from_dict(document["config"])
    assert (config.data.feedback, config.model.name, config.topn.ranking_loss) == ("implicit", "twotower", "als_exact")
    assert (config.topn.item_start, config.meta.epochs, config.model.kwargs["embed"]) == ("als", 2, 8)
    new_users = document["scenarios"]["new_user"]
    # two tastes of songs: the fold-in of three plays ranks the user's taste above what everyone plays
    assert new_users["maml"]["recall@20"] > new_users["popular"]["recall@20"]
