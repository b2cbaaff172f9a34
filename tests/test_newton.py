"""The Newton (MAP) inner step: closed-form ridge on a linear head, exact meta-gradients, convergence."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxrec
from jaxrec.core.newton import eliminate, newton
from jaxrec.testing import central_differences

pytestmark = pytest.mark.usefixtures("float64")


def linear_apply(params, rows):
    return rows["x"] @ params["w"] + params["b"]


def mlp_apply(params, rows):
    hidden = jnp.tanh(rows["x"] @ params["body"]["w"] + params["body"]["b"])
    return hidden @ params["head"]["w"] + params["head"]["b"]


def rows_of(seed, n=7, dim=3, pad=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + pad, dim))
    y = np.sin(x.sum(-1)) + 0.3 * rng.normal(size=n + pad)
    mask = np.arange(n + pad) < n
    return {"x": jnp.asarray(x), "rating": jnp.asarray(y)}, jnp.asarray(mask)


def mlp_params(seed, dim=3, hidden=4):
    rng = np.random.default_rng(seed)
    return {
        "body": {"w": jnp.asarray(0.8 * rng.normal(size=(dim, hidden))), "b": jnp.linspace(-0.3, 0.3, hidden)},
        "head": {"w": jnp.asarray(0.5 * rng.normal(size=hidden)), "b": jnp.asarray(0.2)},
    }


def ridge(x, y, theta, alpha):
    """argmin sum_i (y_i - x_i . w)^2 + sum_j (w_j - theta_j)^2 / (2 alpha_j) in closed form."""
    precision = np.diag(1.0 / (2.0 * alpha))
    return np.linalg.solve(x.T @ x + precision, x.T @ y + precision @ theta)


def test_one_step_on_a_linear_model_is_ridge_towards_the_initialisation():
    rows, mask = rows_of(0)
    theta = {"w": jnp.array([0.3, -0.2, 0.5]), "b": jnp.array(0.1)}
    alpha = {"w": jnp.array([0.05, 0.2, 1.0]), "b": jnp.array(0.5)}  # per-parameter prior variances

    def adapted(steps):
        return jaxrec.adapt(
            theta, rows, mask, loss_fn=jaxrec.mse_loss(linear_apply), inner_lr=alpha, inner_steps=steps,
            inner_optimizer=newton(),
        )  # fmt: skip

    phi = adapted(1)
    keep = np.asarray(mask)
    x = np.c_[np.asarray(rows["x"])[keep], np.ones(keep.sum())]
    expected = ridge(x, np.asarray(rows["rating"])[keep], np.r_[theta["w"], theta["b"]], np.r_[alpha["w"], alpha["b"]])
    np.testing.assert_allclose(np.r_[phi["w"], phi["b"]], expected, rtol=1e-12, atol=1e-12)
    # a second step starts at the minimiser: it stays there
    phi2 = adapted(2)
    chex.assert_trees_all_close(phi2, phi, atol=1e-12)


def test_no_support_rows_keep_the_initialisation_and_padding_is_ignored():
    rows, mask = rows_of(1)
    theta = {"w": jnp.array([0.3, -0.2, 0.5]), "b": jnp.array(0.1)}
    kwargs = dict(loss_fn=jaxrec.mse_loss(linear_apply), inner_lr=0.3, inner_steps=1, inner_optimizer=newton())
    chex.assert_trees_all_close(jaxrec.adapt(theta, rows, jnp.zeros_like(mask), **kwargs), theta, atol=0)
    # garbage in the padded rows changes nothing
    dirty = {k: v.at[-1].set(1e6) for k, v in rows.items()}
    chex.assert_trees_all_close(jaxrec.adapt(theta, dirty, mask, **kwargs), jaxrec.adapt(theta, rows, mask, **kwargs))


def test_more_rows_move_further_from_the_prior():
    """The data term grows with the support size: a user with more ratings is shrunk less towards theta."""
    theta = {"w": jnp.zeros(3), "b": jnp.array(0.0)}
    kwargs = dict(loss_fn=jaxrec.mse_loss(linear_apply), inner_lr=0.05, inner_steps=1, inner_optimizer=newton())
    x = jnp.ones((40, 3)) * jnp.array([1.0, 0.0, 0.0])
    rows = {"x": x, "rating": jnp.full(40, 2.0)}
    shifts = [float(jaxrec.adapt(theta, rows, jnp.arange(40) < n, **kwargs)["b"]) for n in (2, 10, 40)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]


def test_steps_on_a_nonlinear_model_converge_to_the_map_estimate():
    rows, mask = rows_of(2)
    params = mlp_params(0)
    loss_fn = jaxrec.mse_loss(mlp_apply)
    alpha = 0.2
    phi = jaxrec.adapt(
        params,
        rows,
        mask,
        loss_fn=loss_fn,
        inner_lr=alpha,
        inner_steps=8,
        inner_optimizer=newton(),
        adapt_filter=lambda path, leaf: path[0].key == "body",
    )
    n = float(np.sum(mask))

    def objective(body):
        p = {"body": body, "head": params["head"]}
        prior = sum(
            jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(body), jax.tree.leaves(params["body"]), strict=True)
        )
        return n * loss_fn(p, rows, mask) + prior / (2 * alpha)

    grad = ravel_pytree(jax.grad(objective)(phi["body"]))[0]
    assert float(jnp.max(jnp.abs(grad))) < 1e-10
    chex.assert_trees_all_equal(phi["head"], params["head"])
    assert float(objective(phi["body"])) < float(objective(params["body"]))


def hand_written_newton_grad(theta, alpha, support, query):
    """d L_q(phi) / d (theta, alpha) for one ridge step on a linear model, written out.

    phi = A^{-1} (2 X'y + P theta), A = 2 X'X + P, P = diag(1 / alpha) (the mean loss times n is the sum of
    squared errors). With v = A^{-1} grad L_q(phi): dL/dtheta = P v; dL/dP_j = v_j (theta_j - phi_j), and
    dP_j / dalpha_j = -1 / alpha_j^2.
    """
    (xs, ys), (xq, yq) = support, query
    precision = np.diag(1.0 / alpha)
    a = 2 * xs.T @ xs + precision
    phi = np.linalg.solve(a, 2 * xs.T @ ys + precision @ theta)
    grad_q = 2 * xq.T @ (xq @ phi - yq) / len(yq)
    v = np.linalg.solve(a, grad_q)
    return precision @ v, v * (theta - phi) * (-1.0 / alpha**2)


def test_meta_gradient_equals_the_hand_written_one_and_finite_differences():
    (srows, smask), (qrows, qmask) = rows_of(3, n=6, pad=1), rows_of(4, n=5, pad=2)
    theta = {"w": jnp.array([0.3, -0.2, 0.5]), "b": jnp.array(0.1)}
    alpha = {"w": jnp.array([0.05, 0.2, 1.0]), "b": jnp.array(0.5)}
    loss_fn = jaxrec.mse_loss(linear_apply)

    def meta_loss(theta, alpha):
        phi = jaxrec.adapt(
            theta, srows, smask, loss_fn=loss_fn, inner_lr=alpha, inner_steps=1, inner_optimizer=newton()
        )
        return loss_fn(phi, qrows, qmask)

    g_theta, g_alpha = jax.grad(meta_loss, argnums=(0, 1))(theta, alpha)

    def design(rows, mask):
        keep = np.asarray(mask)
        return np.c_[np.asarray(rows["x"])[keep], np.ones(keep.sum())], np.asarray(rows["rating"])[keep]

    want_theta, want_alpha = hand_written_newton_grad(
        np.r_[theta["w"], theta["b"]], np.r_[alpha["w"], alpha["b"]], design(srows, smask), design(qrows, qmask)
    )
    np.testing.assert_allclose(np.r_[g_theta["w"], g_theta["b"]], want_theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.r_[g_alpha["w"], g_alpha["b"]], want_alpha, rtol=1e-10, atol=1e-12)

    # first order: d phi / d theta = I, but the prior variances keep their gradient; one step from theta (where
    # phi - theta starts at 0) it is the same as second order's
    def first_order(theta, alpha):
        phi = jaxrec.adapt(
            theta, srows, smask, loss_fn=loss_fn, inner_lr=alpha, inner_steps=1, order="first",
            inner_optimizer=newton(),
        )  # fmt: skip
        return loss_fn(phi, qrows, qmask)

    f_theta, f_alpha = jax.grad(first_order, argnums=(0, 1))(theta, alpha)
    np.testing.assert_allclose(np.r_[f_alpha["w"], f_alpha["b"]], want_alpha, rtol=1e-10, atol=1e-12)
    phi = jaxrec.adapt(theta, srows, smask, loss_fn=loss_fn, inner_lr=alpha, inner_steps=1, inner_optimizer=newton())
    chex.assert_trees_all_close(f_theta, jax.grad(loss_fn)(phi, qrows, qmask), atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_through_a_network_matches_finite_differences(steps):
    """Output layer adapted by Newton steps, the body meta-learned through the Hessian: central differences."""
    (srows, smask), (qrows, qmask) = rows_of(5, n=8), rows_of(6, n=5)
    params = mlp_params(1)
    loss_fn = jaxrec.mse_loss(mlp_apply)
    flat, unravel = ravel_pytree(params)

    def meta_loss(v):
        p = unravel(v)
        phi = jaxrec.adapt(
            p,
            srows,
            smask,
            loss_fn=loss_fn,
            inner_lr=0.3,
            inner_steps=steps,
            inner_optimizer=newton(),
            adapt_filter=lambda path, leaf: path[0].key == "head",
        )
        return loss_fn(phi, qrows, qmask)

    meta_loss = jax.jit(meta_loss)
    grad = jax.grad(meta_loss)(flat)
    eps = 1e-6
    basis = np.eye(flat.size)
    numeric = np.array([(meta_loss(flat + eps * e) - meta_loss(flat - eps * e)) / (2 * eps) for e in basis])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert float(jnp.max(jnp.abs(grad[: flat.size - 5]))) > 1e-4  # the body is reached through the inner step


def _rates(params, base=0.3):
    """Per-parameter prior variances, all different."""
    return jax.tree.map(lambda p: base * (1.0 + 0.5 * jnp.linspace(0.0, 1.0, p.size).reshape(p.shape)), params)


@pytest.mark.parametrize("solver", ["newton", "mixed"])
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_learned_prior_variances_get_the_meta_gradient_of_finite_differences_over_several_steps(solver, loss):
    """Meta-SGD's rates as the Newton step's prior variances ``alpha``, K = 3 steps on a network's output layer
    (``newton()`` with an adapt filter, or the mixed solver that solves the head and descends on the body): the
    meta-gradient in ``theta`` and ``alpha`` together matches central differences (the hand-written check covers
    K = 1 only)."""
    (srows, smask), (qrows, qmask) = rows_of(11, n=8), rows_of(12, n=5)
    if loss == "bce":
        srows, qrows = ({"x": r["x"], "label": (r["rating"] > 0).astype(jnp.float64)} for r in (srows, qrows))
        loss_fn = jaxrec.bce_loss(mlp_apply)
    else:
        loss_fn = jaxrec.mse_loss(mlp_apply)
    head = lambda path, leaf: path[0].key == "head"  # noqa: E731
    options = dict(inner_optimizer=newton(), adapt_filter=head) if solver == "newton" else {}
    options = options or dict(inner_optimizer=newton(solve="head"))
    params = mlp_params(1)
    meta = jaxrec.MetaSGDParams(params, _rates(params))

    def meta_loss(m):
        phi = jaxrec.adapt(
            m.params, srows, smask, loss_fn=loss_fn, inner_lr=m.inner_lr, inner_steps=3, **options
        )  # fmt: skip
        return loss_fn(phi, qrows, qmask)

    meta_loss = jax.jit(meta_loss)
    grad = jax.grad(meta_loss)(meta)
    np.testing.assert_allclose(ravel_pytree(grad)[0], central_differences(meta_loss, meta), rtol=1e-6, atol=1e-8)
    assert float(jnp.max(jnp.abs(ravel_pytree(grad.inner_lr["head"])[0]))) > 1e-6


def test_first_order_over_several_steps_is_the_gradient_of_the_steps_with_their_terms_held():
    """First order holds each step's gradient ``g_k``, Hessian ``H_k`` and offset ``phi_k - theta`` as constants:
    ``phi_K = theta - sum_k (n H_k + P)^-1 (n g_k + P (phi_k - theta))``, ``P = diag(1 / alpha)``. That function,
    written out here from the forward pass's constants, is differentiated by central differences in ``theta``
    and ``alpha``; K = 3, where the offsets are not 0 (at K = 1 first and second order agree in ``alpha``)."""
    (srows, smask), (qrows, qmask) = rows_of(13, n=8), rows_of(14, n=5)
    loss_fn = jaxrec.mse_loss(mlp_apply)
    params, steps = mlp_params(3), 3
    alpha = _rates(params)
    head = lambda path, leaf: path[0].key == "head"  # noqa: E731

    def first_order(theta, rates):
        phi = jaxrec.adapt(
            theta, srows, smask, loss_fn=loss_fn, inner_lr=rates, inner_steps=steps, order="first",
            inner_optimizer=newton(), adapt_filter=head,
        )  # fmt: skip
        return loss_fn(phi, qrows, qmask)

    got = ravel_pytree(jax.jit(jax.grad(first_order, argnums=(0, 1)))(params, alpha))[0]
    start, unravel = ravel_pytree(params["head"])
    n = float(np.sum(np.asarray(smask)))
    support = lambda h: loss_fn({"body": params["body"], "head": unravel(h)}, srows, smask)  # noqa: E731
    precision = np.diag(1.0 / np.asarray(ravel_pytree(alpha["head"])[0]))
    held, phi = [], np.asarray(start)
    for _ in range(steps):
        g, hessian = np.asarray(jax.grad(support)(phi)), np.asarray(jax.hessian(support)(phi))
        held.append((g, hessian, phi - np.asarray(start)))
        phi = phi - np.linalg.solve(n * hessian + precision, n * g + precision @ (phi - np.asarray(start)))

    def steps_with_terms_held(both):
        theta, rates = both
        x = ravel_pytree(theta["head"])[0]
        p = jnp.diag(1.0 / ravel_pytree(rates["head"])[0])
        for g, hessian, offset in held:
            x = x - jnp.linalg.solve(n * hessian + p, n * g + p @ offset)
        return loss_fn({"body": theta["body"], "head": unravel(x)}, qrows, qmask)

    want = central_differences(jax.jit(steps_with_terms_held), (params, alpha))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_first_order_stops_the_gradient_at_the_update():
    (srows, smask), (qrows, qmask) = rows_of(7), rows_of(8)
    params = mlp_params(2)
    loss_fn = jaxrec.mse_loss(mlp_apply)
    head = lambda path, leaf: path[0].key == "head"  # noqa: E731

    def query_loss(p, order):
        phi = jaxrec.adapt(
            p, srows, smask, loss_fn=loss_fn, inner_lr=0.3, inner_steps=2, order=order,
            inner_optimizer=newton(), adapt_filter=head,
        )  # fmt: skip
        return loss_fn(phi, qrows, qmask), phi

    (_, phi), _ = jax.value_and_grad(query_loss, has_aux=True)(params, "second")
    g_first = jax.grad(lambda p: query_loss(p, "first")[0])(params)
    # first order: d phi / d theta = I, so the meta-gradient is the query gradient at phi (same adapted values)
    chex.assert_trees_all_close(g_first, jax.grad(lambda p: loss_fn(p, qrows, qmask))(phi), atol=1e-12)


def test_a_rate_below_the_floor_acts_as_the_floor_with_finite_gradients():
    rows, mask = rows_of(10)
    theta = {"w": jnp.array([0.3, -0.2, 0.5]), "b": jnp.array(0.1)}
    loss_fn = jaxrec.mse_loss(linear_apply)

    def after(alpha):
        phi = jaxrec.adapt(theta, rows, mask, loss_fn=loss_fn, inner_lr=alpha, inner_steps=1, inner_optimizer=newton())
        return loss_fn(phi, rows, mask)

    # a negative rate (Meta-SGD's linear-space update can overshoot) is a prior variance at the floor: phi ~ theta
    assert float(after(jnp.array(-0.01))) == pytest.approx(float(loss_fn(theta, rows, mask)), abs=1e-6)
    assert float(after(jnp.array(-0.01))) == pytest.approx(float(after(jnp.array(1e-8))), abs=1e-12)
    assert float(jax.grad(after)(jnp.array(-0.01))) == 0.0  # no huge -1/floor^2 gradient through the floor
    assert np.isfinite(float(jax.grad(after)(jnp.array(1e-3))))


def test_too_many_adapted_parameters_is_a_clear_error():
    rows, mask = rows_of(9)
    with pytest.raises(ValueError, match="adapts 21 parameters, more than max_params=10"):
        jaxrec.adapt(
            mlp_params(3), rows, mask, loss_fn=jaxrec.mse_loss(mlp_apply), inner_lr=0.1, inner_steps=1,
            inner_optimizer=newton(max_params=10),
        )  # fmt: skip
    with pytest.raises(ValueError, match="max_params must be >= 1"):
        newton(0)


@pytest.mark.parametrize("order", ["second", "first"])
def test_meta_sgd_trainer_learns_the_prior_variances(order):
    """A Meta-SGD trainer with the Newton step: one jit-compiled step moves both the initialisation and the rates."""
    rng = np.random.default_rng(0)
    tasks, support, query, dim = 4, 8, 5, 3
    x = rng.normal(size=(tasks, support + query, dim))
    w = rng.normal(size=(tasks, dim))
    y = np.einsum("tnd,td->tn", x, w) + 0.1 * rng.normal(size=(tasks, support + query))
    batch = jaxrec.TaskBatch(
        support={"x": x[:, :support], "rating": y[:, :support]},
        query={"x": x[:, support:], "rating": y[:, support:]},
        support_mask=np.ones((tasks, support), bool),
        query_mask=np.ones((tasks, query), bool),
        task_id=np.arange(tasks),
    )
    trainer = jaxrec.MetaTrainer(
        loss_fn=jaxrec.mse_loss(linear_apply),
        inner_lr=0.1,
        inner_steps=1,
        algorithm="metasgd",
        order=order,
        inner_optimizer=newton(),
    )
    state = trainer.init({"w": jnp.zeros(dim), "b": jnp.array(0.0)})
    rates_before = jax.tree.map(np.asarray, state.params.inner_lr)  # the step donates the state's buffers
    new_state, metrics = trainer.step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    rates_moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), new_state.params.inner_lr, rates_before)
    assert min(jax.tree.leaves(rates_moved)) > 0


@pytest.mark.parametrize("solver, adapt, solve", [("newton", "head/output", None), ("mixed", "head", "head/output")])
def test_experiment_with_the_newton_solver_meta_trains_and_fine_tunes_with_it(solver, adapt, solve):
    """``inner_solver="newton"`` / ``"mixed"`` reach the trainer, the meta method's evaluation and fine-tuning."""
    from jaxrec.core.newton import NewtonStep
    from jaxrec.experiment import Experiment, ExperimentConfig
    from jaxrec.experiment.methods import experiment_predictors

    config = ExperimentConfig.make(
        model_kwargs={"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": None, "item_bias": True},
        inner_solver=solver,
        adapt=adapt,
        inner_steps=1,
        bootstrap=20,
        supervised_epochs=1,
        finetune_lrs=(0.0, 0.1),
        baselines=("finetune", "bias"),
    )
    exp = Experiment(config)
    assert isinstance(exp.trainer.inner.solver, NewtonStep) and exp.trainer.inner.solver.solve == solve
    state = exp.train(steps=3)
    predictors = experiment_predictors(exp, state.params)
    for name in ("maml", "finetune"):
        assert isinstance(predictors[name][0].keywords["inner"].solver, NewtonStep), name
    scores = exp.evaluate(state.params)
    assert all(np.isfinite(scores["new_user"][m]["mae"]) for m in ("maml", "finetune", "bias"))
    # fine-tuning's prior-variance grid: variance 0 keeps the supervised model, so its score differs from 0.1's
    validation = exp.baselines().finetune_validation
    assert set(validation) == {0.0, 0.1} and validation[0.0] != validation[0.1]
    with pytest.raises(ValueError, match="inner_solver"):
        Experiment(ExperimentConfig.make(dataset="no-such-dataset", inner_solver="lbfgs"))


def test_mixed_inner_loop_solves_the_output_layer_and_descends_on_the_rest():
    """newton(solve=...): gradient steps on the body, the head re-solved for the body it ends with."""
    (srows, smask), (qrows, qmask) = rows_of(11, n=8), rows_of(12, n=5)
    params = mlp_params(4)
    loss_fn = jaxrec.mse_loss(mlp_apply)
    alpha = 0.3
    kwargs = dict(loss_fn=loss_fn, inner_lr=alpha, inner_steps=2, inner_optimizer=newton(solve="head"))
    phi = jaxrec.adapt(params, srows, smask, **kwargs)
    assert not np.allclose(ravel_pytree(phi["body"])[0], ravel_pytree(params["body"])[0])  # the body moved
    n = float(np.sum(smask))

    def objective(head):  # J over the head for the adapted body; the head's prior is its initial value
        prior = sum(
            jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(params["head"]), strict=True)
        )
        return n * loss_fn({"body": phi["body"], "head": head}, srows, smask) + prior / (2 * alpha)

    grad = ravel_pytree(jax.grad(objective)(phi["head"]))[0]
    assert float(jnp.max(jnp.abs(grad))) < 1e-10  # linear head, squared error: one solve is exact
    # with the head solved by Newton, the body's step equals an SGD step taken at the solved head
    one = jaxrec.adapt(params, srows, smask, **{**kwargs, "inner_steps": 1})
    head0 = jaxrec.adapt(params, srows, smask, **{**kwargs, "inner_steps": 1, "inner_optimizer": newton()},
                         adapt_filter=lambda path, leaf: path[0].key == "head")  # fmt: skip
    body_grad = jax.grad(loss_fn)({"body": params["body"], "head": head0["head"]}, srows, smask)["body"]
    chex.assert_trees_all_close(one["body"], jax.tree.map(lambda p, g: p - alpha * g, params["body"], body_grad))

    flat, unravel = ravel_pytree(params)

    @jax.jit
    def meta_loss(v):
        return loss_fn(jaxrec.adapt(unravel(v), srows, smask, **kwargs), qrows, qmask)

    grad = jax.grad(meta_loss)(flat)
    eps = 1e-6
    numeric = np.array([(meta_loss(flat + eps * e) - meta_loss(flat - eps * e)) / (2 * eps) for e in np.eye(flat.size)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="selects none of the adapted"):
        jaxrec.adapt(params, srows, smask, **{**kwargs, "inner_optimizer": newton(solve="nothing_here")})


def test_a_projection_before_the_output_gives_its_newton_step_a_full_covariance_prior():
    """MeLU(projection=True): one Newton step on ``head/output`` with prior ``w ~ N(theta, diag(alpha))`` over the
    projected features ``A h`` is the ridge fit of the user vector over ``h`` with the full-covariance prior
    ``A^T w ~ N(A^T theta, A^T diag(alpha) A)``, checked against that closed form."""
    from small_melu import SPEC

    from jaxrec import models

    model = models.MeLU(SPEC, embed=4, hidden=(6,), use_ids=("item",), interaction=None, projection=True)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), models.init_params(model, SPEC, jax.random.PRNGKey(3)))
    rows = jaxrec.testing.synthetic_rows(SPEC, 9, jax.random.PRNGKey(4))
    mask = jnp.arange(9) < 7
    rng = np.random.default_rng(5)
    head = params["params"]["head"]
    alpha_w = rng.uniform(0.05, 1.0, size=6)
    rates = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    rates["params"]["head"]["output"]["kernel"] = jnp.asarray(alpha_w)[:, None]
    phi = jaxrec.adapt(
        params, rows, mask, loss_fn=jaxrec.mse_loss(model.apply), inner_lr=rates, inner_steps=1,
        inner_optimizer=newton(), adapt_filter=models.adapt_filter("head/output"),
    )  # fmt: skip

    _, state = model.apply(params, rows, capture_intermediates=True)
    h = np.asarray(jax.nn.relu(state["intermediates"]["head"]["hidden_0"]["__call__"][0]))
    keep = np.asarray(mask)
    x = np.c_[h[keep], np.ones(keep.sum())]
    y = np.asarray(rows["rating"])[keep]
    a = np.asarray(head["projection"]["kernel"])  # z = h @ a, so the effective user vector over h is a @ w
    theta_w = np.asarray(head["output"]["kernel"])[:, 0]
    mean = np.r_[a @ theta_w, head["output"]["bias"]]
    covariance = np.zeros((7, 7))
    covariance[:6, :6] = a @ np.diag(alpha_w) @ a.T
    covariance[6, 6] = 0.3
    # argmin sum_i (y_i - x_i . v)^2 + (v - mean)^T covariance^{-1} (v - mean) / 2
    precision = np.linalg.inv(covariance) / 2.0
    expected = np.linalg.solve(x.T @ x + precision, x.T @ y + precision @ mean)
    out = phi["params"]["head"]["output"]
    got = np.r_[a @ np.asarray(out["kernel"])[:, 0], out["bias"]]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert np.abs(covariance[:6, :6] - np.diag(np.diag(covariance[:6, :6]))).max() > 1e-3  # not diagonal


def test_elimination_equals_lapack_solve_to_second_order(float64):
    # the solve used with several CPU devices (jaxrec.core.newton.solve): the same values, gradients and Hessians
    rng = np.random.default_rng(3)
    a = rng.normal(size=(9, 9))
    system = a @ a.T + np.eye(9)
    system[[0, 4]] = system[[4, 0]]  # a row order that needs pivoting
    system[0, 0] = 0.0
    rhs = rng.normal(size=9)

    def through(solve):
        return lambda s, b: jnp.sum(jnp.sin(solve(s, b)) * jnp.arange(1.0, 10.0))

    ours, lapack = through(eliminate), through(jnp.linalg.solve)
    np.testing.assert_allclose(eliminate(system, rhs), np.linalg.solve(system, rhs), rtol=1e-12, atol=1e-12)
    for got, want in zip(jax.grad(ours, (0, 1))(system, rhs), jax.grad(lapack, (0, 1))(system, rhs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        jax.hessian(ours, 1)(system, rhs), jax.hessian(lapack, 1)(system, rhs), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        jax.jacfwd(jax.grad(ours), 1)(system, rhs), jax.jacfwd(jax.grad(lapack), 1)(system, rhs), rtol=1e-9, atol=1e-11
    )
