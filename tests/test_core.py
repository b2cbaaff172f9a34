"""Behaviour of the meta-learning core: masking, compilation, adapt filters, errors, non-finite guard."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrec


def apply_fn(params, rows):
    return jnp.tanh(rows["x"] @ params["w1"]) @ params["w2"] + params["b"]


loss_fn = jaxrec.mse_loss(apply_fn)
PARAMS = {
    "w1": 0.5 * jnp.ones((3, 4)) + 0.1 * jnp.arange(12.0).reshape(3, 4) / 12,
    "w2": jnp.linspace(-0.5, 0.5, 4),
    "b": jnp.array(0.2),
}
KW = dict(loss_fn=loss_fn, inner_lr=0.2, inner_steps=2)


def make_batch(seed, tasks=4, support=6, query=4, empty_support_task=None):
    rng = np.random.default_rng(seed)
    counts_s = rng.integers(1, support + 1, size=tasks)
    counts_q = rng.integers(1, query + 1, size=tasks)
    if empty_support_task is not None:
        counts_s[empty_support_task] = 0

    def side(rows, counts):
        x = rng.normal(size=(tasks, rows, 3)).astype(np.float32)
        y = (x[..., 0] - x[..., 1]).astype(np.float32)
        return {"x": x, "rating": y}, np.arange(rows)[None] < counts[:, None]

    (s, sm), (q, qm) = side(support, counts_s), side(query, counts_q)
    return jaxrec.TaskBatch(s, q, sm, qm, task_id=np.arange(100, 100 + tasks))


_meta_value_and_grad = jax.jit(lambda p, b: jaxrec.meta_value_and_grad(p, b, **KW))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    garbage=st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -7.0]),
)
def test_garbage_in_masked_rows_changes_nothing(seed, garbage):
    batch = make_batch(seed)
    rng = np.random.default_rng(seed + 1)

    def poison(rows, mask):
        out = {}
        for key, value in rows.items():
            value = value.copy()
            noise = rng.normal(size=value.shape).astype(value.dtype) * garbage
            value[~mask] = np.where(np.isnan(noise), garbage, noise)[~mask]
            out[key] = value
        return out

    dirty = jaxrec.TaskBatch(
        poison(batch.support, batch.support_mask),
        poison(batch.query, batch.query_mask),
        batch.support_mask,
        batch.query_mask,
        batch.task_id,
    )
    clean_loss, clean_grads = _meta_value_and_grad(PARAMS, batch)
    dirty_loss, dirty_grads = _meta_value_and_grad(PARAMS, dirty)
    assert np.isfinite(clean_loss)
    np.testing.assert_array_equal(clean_loss, dirty_loss)
    chex.assert_trees_all_equal(clean_grads, dirty_grads)


def test_meta_step_compiles_once_per_batch_shape():
    trainer = jaxrec.MetaTrainer(**KW)
    state = trainer.init(PARAMS)
    for seed in range(5):
        state, _ = trainer.step(state, make_batch(seed))
    assert trainer.traces == 1
    state, _ = trainer.step(state, make_batch(9, support=8))  # a new shape bucket compiles once more
    state, _ = trainer.step(state, make_batch(10, support=8))
    assert trainer.traces == 2
    assert int(state.step) == 7


def test_meta_train_reports_compilations_and_learns():
    batches = [make_batch(seed, tasks=8) for seed in range(60)]
    params, history = jaxrec.meta_train(PARAMS, batches, optimizer=optax.adam(3e-2), mesh=None, **KW)
    assert history["compilations"] == 1
    assert history["steps"] == 60 and history["skipped"] == 0
    assert history["loss"].shape == (60,)
    assert np.mean(history["loss"][-10:]) < 0.5 * np.mean(history["loss"][:10])
    chex.assert_trees_all_equal_structs(params, PARAMS)


def test_a_batch_with_task_ids_and_one_without_share_the_compiled_step():
    """The step never reads the task ids: batches of one shape compile once whether or not they carry them."""
    batches = [make_batch(seed) for seed in range(4)]
    batches = [b if i % 2 else b.replace(task_id=None) for i, b in enumerate(batches)]
    _, history = jaxrec.meta_train(PARAMS, batches, mesh=None, **KW)
    assert history["steps"] == 4 and history["compilations"] == 1


def test_resuming_from_a_returned_state_keeps_the_returned_params():
    """The params a call returns are its state's; resuming from that state donates it to the steps, so it is copied
    (as ``init`` copies params): the first call's params stay readable and unchanged."""
    first, history = jaxrec.meta_train(PARAMS, [make_batch(s) for s in range(2)], mesh=None, **KW)
    kept = jax.tree.map(np.array, first)
    second, _ = jaxrec.meta_train(PARAMS, [make_batch(s) for s in range(2, 4)], state=history["state"], mesh=None, **KW)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, first), kept)
    assert not np.array_equal(np.asarray(second["w1"]), kept["w1"])


