"""Exactness of the meta-gradients, in float64, against hand-written Hessian products and finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxrec
from jaxrec.testing import central_differences

pytestmark = pytest.mark.usefixtures("float64")

INNER_LR = 0.3


def apply_fn(params, rows):
    """A small non-linear regressor: its Hessian is far from constant, so second order really matters."""
    hidden = jnp.tanh(rows["x"] @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


loss_fn = jaxrec.mse_loss(apply_fn)


def init_params(key, dim=3, hidden=4):
    k1, k2 = jax.random.split(key)
    return {
        "w1": 0.8 * jax.random.normal(k1, (dim, hidden)),
        "b1": jnp.linspace(-0.3, 0.3, hidden),
        "w2": 0.8 * jax.random.normal(k2, (hidden,)),
        "b2": jnp.array(0.1),
    }


def make_batch(seed, tasks=3, support=6, query=5, dim=3, support_counts=None, query_counts=None):
    """Tasks with different amounts of padding (counts per task) and random data in every row."""
    rng = np.random.default_rng(seed)
    support_counts = support_counts or [support - t % support for t in range(tasks)]
    query_counts = query_counts or [query - (2 * t) % query for t in range(tasks)]

    def side(rows, counts):
        x = rng.normal(size=(tasks, rows, dim))
        y = np.sin(x.sum(-1)) + 0.1 * rng.normal(size=(tasks, rows))
        mask = np.arange(rows)[None, :] < np.asarray(counts)[:, None]
        return {"x": x, "rating": y}, mask

    s, sm = side(support, support_counts)
    q, qm = side(query, query_counts)
    return jaxrec.TaskBatch(support=s, query=q, support_mask=sm, query_mask=qm, task_id=np.arange(tasks))


def task(batch, t, side):
    rows = getattr(batch, side)
    return {k: v[t] for k, v in rows.items()}, getattr(batch, f"{side}_mask")[t]


def hand_written_maml_grad(params, batch, inner_steps, inner_lr=INNER_LR, first_order=False):
    """sum_t w_t prod_k (I - a H_s(phi_k)) grad L_q(phi_K) / sum_t w_t with explicit Hessian matrices."""
    flat0, unravel = ravel_pytree(params)
    flat_loss = lambda f, rows, mask: loss_fn(unravel(f), rows, mask)  # noqa: E731
    hessian, grad = jax.jit(jax.hessian(flat_loss)), jax.jit(jax.grad(flat_loss))
    grads, weights = [], []
    for t in range(batch.num_tasks):
        s_rows, s_mask = task(batch, t, "support")
        q_rows, q_mask = task(batch, t, "query")
        phi, hessians = flat0, []
        for _ in range(inner_steps):
            hessians.append(hessian(phi, s_rows, s_mask))
            phi = phi - inner_lr * grad(phi, s_rows, s_mask)
        g = grad(phi, q_rows, q_mask)
        if not first_order:
            # d phi_K / d theta = (I - a H_{K-1}) ... (I - a H_0); its transpose applied to g, H symmetric
            for h in reversed(hessians):
                g = g - inner_lr * h @ g
        w = float(np.any(q_mask))
        grads.append(w * g)
        weights.append(w)
    return sum(grads) / max(sum(weights), 1.0)


def value_and_grad(params, batch, **kwargs):
    """jaxrec.meta_value_and_grad, jit-compiled (eager scans of grads are slow)."""
    return jax.jit(lambda p, b: jaxrec.meta_value_and_grad(p, b, **kwargs))(params, batch)


def meta_loss_of(batch, **kwargs):
    kwargs = {"loss_fn": loss_fn, "inner_lr": INNER_LR, "inner_steps": 2, **kwargs}
    return jax.jit(lambda p: jaxrec.meta_loss(p, batch, **kwargs))


@pytest.mark.parametrize("inner_steps", [2, 3])
def test_second_order_equals_hessian_product(inner_steps):
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(1, tasks=4)
    got = ravel_pytree(jax.grad(meta_loss_of(batch, inner_steps=inner_steps))(params))[0]
    want = hand_written_maml_grad(params, batch, inner_steps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # and the Hessian terms matter: first order is measurably different here
    first = hand_written_maml_grad(params, batch, inner_steps, first_order=True)
    assert np.max(np.abs(first - want)) > 1e-3


def test_second_order_matches_central_finite_differences():
    params = init_params(jax.random.PRNGKey(1))
    batch = make_batch(2, tasks=3)
    f = meta_loss_of(batch, inner_steps=3)
    grad = ravel_pytree(jax.grad(f)(params))[0]
    fd = central_differences(f, params)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_first_order_equals_query_gradient_at_adapted_params():
    params = init_params(jax.random.PRNGKey(2))
    batch = make_batch(3, tasks=3)
    got = ravel_pytree(jax.grad(meta_loss_of(batch, inner_steps=3, order="first"))(params))[0]
    want = hand_written_maml_grad(params, batch, 3, first_order=True)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_first_order_with_partial_adaptation_is_the_query_gradient_at_the_adapted_parameters():
    """MeLU's shape (only the output layer adapts), first order: every leaf's meta-gradient, adapted or fixed, is
    the mean query gradient at ``phi_K``, the fixed leaves' included (no path through the inner steps is kept)."""
    params = init_params(jax.random.PRNGKey(28))
    batch = make_batch(29, tasks=3)
    kwargs = dict(loss_fn=loss_fn, inner_lr=0.4, inner_steps=3, adapt_filter=lambda path, leaf: path[0].key == "w2")
    got = jax.jit(jax.grad(lambda p: jaxrec.meta_loss(p, batch, order="first", **kwargs)))(params)
    want = np.zeros_like(ravel_pytree(params)[0])
    for t in range(batch.num_tasks):
        (s_rows, s_mask), (q_rows, q_mask) = task(batch, t, "support"), task(batch, t, "query")
        phi = jaxrec.adapt(params, s_rows, s_mask, **kwargs)
        assert (
            float(jnp.max(jnp.abs(phi["w1"] - params["w1"]))) == 0.0 < float(jnp.max(jnp.abs(phi["w2"] - params["w2"])))
        )
        want = want + ravel_pytree(jax.grad(loss_fn)(phi, q_rows, q_mask))[0]
    np.testing.assert_allclose(ravel_pytree(got)[0], want / batch.num_tasks, rtol=1e-10, atol=1e-12)


