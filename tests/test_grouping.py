"""Grouped initialisations (jaxrec.contrib.grouping): each task's choice, and the exact meta-gradient given the
choices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from test_meta_gradients import INNER_LR, apply_fn, hand_written_maml_grad, init_params, loss_fn, make_batch, task

import jaxrec
from jaxrec.contrib.grouping import GroupedParams, choose_group, group_params
from jaxrec.evaluation.predict import meta_predict

GROUPS = 3
OUTPUT = lambda path, leaf: path[0].key in ("w2", "b2")  # noqa: E731  the "head" of the small regressor


def grouped_start(seed=0):
    """Three groups of the output layer with different values (b2 far apart, so tasks really split)."""
    params = init_params(jax.random.key(seed))
    grouped = group_params(params, GROUPS, OUTPUT)
    p = dict(grouped.params)
    p["b2"] = jnp.array([-1.0, 0.1, 1.0])
    p["w2"] = p["w2"] * jnp.array([0.5, 1.0, 1.5])[:, None]
    return grouped.replace(params=p)


@pytest.mark.usefixtures("float64")
def test_group_params_stacks_the_chosen_leaves_and_shares_the_rest():
    params = init_params(jax.random.key(0))
    grouped = group_params(params, GROUPS, OUTPUT)
    assert grouped.num_groups == GROUPS
    assert grouped.params["w2"].shape == (GROUPS, *params["w2"].shape)
    assert grouped.params["w1"] is params["w1"]
    for g in range(GROUPS):
        jax.tree.map(np.testing.assert_array_equal, grouped.pick(g), params)
    with pytest.raises(ValueError, match="no leaf"):
        group_params(params, 2, lambda path, leaf: False)
    with pytest.raises(ValueError, match="groups"):
        group_params(params, 0, OUTPUT)


@pytest.mark.usefixtures("float64")
def test_each_task_chooses_the_group_with_the_lowest_support_loss():
    grouped = grouped_start()
    batch = make_batch(1, tasks=6)
    chosen = []
    for t in range(batch.num_tasks):
        rows, mask = task(batch, t, "support")
        losses = [float(loss_fn(grouped.pick(g), rows, mask)) for g in range(GROUPS)]
        chosen.append(int(choose_group(grouped, rows, mask, loss_fn)))
        assert chosen[-1] == int(np.argmin(losses))
    empty = np.zeros_like(batch.support_mask[0])
    assert int(choose_group(grouped, task(batch, 0, "support")[0], empty, loss_fn)) == GROUPS // 2  # the middle


@pytest.mark.parametrize("order", ["second", "first"])
@pytest.mark.usefixtures("float64")
def test_grouped_meta_gradient_is_each_groups_maml_gradient_over_the_tasks_that_chose_it(order):
    grouped = grouped_start()
    batch = make_batch(2, tasks=8)
    # the batch must exercise at least two groups for the test to mean anything
    choices = np.array(
        [int(choose_group(grouped, *task(batch, t, "support"), loss_fn)) for t in range(batch.num_tasks)]
    )
    assert len(set(choices.tolist())) >= 2
    kwargs = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=3, order=order)
    value, grads = jaxrec.meta_value_and_grad(grouped, batch, **kwargs)
    assert isinstance(grads, GroupedParams)
    weights = np.any(batch.query_mask, axis=1).astype(float)
    expected_value, expected = 0.0, jax.tree.map(np.zeros_like, grouped.params)
    for g in range(GROUPS):
        mine = choices == g
        if not mine.any():
            continue
        sub = jax.tree.map(lambda x, mine=mine: x[mine], batch)  # the tasks that chose g, in a batch of their own
        theta = grouped.pick(g)
        flat = hand_written_maml_grad(theta, sub, 3, first_order=order == "first")
        share = weights[mine].sum() / weights.sum()  # hand_written_maml_grad averages over its own tasks
        _, unravel = ravel_pytree(theta)
        grad_g = {k: share * np.asarray(v) for k, v in unravel(flat).items()}
        for k in expected:  # shared leaves sum every group's tasks; grouped ones get theirs at index g
            expected[k] = expected[k] + (grad_g[k] if k in ("w1", "b1") else _at(g, grad_g[k]))
        expected_value += share * float(jaxrec.meta_loss(theta, sub, **kwargs))
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-10)
    for k in expected:
        np.testing.assert_allclose(np.asarray(grads.params[k]), expected[k], rtol=1e-8, atol=1e-12)
    unchosen = sorted(set(range(GROUPS)) - set(choices.tolist()))
    for g in unchosen:
        assert not np.any(np.asarray(grads.params["w2"][g]))


def _at(g, value):
    """``value`` placed at group ``g`` of a zero ``[G, ...]`` array."""
    out = np.zeros((GROUPS, *np.shape(value)))
    out[g] = value
    return out


@pytest.mark.usefixtures("float64")
def test_grouped_meta_gradient_matches_finite_differences():
    grouped = grouped_start(3)
    batch = make_batch(4, tasks=6)
    kwargs = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=2)
    _, grads = jaxrec.meta_value_and_grad(grouped, batch, **kwargs)
    flat, unravel = ravel_pytree(grouped)
    direction = np.random.default_rng(0).normal(size=flat.shape)
    eps = 1e-6  # small enough that no task changes its group
    f = lambda x: float(jaxrec.meta_loss(unravel(x), batch, **kwargs))  # noqa: E731
    numeric = (f(flat + eps * direction) - f(flat - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(ravel_pytree(grads)[0] @ direction), numeric, rtol=1e-6)


@pytest.mark.usefixtures("float64")
def test_meta_predict_adapts_each_task_from_its_group():
    grouped = grouped_start()
    batch = make_batch(5, tasks=6)
    kwargs = dict(apply_fn=apply_fn, loss_fn=loss_fn, inner_steps=2)
    scores = np.asarray(meta_predict((grouped, jnp.asarray(INNER_LR)), batch, **kwargs))
    for t in range(batch.num_tasks):
        g = int(choose_group(grouped, *task(batch, t, "support"), loss_fn))
        one = jax.tree.map(lambda x, t=t: x[t : t + 1], batch)
        alone = np.asarray(meta_predict((grouped.pick(g), jnp.asarray(INNER_LR)), one, **kwargs))[0]
        np.testing.assert_allclose(scores[t], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("float64")
def test_metasgd_trainer_moves_only_the_groups_its_tasks_chose():
    grouped = grouped_start()
    grouped = grouped.replace(params={**grouped.params, "b2": grouped.params["b2"].at[2].set(100.0)})  # never chosen
    batch = make_batch(6, tasks=4)
    choices = {int(choose_group(grouped, *task(batch, t, "support"), loss_fn)) for t in range(batch.num_tasks)}
    unchosen = sorted(set(range(GROUPS)) - choices)
    assert unchosen, "the test wants a group that no task of the batch chooses"
    trainer = jaxrec.MetaTrainer(
        loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=2, algorithm="metasgd", optimizer=optax.adam(1e-2)
    )
    state = trainer.init(grouped)
    assert isinstance(state.params.inner_lr, GroupedParams)  # one rate per parameter of every group
    before = jax.tree.map(np.asarray, state.params)
    state, _ = trainer.step(state, batch)
    after = state.params
    for g in unchosen:
        np.testing.assert_array_equal(np.asarray(after.params.params["w2"][g]), before.params.params["w2"][g])
        np.testing.assert_array_equal(np.asarray(after.inner_lr.params["b2"][g]), before.inner_lr.params["b2"][g])
    for g in choices:
        assert np.any(np.asarray(after.params.params["w2"][g]) != before.params.params["w2"][g])
    assert np.any(np.asarray(after.params.params["w1"]) != before.params.params["w1"])  # shared: every task


@pytest.mark.usefixtures("float64")
def test_reptile_and_row_sparse_updates_refuse_grouped_params():
    with pytest.raises(ValueError, match="GroupedParams"):
        jaxrec.reptile_direction(grouped_start(), make_batch(0), loss_fn=loss_fn, inner_lr=0.1, inner_steps=1)
    trainer = jaxrec.MetaTrainer(
        loss_fn=loss_fn,
        inner_lr=0.1,
        inner_steps=1,
        sparse_tables={("w1",): "x"},
        sparse_optimizer=jaxrec.row_sparse_sgd(0.1),
    )
    with pytest.raises(ValueError, match="GroupedParams"):
        trainer.init(grouped_start())


def test_experiment_groups_start_apart_train_evaluate_and_checkpoint(tmp_path):
    from jaxrec.experiment import Experiment, ExperimentConfig
    from jaxrec.experiment.checkpoint import CheckpointStore, save_checkpoint

    config = ExperimentConfig.make(
        model_kwargs={"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": None, "item_bias": True},
        adapt="head",  # gradient steps on every decision layer: the hidden layers are grouped too
        inner_solver="sgd",
        inner_steps=1,
        bootstrap=20,
        supervised_epochs=1,
        finetune_lrs=(0.0, 0.1),
        baselines=("bias",),
        groups=3,
    )
    exp = Experiment(config)
    params = exp.init_params()
    assert isinstance(params, GroupedParams) and params.num_groups == 3
    head = params.params["params"]["head"]
    mu, _ = exp.bias_init()
    bias = np.asarray(head["output"]["bias"])[:, 0]
    assert np.all(np.diff(bias) > 0.05) and bias[0] < mu < bias[2]  # user-offset quantiles around mu
    assert not np.any(np.asarray(head["output"]["kernel"]))  # the bias start's zero kernel, in every group
    (hidden,) = [np.asarray(x) for x in jax.tree.leaves(head) if x.ndim == 3 and np.any(x)]  # the hidden kernel
    assert not np.allclose(hidden[0], hidden[1]) and not np.allclose(hidden[1], hidden[2])
    assert params.params["params"]["bias_embed_item"]["embedding"].ndim == 2  # shared, not stacked
    state = exp.train(steps=3)
    assert isinstance(state.params.params, GroupedParams)  # Meta-SGD over grouped params
    scores = exp.evaluate(state.params)
    assert set(scores["new_user"]) == {"maml", "bias"} and np.isfinite(scores["new_user"]["maml"]["mae"])
    save_checkpoint(tmp_path / "ckpt", state, {"config": config.to_dict()})
    with CheckpointStore(tmp_path / "ckpt", create=False) as store:
        restored = store.restore(exp.init_state()).state
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    # adapting every parameter groups the fitted item-bias table too: every group keeps it
    everything = Experiment(config.override(adapt="all")).init_params()
    table = np.asarray(everything.params["params"]["bias_embed_item"]["embedding"])
    assert table.shape[0] == 3 and np.any(table[0]) and all(np.array_equal(table[0], table[g]) for g in (1, 2))
    with pytest.raises(ValueError, match="output/bias"):
        Experiment(
            ExperimentConfig.make(model="mf", model_kwargs={"embed": 4}, adapt="all", groups=2, baselines=())
        ).init_params()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"groups": 2, "algorithm": "reptile"}, "reptile"),
        ({"groups": 0}, "groups"),
        ({"item_dropout": 1.0}, "item_dropout"),
    ],
)
def test_bad_grouping_and_dropout_settings_fail_before_any_data_is_read(overrides, message):
    from jaxrec.experiment import Experiment, ExperimentConfig

    with pytest.raises(ValueError, match=message):
        Experiment(ExperimentConfig.make(dataset="no-such-dataset", **overrides))  # the data would fail later


@pytest.mark.parametrize("groups", [2.5, 0, True, "2"])
def test_a_number_of_groups_that_is_not_a_whole_number_is_refused(groups):
    """``int(2.5)`` made two groups without a word."""
    with pytest.raises(ValueError, match="groups must be a whole number >= 1"):
        group_params(init_params(jax.random.PRNGKey(0)), groups)
