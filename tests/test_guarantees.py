"""Issue 21: two guarantees of the README that no other test pinned down.

1. The non-finite guard looks at the meta-gradient, not only at the meta-loss. A meta-step whose loss is finite
   but whose meta-gradient holds a NaN or an inf (an overflow in the backward pass, an inner step that diverges
   only in its second-order term) never reaches the parameters: the dense and the row-sparse step leave the
   parameters and the optimiser state as they were and count the step (``nonfinite="skip"``), and
   ``nonfinite="raise"`` raises :class:`jaxrec.NonFiniteError`. The other non-finite tests poison a rating, so
   their loss is NaN too and a guard on the loss alone passes them.
2. Every baseline of an experiment starts from the parameters it is named for, through the predictors that
   ``jaxrec train`` evaluates (``Experiment.metrics_document`` -> ``Experiment.evaluate``): ``no_adapt`` is the
   supervised model, ``finetune`` adapts the supervised model (at rate 0 it is ``no_adapt``), and the meta
   method adapts the meta-learned parameters. Otherwise the baseline the main claim is measured against could
   silently become the meta-learner itself.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from small_melu import MODEL, SPEC  # the small MeLU of the local-embedding and row-sparse tests

import jaxrec
from jaxrec.experiment.methods import experiment_predictors

# ================================================================================================================
# 1. a finite meta-loss with a non-finite meta-gradient

BASE_LOSS = jaxrec.default_loss(MODEL)
INNER_LR, INNER_STEPS, OUTER_LR = 0.05, 2, 0.05

# The leaves whose backward pass a batch can poison: an embedding table (fixed in the inner loop; updated
# row-sparsely by the row-sparse step) and the output kernel (adapted in the inner loop, so that its cotangent goes
# back through the second-order term of the inner steps; updated by optax in both steps).
POISONED = {
    "item_table": ("params", "embed_item", "embedding"),
    "output_kernel": ("params", "head", "output", "kernel"),
}
POISON = "grad_poison"  # a row column [..., len(POISONED)]: 0 = clean, otherwise the cotangent of that leaf


@jax.custom_vjp
def poisoned_backward(x, value):
    """The identity in the forward pass; in the backward pass the cotangent of ``x`` becomes ``value`` where
    ``value`` is not 0 (NaN or inf). The forward value, and so the loss, is exactly that of ``x``."""
    return x


def _poisoned_backward_fwd(x, value):
    return x, value


def _poisoned_backward_bwd(value, g):
    return jnp.where(value != 0, jnp.full_like(g, value), g), jnp.zeros_like(value)


poisoned_backward.defvjp(_poisoned_backward_fwd, _poisoned_backward_bwd)


def _set(tree, path, leaf):
    if not path:
        return leaf
    return {**tree, path[0]: _set(tree[path[0]], path[1:], leaf)}


def _get(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def loss_fn(params, rows, mask):
    """The model's loss, with the backward pass of each poisoned leaf set by the rows' ``grad_poison`` column.

    Only the query rows of a poisoned batch carry a non-zero value, so the inner loop (support rows) and every
    forward value are those of the clean model: the meta-loss is finite and the meta-gradient is not."""
    rows = dict(rows)
    poison = rows.pop(POISON)
    for k, path in enumerate(POISONED.values()):
        value = jnp.sum(jnp.where(mask, poison[:, k], 0.0))  # 0, or NaN / inf when a real row carries it
        params = _set(params, path, poisoned_backward(_get(params, path), value))
    return BASE_LOSS(params, rows, mask)


def head_only(path, leaf):
    """Adapt the decision layers (MeLU's local update); the embedding tables and the genre projection stay fixed."""
    return jax.tree_util.keystr(path).startswith("['params']['head']")


@functools.cache
def make_params():
    return jaxrec.init_params(MODEL, SPEC, jax.random.PRNGKey(0))


def make_batch(seed, leaf=None, value=np.nan):
    """A padded batch of 3 tasks; with ``leaf`` its first task's first query row (a real row) poisons the
    backward pass of that leaf with ``value``."""
    batch = jaxrec.testing.synthetic_task_batch(SPEC, 3, 4, 3, jax.random.PRNGKey(seed), padded=True)
    support = {**batch.support, POISON: np.zeros(batch.support_mask.shape + (len(POISONED),), np.float32)}
    query_poison = np.zeros(batch.query_mask.shape + (len(POISONED),), np.float32)
    if leaf is not None:
        assert bool(batch.query_mask[0, 0])
        query_poison[0, 0, list(POISONED).index(leaf)] = value
    query = {**batch.query, POISON: query_poison}
    return batch.replace(support=support, query=query, task_id=jnp.asarray([100 + 3 * seed + t for t in range(3)]))


def trainer_options(kind):
    """The outer update: Adam on every parameter (``dense``), or row-sparse Adam on the embedding tables and Adam
    on the rest (``row_sparse``). Stateful on purpose: the tests check that the moments survive a skipped step."""
    if kind == "dense":
        return dict(optimizer=optax.adam(OUTER_LR))
    return dict(
        optimizer=optax.adam(OUTER_LR),
        sparse_tables=jaxrec.embedding_tables(make_params()),
        sparse_optimizer=jaxrec.row_sparse_adam(OUTER_LR),
    )


CASES = [(leaf, value) for leaf in POISONED for value in (np.nan, np.inf)]
CASE_IDS = [f"{leaf}-{value}" for leaf, value in CASES]


@functools.cache
def trainer(kind):
    """One MetaTrainer per kind, shared by the tests (its step compiles once: the poison is data)."""
    return jaxrec.MetaTrainer(
        loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=INNER_STEPS, adapt_filter=head_only, **trainer_options(kind)
    )


def train_kwargs(kind):
    """The keyword arguments of ``jaxrec.meta_train`` that build the same trainer as :func:`trainer`."""
    options = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=INNER_STEPS, adapt_filter=head_only, mesh=None)
    return options | trainer_options(kind)