def test_meta_loss_is_mean_over_real_tasks_only():
    params = init_params(jax.random.PRNGKey(3))
    batch = make_batch(4, tasks=3)
    padded = jaxrec.pad_tasks(batch, 5)
    assert padded.num_tasks == 5
    kwargs = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=2)
    chex.assert_trees_all_close(
        value_and_grad(params, batch, **kwargs), value_and_grad(params, padded, **kwargs), rtol=1e-12
    )


def test_metasgd_gradient_matches_formula_one_step():
    """K = 1: phi = theta - alpha * g_s, so dL/dalpha = -g_q(phi) * g_s(theta) (elementwise)."""
    params = init_params(jax.random.PRNGKey(4))
    batch = make_batch(5, tasks=1)
    alpha = jax.tree.map(lambda p: 0.1 + 0.05 * jnp.abs(p), params)
    meta = jaxrec.MetaSGDParams(params, alpha)
    grads = jax.jit(jax.grad(lambda m: jaxrec.meta_loss(m, batch, loss_fn=loss_fn, inner_lr=None, inner_steps=1)))(meta)
    s_rows, s_mask = task(batch, 0, "support")
    q_rows, q_mask = task(batch, 0, "query")
    g_s = jax.grad(loss_fn)(params, s_rows, s_mask)
    phi = jax.tree.map(lambda p, a, g: p - a * g, params, alpha, g_s)
    g_q = jax.grad(loss_fn)(phi, q_rows, q_mask)
    chex.assert_trees_all_close(grads.inner_lr, jax.tree.map(lambda a, b: -a * b, g_q, g_s), rtol=1e-10)


