"""Nonsense arguments of the public API are errors that name the argument, before anything is traced."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrec


def apply_fn(params, rows):
    return rows["x"] @ params["w"]


LOSS = jaxrec.mse_loss(apply_fn, target="y")
PARAMS = {"w": jnp.zeros(3)}
ROWS = {"x": jnp.ones((4, 3)), "y": jnp.ones(4)}
MASK = jnp.ones(4, bool)


def batches(n=3):
    rng = np.random.default_rng(0)
    for _ in range(n):
        x = rng.normal(size=(2, 6, 3)).astype(np.float32)
        y = x.sum(-1)
        yield jaxrec.TaskBatch(
            support={"x": x[:, :3], "y": y[:, :3]},
            query={"x": x[:, 3:], "y": y[:, 3:]},
            support_mask=np.ones((2, 3), bool),
            query_mask=np.ones((2, 3), bool),
        )


@pytest.mark.parametrize("steps", [2.5, -1, True, "3"])
def test_inner_steps_must_be_a_non_negative_integer(steps):
    with pytest.raises(ValueError, match="inner_steps"):
        jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=0.1, inner_steps=steps)


def test_an_integral_float_or_numpy_integer_is_accepted_as_inner_steps():
    a = jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=0.1, inner_steps=2.0)
    b = jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=0.1, inner_steps=np.int64(2))
    np.testing.assert_array_equal(a["w"], b["w"])
    assert jaxrec.InnerLoop(LOSS, steps=np.int32(3)).steps == 3


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -0.1])
def test_a_scalar_inner_lr_must_be_finite_and_positive(lr):
    with pytest.raises(ValueError, match="inner_lr"):
        jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=lr, inner_steps=1)
    with pytest.raises(ValueError, match="inner_lr"):
        jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=lr, inner_steps=1)


@pytest.mark.parametrize("as_array", [jnp.asarray, np.asarray], ids=["jax", "numpy"])
@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf")])
def test_a_0d_array_inner_lr_must_be_finite(lr, as_array):
    """``jnp.array(nan)`` was taken where ``float("nan")`` is not, and every step then skipped. A 0-d array of 0 or
    below stays allowed: it is how no adaptation (rate 0) and a learned rate past 0 (floored) are passed."""
    with pytest.raises(ValueError, match="inner_lr"):
        jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=as_array(lr), inner_steps=1)
    with pytest.raises(ValueError, match="inner_lr"):
        jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=as_array(lr), inner_steps=1)
    jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=as_array(0.0), inner_steps=1)


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_meta_train_steps_must_be_a_non_negative_integer(steps):
    with pytest.raises(ValueError, match="steps"):
        jaxrec.meta_train(PARAMS, batches(), loss_fn=LOSS, inner_lr=0.1, inner_steps=1, steps=steps, mesh=None)


def test_meta_train_zero_steps_trains_nothing_and_returns_the_parameters():
    params, history = jaxrec.meta_train(PARAMS, batches(), loss_fn=LOSS, inner_lr=0.1, inner_steps=1, steps=0)
    assert history["steps"] == 0
    np.testing.assert_array_equal(params["w"], PARAMS["w"])


@pytest.mark.parametrize(
    "options, name",
    [
        ({"order": "third"}, "order"),
        ({"remat": "sometimes"}, "remat"),
        ({"inner_optimizer": "adam"}, "solver"),
    ],
)
def test_inner_loop_fields_are_checked(options, name):
    with pytest.raises((ValueError, TypeError), match=name):
        jaxrec.InnerLoop(LOSS, steps=1, **{"solver" if k == "inner_optimizer" else k: v for k, v in options.items()})


def test_unknown_inner_loop_keywords_and_missing_fields_are_named():
    with pytest.raises(TypeError, match="inner_stepz"):
        jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=0.1, inner_stepz=1)
    with pytest.raises(TypeError, match="loss_fn"):
        jaxrec.adapt(PARAMS, ROWS, MASK, inner_lr=0.1, inner_steps=1)
    with pytest.raises(ValueError, match="task_chunk"):
        jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=0.1, inner_steps=1, task_chunk=0)
    with pytest.raises(ValueError, match="algorithm"):
        jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=0.1, inner_steps=1, algorithm="maml++")


def test_the_inner_loop_value_is_hashable_and_equal_by_content():
    mask = {"w": True}
    a = jaxrec.InnerLoop(LOSS, steps=2, adapt_filter=mask, solver=optax.sgd(0.1))
    b = a.replace(adapt_filter={"w": True})
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(steps=3) and a.replace(order="first").order == "first"
    # the keyword form builds the same value
    assert (
        jaxrec.core.inner.as_inner_loop(
            loss_fn=LOSS, inner_steps=2, adapt_filter=mask, inner_optimizer=a.solver.transformation
        )
        == a
    )


def test_inner_lr_is_needed_by_every_solver_but_optax():
    with pytest.raises(ValueError, match="inner_lr is needed"):
        jaxrec.adapt(PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=None, inner_steps=1)
    adapted = jaxrec.adapt(
        PARAMS, ROWS, MASK, loss_fn=LOSS, inner_lr=None, inner_steps=1, inner_optimizer=optax.sgd(0.1)
    )
    assert not np.array_equal(adapted["w"], PARAMS["w"])


def test_a_named_adapt_filter_gives_equal_inner_loops():
    a = jaxrec.InnerLoop(LOSS, steps=1, adapt_filter="head")
    assert a == jaxrec.InnerLoop(LOSS, steps=1, adapt_filter="head") and callable(a.adapt_filter)
    with pytest.raises(ValueError, match="default"):
        jaxrec.InnerLoop(LOSS, steps=1, adapt_filter="default")


def test_the_trainer_rate_cannot_change_once_compiled():
    trainer = jaxrec.MetaTrainer(loss_fn=LOSS, inner_lr=0.1, inner_steps=1)
    trainer.inner_lr = 0.2  # before the first step: fine
    state = trainer.init(PARAMS)
    state, _ = trainer.step(state, next(batches()))
    with pytest.raises(ValueError, match="compiled"):
        trainer.inner_lr = 100.0


def test_config_fields_are_checked_when_made():
    from jaxrec.experiment import ExperimentConfig, resolve

    assert resolve(ExperimentConfig.make(model="mf")).model.kwargs == {}  # another model's kwargs are dropped
    for bad in ({"query": 0}, {"query": 1.5}, {"query": True}, {"support_buckets": ()}, {"support_buckets": (0,)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ExperimentConfig.make(**bad)
    assert ExperimentConfig.make(query=0.2).protocol.query == 0.2
    assert ExperimentConfig.make(query=10.0).protocol.query == 10


def test_the_stream_refuses_no_tasks_and_builds_each_epoch_once():
    from jaxrec.data import DataError
    from jaxrec.data.stream import StepBatches

    class Tasks:  # the two methods a stream reads
        def __init__(self, n):
            self.n = n

        def batch_plan(self, size, rng):
            return [np.arange(i, i + size) for i in range(0, self.n, size)]

        def make_batch(self, index, rng):
            return index

    with pytest.raises(DataError, match="no tasks"):
        StepBatches(lambda e: Tasks(0), batch_size=2)
    built = []
    batch_at = StepBatches(lambda e: built.append(e) or Tasks(4), batch_size=2, shuffle=False)
    assert [batch_at(k)[0] for k in range(8)] == [0, 2] * 4
    assert built == [0, 1, 2, 3]  # one build per epoch, epoch 0 not rebuilt


@pytest.mark.parametrize("field, value", [("rerank", "melu"), ("sampled_negatives", 100), ("hybrid", "itemknn")])
def test_top_n_evaluation_options_on_rated_feedback_are_refused_not_ignored(field, value):
    from jaxrec.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=f"^{field} needs --feedback implicit"):
        ExperimentConfig.make(**{field: value})
    assert ExperimentConfig.make(feedback="implicit", **{field: value})  # accepted where it means something


@pytest.mark.parametrize("field, value", [("shots", 3), ("topn_ks", (5, 10)), ("negatives", 5), ("query_cap", 30)])
def test_other_top_n_options_on_rated_feedback_are_refused_not_ignored(field, value):
    from jaxrec.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=f"^{field} needs --feedback implicit"):
        ExperimentConfig.make(**{field: value})
    assert ExperimentConfig.make(feedback="implicit", **{field: value})


@pytest.mark.parametrize(
    "field, value, instead",
    [("baselines", ("bias",), "--topn-baselines"), ("ks", (1, 3), "--topn-ks"),
     ("implicit", True, "--positive-threshold"), ("rating_scale", (1, 10), "predicts no rating"),
     # the rating protocol's task shapes, which top-N tasks never read (they were taken in silence)
     ("min_ratings", 55, "every other user is kept"), ("max_ratings", 25, "never dropped"),
     ("query", 2, "--query-cap, --train-query"), ("support", 5, "--shots"), ("split", "time", "--shots"),
     ("support_buckets", (8,), "--shots"), ("history", 3, "--shots")],
)  # fmt: skip
def test_rating_options_with_implicit_feedback_are_refused_not_ignored(field, value, instead):
    from jaxrec.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=f"^{field} is a rating option, ignored by --feedback implicit") as error:
        ExperimentConfig.make(feedback="implicit", **{field: value})
    assert instead in str(error.value)
    assert ExperimentConfig.make(**{field: value})  # a rating run reads it


def test_a_records_options_its_run_never_read_are_read_as_the_defaults():
    """A run's record (a checkpoint's, a run folder's config.json) of an earlier version may hold a top-N option in a
    rating run's record, or a rating option in a top-N run's: the run never read them, and restoring it must not fail
    on them (evaluate, recommend and serve of that run had no flag to mend it)."""
    from jaxrec.experiment import ExperimentConfig

    rating = ExperimentConfig().to_dict()
    rating["topn"]["shots"] = 3
    assert ExperimentConfig.from_dict(rating).topn.shots == ExperimentConfig().topn.shots
    topn = ExperimentConfig.make(feedback="implicit", shots=5).to_dict()
    topn["evaluation"]["baselines"], topn["evaluation"]["ks"] = ["bias"], [1, 3]
    topn["data"]["implicit"], topn["data"]["rating_scale"] = True, [1, 10]
    topn["protocol"]["min_ratings"], topn["protocol"]["query"] = 55, 2
    restored = ExperimentConfig.from_dict(topn)
    assert restored.topn.shots == 5 and restored.evaluation.baselines == ExperimentConfig().evaluation.baselines
    assert not restored.data.implicit and restored.data.rating_scale is None
    assert restored.protocol == ExperimentConfig().protocol
    with pytest.raises(ValueError, match="shots needs --feedback implicit"):
        ExperimentConfig.make(shots=3)  # a config being made is checked