def test_callback_reports_progress():
    seen = []
    jaxrec.meta_train(
        PARAMS,
        [make_batch(s) for s in range(5)],
        callback=lambda step, metrics: seen.append((step, metrics["loss"])),
        log_every=2,
        mesh=None,
        **KW,
    )
    assert [s for s, _ in seen] == [2, 4, 5]
    assert all(np.isfinite(v) for _, v in seen)


def test_meta_train_does_not_consume_callers_params():
    params = jax.tree.map(jnp.array, PARAMS)
    jaxrec.meta_train(params, [make_batch(0)], mesh=None, **KW)
    chex.assert_trees_all_equal(params, PARAMS)  # the donated buffers were copies


@pytest.mark.parametrize("form", ["predicate", "pytree"])
def test_adapt_filter_keeps_frozen_leaves_fixed(form):
    batch = make_batch(3)
    rows = {k: v[0] for k, v in batch.support.items()}
    mask = batch.support_mask[0]
    if form == "predicate":
        adapt_filter = lambda path, leaf: path[0].key == "w2"  # noqa: E731
    else:
        adapt_filter = {"w1": False, "w2": True, "b": False}
    phi = jaxrec.adapt(PARAMS, rows, mask, adapt_filter=adapt_filter, **KW)
    np.testing.assert_array_equal(phi["w1"], PARAMS["w1"])
    np.testing.assert_array_equal(phi["b"], PARAMS["b"])
    assert np.max(np.abs(phi["w2"] - PARAMS["w2"])) > 1e-4
    # the frozen leaves are still meta-trained: their meta-gradient is non-zero
    grads = jax.grad(lambda p: jaxrec.meta_loss(p, batch, adapt_filter=adapt_filter, **KW))(PARAMS)
    assert np.max(np.abs(grads["w1"])) > 0 and np.abs(grads["b"]) > 0


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "metasgd"])
def test_adapt_filter_works_with_every_algorithm(algorithm):
    adapt_filter = {"w1": False, "w2": True, "b": True}
    params, history = jaxrec.meta_train(
        PARAMS,
        [make_batch(s) for s in range(3)],
        algorithm=algorithm,
        adapt_filter=adapt_filter,
        mesh=None,
        **KW,
    )
    assert history["steps"] == 3
    theta = params.params if algorithm == "metasgd" else params
    chex.assert_tree_all_finite(theta)
    if algorithm == "reptile":
        # Reptile moves only what adapts: frozen leaves have phi = theta
        np.testing.assert_array_equal(theta["w1"], PARAMS["w1"])
    if algorithm == "metasgd":
        assert isinstance(params, jaxrec.MetaSGDParams)
        assert not np.allclose(params.inner_lr["w2"], KW["inner_lr"])


def test_all_false_support_mask_means_no_adaptation():
    batch = make_batch(4, empty_support_task=1)
    rows = {k: v[1] for k, v in batch.support.items()}
    phi = jaxrec.adapt(PARAMS, rows, batch.support_mask[1], **KW)
    chex.assert_trees_all_equal(phi, PARAMS)
    losses = jaxrec.task_losses(PARAMS, batch, **KW)
    query = {k: v[1] for k, v in batch.query.items()}
    np.testing.assert_allclose(losses[1], loss_fn(PARAMS, query, batch.query_mask[1]), rtol=1e-6)