def test_metasgd_gradient_matches_finite_differences_two_steps():
    params = init_params(jax.random.PRNGKey(5))
    batch = make_batch(6, tasks=2)
    alpha = jax.tree.map(lambda p: 0.2 * jnp.ones_like(p), params)
    meta = jaxrec.MetaSGDParams(params, alpha)
    f = jax.jit(lambda m: jaxrec.meta_loss(m, batch, loss_fn=loss_fn, inner_lr=None, inner_steps=2))
    grad = ravel_pytree(jax.grad(f)(meta))[0]
    fd = central_differences(f, meta)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_metasgd_first_order_equals_its_stop_gradient_form():
    """First order stops the inner gradients: ``phi_(k+1) = phi_k - alpha * sg(g_s(phi_k))``, so per task
    ``dL/dtheta = g_q(phi_K)`` and ``dL/dalpha = -g_q(phi_K) * sum_k g_s(phi_k)`` (elementwise), averaged over the
    tasks with query rows. K = 3, a rate per parameter."""
    params = init_params(jax.random.PRNGKey(21))
    batch = make_batch(22, tasks=3)
    alpha = jax.tree.map(lambda p: 0.2 * (1.0 + 0.5 * jnp.linspace(0.0, 1.0, p.size).reshape(p.shape)), params)
    steps = 3
    f = jax.jit(lambda m: jaxrec.meta_loss(m, batch, loss_fn=loss_fn, inner_lr=None, inner_steps=steps, order="first"))
    got = jax.grad(f)(jaxrec.MetaSGDParams(params, alpha))
    flat, unravel = ravel_pytree(params)
    rates = ravel_pytree(alpha)[0]
    grad = jax.jit(jax.grad(lambda v, rows, mask: loss_fn(unravel(v), rows, mask)))
    want_theta, want_alpha = np.zeros_like(flat), np.zeros_like(flat)
    for t in range(batch.num_tasks):
        (s_rows, s_mask), (q_rows, q_mask) = task(batch, t, "support"), task(batch, t, "query")
        phi, summed = flat, np.zeros_like(flat)
        for _ in range(steps):
            g = grad(phi, s_rows, s_mask)
            summed, phi = summed + g, phi - rates * g
        g_q = grad(phi, q_rows, q_mask)
        want_theta, want_alpha = want_theta + g_q, want_alpha - g_q * summed
    np.testing.assert_allclose(ravel_pytree(got.params)[0], want_theta / batch.num_tasks, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ravel_pytree(got.inner_lr)[0], want_alpha / batch.num_tasks, rtol=1e-10, atol=1e-12)
    second = jax.grad(jax.jit(lambda m: jaxrec.meta_loss(m, batch, loss_fn=loss_fn, inner_lr=None, inner_steps=steps)))
    assert (
        np.max(
            np.abs(ravel_pytree(second(jaxrec.MetaSGDParams(params, alpha)).inner_lr)[0] - want_alpha / batch.num_tasks)
        )
        > 1e-3
    )


def test_reptile_update_equals_formula():
    """With optax.sgd(eps): theta' = theta + eps * mean_t (phi_t - theta), phi_t from K plain SGD steps."""
    params = init_params(jax.random.PRNGKey(6))
    batch = make_batch(7, tasks=3)
    eps, steps = 0.5, 3
    new_params, history = jaxrec.meta_train(
        params,
        [batch],
        loss_fn=loss_fn,
        algorithm="reptile",
        inner_lr=INNER_LR,
        inner_steps=steps,
        optimizer=optax.sgd(eps),
        mesh=None,
    )
    flat, unravel = ravel_pytree(params)
    grad = jax.jit(jax.grad(lambda f, rows, mask: loss_fn(unravel(f), rows, mask)))
    phis = []
    for t in range(batch.num_tasks):
        s_rows, s_mask = task(batch, t, "support")
        phi = flat
        for _ in range(steps):
            phi = phi - INNER_LR * grad(phi, s_rows, s_mask)
        phis.append(phi)
    want = flat + eps * np.mean([phi - flat for phi in phis], axis=0)
    np.testing.assert_allclose(ravel_pytree(new_params)[0], want, rtol=1e-10, atol=1e-12)
    assert history["steps"] == 1