def first_query(batch):
    """``(rows, mask)`` of the first task's query set."""
    return {k: v[0] for k, v in batch.query.items()}, batch.query_mask[0]


def test_the_poison_breaks_only_the_backward_pass():
    """The premise of the tests below, on the query rows of one task: the loss is that of the clean rows (finite),
    the gradient is NaN or inf on the poisoned leaf and unchanged elsewhere."""
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    clean_loss, clean_grads = value_and_grad(make_params(), *first_query(make_batch(2)))
    chex.assert_tree_all_finite(clean_grads)
    for leaf, value in CASES:
        loss, grads = value_and_grad(make_params(), *first_query(make_batch(2, leaf, value)))
        assert np.isfinite(float(loss)) and float(loss) == float(clean_loss)
        for name, path in POISONED.items():
            grad = np.asarray(_get(grads, path))
            if name == leaf:
                assert (np.isnan(grad) if np.isnan(value) else np.isinf(grad)).all()
            else:
                np.testing.assert_array_equal(grad, np.asarray(_get(clean_grads, path)))


@pytest.mark.parametrize("kind", ["dense", "row_sparse"])
@pytest.mark.parametrize("leaf, value", CASES, ids=CASE_IDS)
def test_step_with_finite_loss_and_nonfinite_gradient_leaves_the_state_unchanged(kind, leaf, value):
    t = trainer(kind)
    state, first = t.step(t.init(make_params()), make_batch(1))
    assert bool(first["finite"])  # a real step first, so that the optimiser state is not the initial one
    before = jax.device_get(state)
    state, metrics = t.step(state, make_batch(2, leaf, value))
    after = jax.device_get(state)
    chex.assert_trees_all_equal(after.params, before.params)
    chex.assert_trees_all_equal(after.opt_state, before.opt_state)  # optax (and row-sparse Adam) moments
    assert int(after.skipped) == 1 and int(after.step) == 2
    assert not bool(metrics["finite"])
    # the premise: the loss was finite, exactly the clean batch's loss from the same state (so what the guard
    # caught is the meta-gradient), and the clean batch is a real step
    _, clean = t.step(state, make_batch(2))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) == float(clean["loss"])
    assert bool(clean["finite"])
    assert t.traces == 1


@pytest.mark.parametrize("kind", ["dense", "row_sparse"])
def test_meta_train_skip_mode_drops_the_step_and_counts_it(kind):
    leaf, value = "item_table", np.nan
    batches = [make_batch(1), make_batch(2, leaf, value), make_batch(3)]
    params, history = jaxrec.meta_train(make_params(), batches, nonfinite="skip", **train_kwargs(kind))
    assert history["skipped"] == 1 and history["nonfinite_steps"] == [1] and history["steps"] == 3
    assert np.isfinite(history["loss"]).all()  # the skipped step's loss was finite: only its gradient was not
    chex.assert_tree_all_finite(params)
    # the skipped step changed nothing: the result is that of the two clean steps alone
    t = trainer(kind)
    state, _ = t.step(t.init(make_params()), make_batch(1))
    state, _ = t.step(state, make_batch(3))
    chex.assert_trees_all_equal(params, jax.device_get(state.params))


@pytest.mark.parametrize("kind", ["dense", "row_sparse"])
def test_meta_train_raise_mode_raises_on_a_finite_loss_with_a_nonfinite_gradient(kind):
    batches = [make_batch(1), make_batch(2, "output_kernel", np.inf), make_batch(3)]
    with pytest.raises(jaxrec.NonFiniteError) as info:
        jaxrec.meta_train(make_params(), batches, nonfinite="raise", **train_kwargs(kind))
    assert info.value.step == 1 and info.value.batch_index == 1
    assert info.value.users == [int(u) for u in batches[1].task_id]
    assert math.isfinite(info.value.loss)  # raised for the gradient: the loss itself was finite