def test_an_adapt_filter_that_selects_nothing_is_refused_not_a_silent_no_op():
    batch = make_batch(5)
    rows = {k: v[0] for k, v in batch.support.items()}
    with pytest.raises(ValueError, match="selects no parameter .*w1, w2, b|selects no parameter .*b, w1, w2"):
        jaxrec.adapt(PARAMS, rows, batch.support_mask[0], adapt_filter="w3", **KW)  # a typo of a path
    with pytest.raises(ValueError, match="selects no parameter"):
        jaxrec.meta_train(PARAMS, [batch], adapt_filter="w3", mesh=None, **KW)
    zero = dict(KW, inner_steps=0)  # no step: nothing to adapt, nothing refused
    chex.assert_trees_all_equal(jaxrec.adapt(PARAMS, rows, batch.support_mask[0], adapt_filter="w3", **zero), PARAMS)


@pytest.mark.parametrize("builder", [jaxrec.mse_loss, jaxrec.bce_loss])
def test_a_loss_refuses_scores_of_another_shape_than_its_targets(builder):
    """``nn.Dense(1)`` scores ``[rows, 1]``: against ``[rows]`` targets they would broadcast to a ``[rows, rows]``
    matrix, a loss that is not a scalar (or, averaged, a wrong one)."""
    rows = {"x": np.ones((4, 3), np.float32), "rating": np.ones(4, np.float32), "label": np.ones(4, np.float32)}
    mask = np.ones(4, bool)
    column = builder(lambda p, r: apply_fn(p, r)[:, None])
    with pytest.raises(ValueError, match=r"shape \(4, 1\).*\(4,\).*one (score|logit) per row"):
        column(PARAMS, rows, mask)
    with pytest.raises(KeyError, match="no target 'y' .*label, rating, x"):
        builder(apply_fn, target="y")(PARAMS, rows, mask)
    assert np.shape(builder(apply_fn)(PARAMS, rows, mask)) == ()


def test_unknown_algorithm_and_order_are_refused():
    with pytest.raises(ValueError, match="unknown algorithm 'protonet'"):
        jaxrec.meta_train(PARAMS, [], algorithm="protonet", **KW)
    with pytest.raises(ValueError, match="unknown order 'third'"):
        jaxrec.meta_train(PARAMS, [], order="third", **KW)
    with pytest.raises(ValueError, match="unknown order"):
        jaxrec.adapt(PARAMS, {"x": np.zeros((2, 3))}, np.ones(2, bool), order="zeroth", **KW)


def test_batch_shape_errors_name_the_array():
    batch = make_batch(0)
    bad_rows = dict(batch.query, rating=batch.query["rating"][:, :2])
    with pytest.raises(jaxrec.BatchShapeError, match=r"query\['rating'\] has leading axes \(4, 2\)"):
        jaxrec.meta_loss(PARAMS, batch.replace(query=bad_rows), **KW)
    with pytest.raises(jaxrec.BatchShapeError, match="support_mask must be \\[tasks, rows\\]"):
        jaxrec.meta_loss(PARAMS, batch.replace(support_mask=batch.support_mask[0]), **KW)
    with pytest.raises(jaxrec.BatchShapeError, match="query_mask has 3 tasks"):
        jaxrec.meta_loss(PARAMS, batch.replace(query_mask=batch.query_mask[:3]), **KW)
    with pytest.raises(jaxrec.BatchShapeError, match="must be bool"):
        jaxrec.meta_loss(PARAMS, batch.replace(query_mask=batch.query_mask.astype(np.float32)), **KW)
    with pytest.raises(jaxrec.BatchShapeError, match="task_id"):
        jaxrec.validate_batch(batch.replace(task_id=np.arange(3)))
    with pytest.raises(ValueError, match="adapt_filter pytree does not match"):
        jaxrec.meta_loss(PARAMS, batch, adapt_filter={"w1": True}, **KW)
    # a list is a pytree of many leaves, which failed inside jit far from the batch
    with pytest.raises(jaxrec.BatchShapeError, match=r"query_mask must be a bool array .*got list"):
        jaxrec.meta_loss(PARAMS, batch.replace(query_mask=batch.query_mask.tolist()), **KW)
    listed = dict(batch.support, rating=batch.support["rating"].tolist())
    with pytest.raises(jaxrec.BatchShapeError, match=r"support\['rating'\] must be an array .*got list"):
        jaxrec.meta_loss(PARAMS, batch.replace(support=listed), **KW)