def test_adam_inner_optimizer_is_differentiated_through():
    params = init_params(jax.random.PRNGKey(7))
    batch = make_batch(8, tasks=2)
    # eps_root > 0 keeps d sqrt(v) finite where a gradient entry is exactly zero (optax's advice for meta-learning)
    inner = optax.adam(0.05, eps_root=1e-12)
    f = meta_loss_of(batch, inner_steps=3, inner_optimizer=inner)
    grad = ravel_pytree(jax.grad(f)(params))[0]
    fd = central_differences(f, params)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # and it is not the first-order gradient
    first = ravel_pytree(jax.grad(meta_loss_of(batch, inner_steps=3, inner_optimizer=inner, order="first"))(params))[0]
    assert np.max(np.abs(first - grad)) > 1e-4


def test_adam_without_eps_root_leaves_a_task_without_support_unadapted_and_finite():
    """A task with no support row (a padding task, or a new user of no interaction) has all-zero inner gradients,
    where Adam's square root has no derivative: it must come back unadapted and add nothing but its query loss's
    gradient at theta, so that padding a batch to the device count changes nothing (it made every step NaN)."""
    params = init_params(jax.random.PRNGKey(15))
    inner = dict(loss_fn=loss_fn, inner_lr=None, inner_steps=3, inner_optimizer=optax.adam(0.05))
    batch = make_batch(16, tasks=3)
    plain = value_and_grad(params, batch, **inner)
    padded = value_and_grad(params, jaxrec.scale.sharding.pad_tasks(batch, 4), **inner)
    assert np.all(np.isfinite(ravel_pytree(padded[1])[0]))
    chex.assert_trees_all_close(plain, padded, rtol=1e-12, atol=1e-14)
    # a task of query rows only is scored at theta: its share of the meta-gradient is its query loss's gradient there
    no_support = make_batch(17, tasks=3, support_counts=[6, 0, 4])
    value, grad = value_and_grad(params, no_support, **inner)
    q_rows, q_mask = task(no_support, 1, "query")
    others = jax.tree.map(lambda x: x[np.array([0, 2])], no_support)
    rest_value, rest_grad = value_and_grad(params, others, **inner)
    np.testing.assert_allclose(value, (2 * rest_value + loss_fn(params, q_rows, q_mask)) / 3, rtol=1e-12)
    want = jax.tree.map(lambda r, g: (2 * r + g) / 3, rest_grad, jax.grad(loss_fn)(params, q_rows, q_mask))
    chex.assert_trees_all_close(grad, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("order", "remat", "inner_steps"),
    [
        ("second", True, 4),
        ("second", "sqrt", 4),
        ("second", "sqrt", 7),  # segments of 3, 3 and 1 steps
        ("second", "recompute", 1),
        ("second", "recompute", 4),
        ("first", True, 4),
        ("first", "recompute", 4),
    ],
)
def test_remat_equals_plain_path(order, remat, inner_steps):
    params = init_params(jax.random.PRNGKey(8))
    batch = make_batch(9, tasks=4)
    kwargs = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=inner_steps, order=order)
    plain = value_and_grad(params, batch, **kwargs)
    rematted = value_and_grad(params, batch, remat=remat, **kwargs)
    chex.assert_trees_all_close(plain, rematted, rtol=1e-12, atol=1e-14)
    if order == "second" and inner_steps == 4:  # and it is the hand-written product, not only self-consistent
        expected = hand_written_maml_grad(params, batch, inner_steps)
        np.testing.assert_allclose(ravel_pytree(rematted[1])[0], ravel_pytree(expected)[0], rtol=1e-10)