# ================================================================================================================
# 2. every baseline starts from the parameters it is named for

TINY = dict(
    model_kwargs={"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": None},
    inner_steps=1,
    bootstrap=10,
    supervised_epochs=1,
    finetune_lrs=(0.0, 0.1),
    pretrain=False,  # the meta-learner starts from random values, far from the supervised model
    baselines=("finetune", "no_adapt"),
    eval_batch_size=64,
)
SCENARIO = "new_user"
TOL = dict(rtol=1e-5, atol=1e-5)


def reference_scores(experiment):
    """``scores(params, rates, batch)``: each task's query scores after :func:`jaxrec.adapt` of ``params`` on its
    support set with the run's inner loop (``rates=None``: ``params`` applied to the query without adaptation)."""

    def scores(params, rates, batch):
        def one_task(support, support_mask, query, query_mask):
            phi = params
            if rates is not None:
                phi = jaxrec.adapt(
                    params, support, support_mask, experiment.inner.replace(order="first"), inner_lr=rates
                )
            return experiment.apply_fn(phi, jaxrec.zero_padding(query, query_mask))

        return jax.vmap(one_task)(batch.support, batch.support_mask, batch.query, batch.query_mask)

    return jax.jit(scores)


@pytest.fixture(scope="module")
def run():
    """A tiny experiment meta-trained for two steps: ``(experiment, meta-learned params, reference scores)``."""
    experiment = jaxrec.Experiment(jaxrec.ExperimentConfig.make(**TINY))
    state = experiment.train(experiment.init_state(), steps=2)
    assert isinstance(state.params, jaxrec.MetaSGDParams)  # the default algorithm: rates are meta-learned too
    return experiment, state.params, reference_scores(experiment)


def scenario_batches(experiment):
    """The batches the evaluation scores, in its order."""
    return experiment.scenario_tasks[SCENARIO].batches(TINY["eval_batch_size"], shuffle=False, epochs=1)


def test_finetune_at_rate_zero_is_no_adapt_and_no_adapt_is_the_supervised_model(run):
    experiment, params, scores = run
    methods = experiment_predictors(experiment, params)  # the predictors Experiment.evaluate scores
    supervised = experiment.baselines().supervised_params
    (finetune, (finetune_start, rate)), (no_adapt, no_adapt_state) = methods["finetune"], methods["no_adapt"]
    assert rate == np.float32(experiment.baselines().finetune_lr)  # the rate tuned on the validation users
    separation = 0.0
    for batch in scenario_batches(experiment):
        mask = np.asarray(batch.query_mask)
        plain = np.asarray(no_adapt(no_adapt_state, batch))[mask]
        np.testing.assert_allclose(plain, np.asarray(scores(supervised, None, batch))[mask], **TOL)
        at_zero = np.asarray(finetune((finetune_start, jnp.zeros((), jnp.float32)), batch))[mask]
        np.testing.assert_allclose(at_zero, plain, **TOL)
        meta_unadapted = np.asarray(scores(params.params, None, batch))[mask]
        separation = max(separation, float(np.abs(meta_unadapted - plain).max()))
    # the premise: the supervised and the meta-learned model score differently, so the checks above tell them apart
    assert separation > 0.05


def test_the_evaluation_of_jaxrec_train_adapts_each_method_from_its_own_parameters(run):
    """Per-user errors of ``Experiment.evaluate`` (what ``jaxrec train`` writes to metrics.json, through
    ``Experiment.metrics_document``) against those of adapting each method's own starting point."""
    experiment, params, scores = run
    spec, fitted = experiment.spec, experiment.baselines()
    _, stats = experiment.evaluate(params, return_stats=True)
    starts = {
        "maml": (params.params, params.inner_lr),  # Meta-SGD: the meta-learned initialisation and rates
        "finetune": (fitted.supervised_params, jnp.asarray(fitted.finetune_lr, jnp.float32)),
        "no_adapt": (fitted.supervised_params, None),
    }
    assert set(stats[SCENARIO]) == set(starts)
    for name, (start, rates) in starts.items():
        errors, users = [], []
        for batch in scenario_batches(experiment):
            predicted = np.clip(np.asarray(scores(start, rates, batch)), *spec.rating_range)
            error = np.where(np.asarray(batch.query_mask), predicted - np.asarray(batch.query[spec.target]), 0.0)
            real = np.asarray(batch.task_id) >= 0
            errors.append(np.abs(error).sum(axis=1)[real])
            users.append(np.asarray(batch.task_id)[real])
        got = stats[SCENARIO][name]
        np.testing.assert_array_equal(got["user"], np.concatenate(users))
        np.testing.assert_allclose(got["abs_sum"], np.concatenate(errors), err_msg=f"method {name}", **TOL)