def test_inputs_that_would_learn_nothing_or_fail_deep_inside_jax_are_refused_by_name():
    batch = make_batch(0)
    # an optax solver carries its own rate: Meta-SGD's rates would get no gradient and never move
    with pytest.raises(ValueError, match="metasgd.*OptaxSteps does not use"):
        jaxrec.meta_train(PARAMS, [batch], algorithm="metasgd", inner_optimizer=optax.sgd(0.1), **KW)
    # Reptile moves theta towards the adapted parameters: without a step they are theta
    with pytest.raises(ValueError, match="reptile.*inner_steps=0"):
        jaxrec.meta_train(PARAMS, [batch], algorithm="reptile", **dict(KW, inner_steps=0))
    with pytest.raises(ValueError, match="metasgd.*inner_steps=0 takes none"):
        jaxrec.meta_train(PARAMS, [batch], algorithm="metasgd", **dict(KW, inner_steps=0))
    for algorithm in ("reptile", "metasgd"):  # refused by the config too, before a run folder is made
        with pytest.raises(ValueError, match=f"algorithm='{algorithm}'.*inner_steps=0"):
            jaxrec.ExperimentConfig.make(algorithm=algorithm, inner_steps=0)
    # jax.grad's own error names no leaf
    ints = dict(PARAMS, w2=jnp.arange(4))
    with pytest.raises(TypeError, match=r"floating-point.*\['w2'\] \(int32\)"):
        jaxrec.meta_train(ints, [batch], **KW)
    # Reptile takes no outer gradient: a leaf it does not adapt may be an integer, as it always could
    counted = dict(PARAMS, counter=jnp.array(3, jnp.int32))
    trained, _ = jaxrec.meta_train(
        counted, [batch], algorithm="reptile", adapt_filter=lambda path, leaf: "counter" not in str(path), **KW
    )
    assert int(trained["counter"]) == 3
    # a filter must decide from the path, not from traced values
    rows = {k: v[0] for k, v in batch.support.items()}
    by_value = lambda path, leaf: jnp.any(leaf != 0)  # noqa: E731
    with pytest.raises(TypeError, match=r"adapt filter returned a traced value for \['b'\]|traced value for"):
        jax.jit(lambda p: jaxrec.adapt(p, rows, batch.support_mask[0], adapt_filter=by_value, **KW))(PARAMS)


def poisoned_batch():
    batch = make_batch(5)
    query = dict(batch.query)
    rating = query["rating"].copy()
    rating[2, 0] = np.nan  # a real (unmasked) row of task 2, user 102
    query["rating"] = rating
    return batch.replace(query=query)


def test_nonfinite_step_is_skipped_and_counted():
    batches = [make_batch(1), poisoned_batch(), make_batch(2)]
    params, history = jaxrec.meta_train(PARAMS, batches, mesh=None, **KW)
    assert history["skipped"] == 1 and history["nonfinite_steps"] == [1]
    assert history["steps"] == 3
    chex.assert_tree_all_finite(params)
    # the skipped step left params exactly as the two good steps leave them
    clean, _ = jaxrec.meta_train(PARAMS, [make_batch(1), make_batch(2)], mesh=None, **KW)
    chex.assert_trees_all_equal(params, clean)