@pytest.mark.parametrize("remat", ["sqrt", "recompute"])
def test_remat_of_a_jitted_loss_over_a_numpy_batch_equals_plain_path(remat):
    """A jitted meta-loss, or one's own vmap of ``adapt``, that closes over a batch of NumPy arrays: the replaying
    remat policies once failed to compile it (a NumPy mask reached their custom VJP as a non-canonical constant of
    the trace)."""
    params = init_params(jax.random.PRNGKey(8))
    batch = make_batch(9, tasks=3)
    assert isinstance(batch.support_mask, np.ndarray)
    kwargs = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=3)
    plain = jax.grad(jax.jit(lambda p: jaxrec.meta_loss(p, batch, **kwargs)))(params)
    rematted = jax.grad(jax.jit(lambda p: jaxrec.meta_loss(p, batch, remat=remat, **kwargs)))(params)
    chex.assert_trees_all_close(plain, rematted, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        ravel_pytree(rematted)[0], ravel_pytree(hand_written_maml_grad(params, batch, 3))[0], rtol=1e-10
    )
    # and one's own vmap of jaxrec.adapt over the NumPy tasks, the same in every policy

    def adapted(p, policy):
        adapt = lambda rows, mask: jaxrec.adapt(p, rows, mask, remat=policy, **kwargs)  # noqa: E731
        return jnp.sum(ravel_pytree(jax.vmap(adapt)(batch.support, batch.support_mask))[0] ** 2)

    chex.assert_trees_all_close(
        jax.grad(jax.jit(lambda p: adapted(p, False)))(params),
        jax.grad(jax.jit(lambda p: adapted(p, remat)))(params),
        rtol=1e-12,
        atol=1e-14,
    )


def test_an_inner_optimizers_first_order_is_the_query_gradient_at_the_adapted_parameters():
    """First order through an optax inner optimiser: ``d phi_K / d theta = I``, so the meta-gradient is the mean
    query gradient at each task's ``phi_K`` (Adam's state is the same function of the stopped gradients)."""
    params = init_params(jax.random.PRNGKey(7))
    batch = make_batch(8, tasks=3)
    kwargs = dict(loss_fn=loss_fn, inner_lr=None, inner_steps=3, inner_optimizer=optax.adam(0.05, eps_root=1e-12))
    got = jax.jit(jax.grad(lambda p: jaxrec.meta_loss(p, batch, order="first", **kwargs)))(params)
    want = np.zeros_like(ravel_pytree(params)[0])
    for t in range(batch.num_tasks):
        (s_rows, s_mask), (q_rows, q_mask) = task(batch, t, "support"), task(batch, t, "query")
        phi = jaxrec.adapt(params, s_rows, s_mask, **kwargs)
        want = want + ravel_pytree(jax.grad(loss_fn)(phi, q_rows, q_mask))[0]
    np.testing.assert_allclose(ravel_pytree(got)[0], want / batch.num_tasks, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("remat", ["step", "sqrt", "recompute"])
def test_remat_with_an_inner_optimizer_equals_plain_path(remat):
    params = init_params(jax.random.PRNGKey(12))
    batch = make_batch(13, tasks=3)
    kwargs = dict(loss_fn=loss_fn, inner_lr=None, inner_steps=5, inner_optimizer=optax.adam(0.05))
    plain = value_and_grad(params, batch, **kwargs)
    chex.assert_trees_all_close(plain, value_and_grad(params, batch, remat=remat, **kwargs), rtol=1e-12, atol=1e-14)


def test_unknown_remat_policy_is_refused():
    params = init_params(jax.random.PRNGKey(8))
    with pytest.raises(ValueError, match="remat policy 'bisect'"):
        value_and_grad(params, make_batch(9), loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=2, remat="bisect")


@pytest.mark.parametrize("chunk", [1, 3])
def test_task_chunk_equals_plain_path(chunk):
    params = init_params(jax.random.PRNGKey(9))
    batch = make_batch(10, tasks=5)
    kwargs = dict(loss_fn=loss_fn, inner_lr=INNER_LR, inner_steps=2)
    plain = value_and_grad(params, batch, **kwargs)
    chunked = value_and_grad(params, batch, task_chunk=chunk, **kwargs)
    chex.assert_trees_all_close(plain, chunked, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jaxrec.meta_loss(params, batch, task_chunk=chunk, **kwargs), plain[0], rtol=1e-12)


def test_task_chunk_and_remat_with_metasgd():
    params = init_params(jax.random.PRNGKey(10))
    meta = jaxrec.core.metasgd.init_metasgd(params, 0.1)
    batch = make_batch(11, tasks=4)
    kwargs = dict(loss_fn=loss_fn, inner_lr=None, inner_steps=2)
    plain = value_and_grad(meta, batch, **kwargs)
    other = value_and_grad(meta, batch, task_chunk=3, remat=True, **kwargs)
    chex.assert_trees_all_close(plain, other, rtol=1e-12, atol=1e-14)


def test_log_space_adam_is_adam_on_the_log_of_the_rates():
    """alpha_{t+1} = exp(beta_t + u_t), u_t: Adam's update of beta = log alpha with dL/dbeta = alpha dL/dalpha."""
    target = jnp.array([0.05, 0.5, 2.0])

    def loss(alpha):
        return jnp.sum((jnp.log(alpha) - jnp.log(target)) ** 2 * alpha)

    alpha = jnp.array([0.1, 0.1, 0.1])
    beta = jnp.log(alpha)
    opt, ref = jaxrec.core.metasgd.log_space(optax.adam(0.1)), optax.adam(0.1)
    state, ref_state = opt.init(alpha), ref.init(beta)
    for _ in range(4):
        updates, state = opt.update(jax.grad(loss)(alpha), state, alpha)
        alpha = optax.apply_updates(alpha, updates)
        ref_updates, ref_state = ref.update(jax.grad(lambda b: loss(jnp.exp(b)))(beta), ref_state, beta)
        beta = optax.apply_updates(beta, ref_updates)
        np.testing.assert_allclose(alpha, jnp.exp(beta), rtol=1e-12)
    assert (alpha > 0).all() and not np.allclose(alpha, 0.1)
    with pytest.raises(ValueError, match="current parameters"):
        opt.update(jax.grad(loss)(alpha), state)


@pytest.mark.parametrize("remat", ["step", "recompute"])
def test_remat_with_inner_aux_and_metasgd_rates_equals_plain_path(remat):
    """The replayed inner step reads theta (for the auxiliary pull) and the per-parameter rates as explicit
    differentiable inputs: their cotangents are accumulated over the K steps like the carry's."""
    meta = jaxrec.core.metasgd.init_metasgd(init_params(jax.random.PRNGKey(14)), 0.2)
    meta = meta.replace(
        inner_lr=jax.tree.map(lambda r: r * jnp.linspace(0.5, 1.5, r.size).reshape(r.shape), meta.inner_lr)
    )
    batch = make_batch(15, tasks=3)
    kwargs = dict(loss_fn=loss_fn, inner_lr=None, inner_steps=4, inner_aux=jaxrec.l2_to_init(0.7))
    plain = value_and_grad(meta, batch, **kwargs)
    chex.assert_trees_all_close(plain, value_and_grad(meta, batch, remat=remat, **kwargs), rtol=1e-12, atol=1e-14)
    assert float(jnp.abs(ravel_pytree(plain[1].inner_lr)[0]).max()) > 1e-6  # the rates do get a gradient