def test_after_step_writes_inside_the_step_and_a_nonfinite_write_drops_it():
    """``after_step`` sees the params before the step and the batch; its result is the new state's params."""

    def count_rows(params, new_params, batch, inner_lr):  # a non-gradient state: real query rows seen so far
        seen = params["seen"] + jnp.sum(batch.query_mask)
        return {**new_params, "seen": jnp.where(batch.task_id[0] == 999, jnp.nan, seen)}

    start = {**PARAMS, "seen": jnp.array(0.0)}
    batches = [make_batch(1), make_batch(2)]
    frozen = optax.multi_transform(
        {"p": optax.adam(1e-3), "s": optax.set_to_zero()}, {**{k: "p" for k in PARAMS}, "seen": "s"}
    )
    params, history = jaxrec.meta_train(start, batches, mesh=None, after_step=count_rows, optimizer=frozen, **KW)
    assert float(params["seen"]) == sum(int(np.sum(b.query_mask)) for b in batches)
    assert history["compilations"] == 1
    bad = make_batch(3).replace(task_id=np.full(4, 999))
    params, history = jaxrec.meta_train(
        start, [*batches, bad], mesh=None, after_step=count_rows, optimizer=frozen, **KW
    )
    assert history["skipped"] == 1 and float(params["seen"]) == sum(int(np.sum(b.query_mask)) for b in batches)
    with pytest.raises(ValueError, match="after_step"):
        jaxrec.MetaTrainer(
            after_step=count_rows, sparse_tables={("w1",): "x"}, sparse_optimizer=jaxrec.row_sparse_sgd(0.1), **KW
        )


def test_nonfinite_step_can_raise_naming_users():
    batches = [make_batch(1), poisoned_batch()]
    with pytest.raises(jaxrec.NonFiniteError, match=r"batch 1.*\[100, 101, 102, 103\]") as info:
        jaxrec.meta_train(PARAMS, batches, nonfinite="raise", mesh=None, **KW)
    assert info.value.users == [100, 101, 102, 103]
    with pytest.raises(ValueError, match="unknown nonfinite mode"):
        jaxrec.meta_train(PARAMS, batches, nonfinite="ignore", **KW)


@pytest.mark.parametrize("builder", ["mse", "bce"])
def test_loss_builders_keep_padded_nan_targets_out_of_the_gradient(builder):
    rows = {"x": np.ones((4, 3), np.float32), "rating": np.array([1.0, 0.0, np.nan, np.inf], np.float32)}
    rows["label"] = rows["rating"]
    mask = np.array([True, True, False, False])
    loss = jaxrec.mse_loss(apply_fn) if builder == "mse" else jaxrec.bce_loss(apply_fn)
    value, grads = jax.value_and_grad(loss)(PARAMS, rows, mask)
    assert np.isfinite(value)
    chex.assert_tree_all_finite(grads)
    clean = {k: v[:2] for k, v in rows.items()}
    chex.assert_trees_all_close(grads, jax.grad(loss)(PARAMS, clean, mask[:2]), rtol=1e-6)


def test_decay_to_start_is_gradient_descent_on_the_l2_sp_objective(float64):
    """chain(sgd(eta), decay_to_start(eta * lam)) takes exactly the steps of sgd(eta) on
    f(theta) + lam / 2 ||theta - theta_0||^2 (float64), and at lam = 0 those of sgd(eta) on f."""
    from jaxrec.core.anchoring import decay_to_start

    target = jnp.array([1.0, -2.0, 0.5])
    start = {"w": jnp.array([0.3, 0.2, -0.1]), "b": jnp.array(0.7)}

    def f(p):
        return jnp.sum((p["w"] - target) ** 2) + jnp.sin(p["b"]) * jnp.sum(p["w"])

    eta, lam = 0.05, 3.0
    for rate in (lam, 0.0):
        anchored = optax.chain(optax.sgd(eta), decay_to_start(eta * rate))
        plain = optax.sgd(eta)

        def regularised(p, start=start, rate=rate):
            drift = jax.tree.map(lambda x, s: jnp.sum((x - s) ** 2), p, start)
            return f(p) + rate / 2 * sum(jax.tree.leaves(drift))

        a, sa = start, anchored.init(start)
        b, sb = start, plain.init(start)
        for _ in range(20):
            ua, sa = anchored.update(jax.grad(f)(a), sa, a)
            a = optax.apply_updates(a, ua)
            ub, sb = plain.update(jax.grad(regularised)(b), sb, b)
            b = optax.apply_updates(b, ub)
        for key in start:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-14)
    assert float(jnp.max(jnp.abs(a["w"] - start["w"]))) > 0.1  # the steps moved
    with pytest.raises(ValueError, match="rate"):
        decay_to_start(-1.0)
