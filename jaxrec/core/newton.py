"""A Newton inner step: adaptation as the MAP estimate under a Gaussian prior centred at the initialisation.

MAML's inner loop takes gradient steps and stops early. When few parameters adapt (the output layer of the
decision network: the user's preference vector over the item representation the rest of the network learns),
the per-task problem can instead be solved. With ``n`` support rows and ``loss_fn`` a mean over them, the
adapted parameters are the minimiser of

    J(phi) = n L_s(phi) + 1/2 sum_j (phi_j - theta_j)^2 / alpha_j,

the maximum a posteriori estimate under the prior ``phi ~ N(theta, diag(alpha))`` (for the squared error, a
likelihood of unit-scale noise absorbed into ``alpha``). Each inner step is a Newton step on ``J``:

    phi <- phi - (n H_s(phi) + diag(1 / alpha))^{-1} (n grad L_s(phi) + (phi - theta) / alpha),

with ``H_s`` the Hessian of the support loss over the adapted parameters. For a loss that is quadratic in them
(squared error, linear output layer) one step reaches the minimiser exactly: ridge regression towards
``theta``, the fold-in of a new user in matrix factorisation (Hu et al. 2008), the closed-form head of R2-D2
(Bertinetto et al. 2019). The proximal objective is that of iMAML (Rajeswaran et al. 2019), here solved and
differentiated exactly rather than through the implicit function theorem, which is affordable for a few hundred
parameters. More steps iterate towards the minimiser for other losses (BCE: iteratively reweighted least
squares); the step is undamped beyond the prior, so where the support loss's Hessian is far from positive
definite (non-linear adapted layers) it is not guaranteed to converge. An ``inner_aux`` term is part of ``L_s``
and so is weighted by ``n`` too.

``alpha`` is the inner learning rate: a scalar, or per parameter with Meta-SGD, which then meta-learns the
prior variances. Where ``H_s`` vanishes the step is ``phi = theta - n alpha grad L_s``: one gradient step on the
summed loss. The shrinkage is data-dependent: a user with many ratings moves further from ``theta`` than one
with few, which gradient steps on the mean loss, the same length for every user, do not do.

``jax.grad`` through the step (the Hessian, the linear solve) is the exact meta-gradient; ``order="first"``
stops the gradient at the loss's gradient and Hessian and at ``phi - theta`` (so ``d phi_K / d theta = I``, as in
first-order MAML), while the prior variances still receive theirs, as Meta-SGD's rates do in first order. A task
without support rows has ``n = 0`` and keeps ``phi = theta``.

``newton(solve=spec)`` mixes the two inner loops (variable projection, Golub and Pereyra 1973): the adapted
leaves that ``spec`` selects (e.g. ``"head/output"``) are solved by a Newton step, the other adapted leaves take
gradient steps at their rates. Each of the ``K`` inner steps first solves the selected leaves for the current
others, then takes a gradient step on the others at that solution; a last solve follows the ``K``-th step, so the
output layer is always the MAP fit to the user's ratings of the hidden layers it is used with.

Pass :func:`newton` as the inner loop's solver wherever it is configured (:func:`jaxrec.adapt`,
:class:`jaxrec.MetaTrainer`, :func:`jaxrec.evaluation.meta_predict`, ``ExperimentConfig.make(inner_solver="newton")``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxrec.core.params import adapt_filter
from jaxrec.core.remat import iterate
from jaxrec.core.solvers import InnerProblem

__all__ = ["NewtonStep", "newton", "newton_step"]

# a rate at or below this floor is a prior so tight that the parameter does not move. Meta-SGD's update can push a
# rate through zero: the rate then stays at the floor, and gets no gradient there (that parameter stops adapting).
# The gradient does not pass through the floor (straight-through): that would give d precision / d alpha =
# -1 / floor^2, and NaN meta-steps (on ml-100k).
MIN_RATE = 1e-8


@dataclasses.dataclass(frozen=True)
class NewtonStep:
    """The Newton inner step, used as ``inner_optimizer`` (a static, hashable configuration).

    Attributes:
      max_params: the largest number of adapted parameters accepted; the step forms their ``P x P`` Hessian per
        task, so it is meant for a small adapted set (``adapt_filter="head/output"``), not whole networks.
      solve: None (every adapted leaf takes the Newton step) or an adapt-filter spec
        (:func:`jaxrec.models.adapt_filter`: a regex of the parameter path, or a predicate) of the adapted leaves
        solved by Newton steps while the others take gradient steps.
    """

    max_params: int = 1024
    solve: Any = None

    def run(self, problem: InnerProblem, steps: int, remat: bool | str, unroll: int | bool) -> list:
        """Take ``steps`` Newton (or mixed) inner steps (the :class:`~jaxrec.core.solvers.InnerSolver` protocol).

        With ``solve`` set, a last solve follows the ``K``-th step (see the module docstring).

        Args:
          problem: the task's :class:`~jaxrec.core.solvers.InnerProblem`; ``problem.rates`` are the prior
            variances ``alpha`` (and the step sizes of the leaves that take gradient steps).
          steps: ``K``, the number of inner steps.
          remat: the remat policy of the loop (:func:`jaxrec.core.remat.iterate`).
          unroll: the unroll of the loop's ``lax.scan``.

        Returns:
          The adapted leaves (a list, in the order of ``problem.moving``).

        Raises:
          ValueError: more than ``max_params`` parameters are solved, or ``solve`` selects no adapted leaf.
        """
        diff = (problem.fixed, problem.rates, problem.theta, problem.moving)
        if self.solve is None:
            step = functools.partial(newton_step, problem.loss, self, problem.order)
            return iterate(step, diff, problem.data, problem.moving, steps, remat, unroll)
        solved = solved_leaves(self, list(problem.paths))
        step = functools.partial(solve_then_descend, problem.loss, problem.gradient, self, problem.order, solved)
        moving = iterate(step, diff, problem.data, problem.moving, steps, remat, unroll)
        # a last solve, so that the solved leaves fit the others as they are after the K-th gradient step
        return solve_part(problem.loss, self, problem.order, solved, diff, problem.data, moving)


def newton(max_params: int = 1024, solve: Any = None) -> NewtonStep:
    """The Newton (MAP) inner step (see the module docstring).

    Args:
      max_params: the largest number of adapted parameters the step accepts (it forms their Hessian per task).
      solve: None (every adapted leaf takes the Newton step), or an adapt-filter spec of the adapted leaves solved
        by Newton steps while the others take gradient steps.

    Returns:
      The :class:`NewtonStep`, to pass as the inner loop's solver.

    Raises:
      ValueError: ``max_params < 1``.
    """
    if int(max_params) < 1:
        raise ValueError(f"max_params must be >= 1, got {max_params}")
    return NewtonStep(int(max_params), solve)


def solved_leaves(solver: NewtonStep, paths: list) -> tuple[bool, ...]:
    """Which of the adapted leaves the Newton step solves.

    Args:
      solver: the :class:`NewtonStep`.
      paths: the key paths of the adapted leaves.

    Returns:
      One bool per adapted leaf.

    Raises:
      ValueError: ``solver.solve`` selects none of the adapted leaves.
    """
    if solver.solve is None:
        return tuple(True for _ in paths)
    predicate = adapt_filter(solver.solve)
    solved = tuple(bool(predicate(path, None)) for path in paths)
    if not any(solved):
        raise ValueError(f"newton(solve={solver.solve!r}) selects none of the adapted parameters")
    return solved


def solve_part(inner_loss: Callable, solver: NewtonStep, order: str, solved: tuple, diff: tuple, data, moving):
    """One Newton step on the ``solved`` leaves of ``moving``, the others held at their values.

    Args:
      inner_loss: ``inner_loss(moving, fixed, theta, data)``, the support loss.
      solver: the :class:`NewtonStep`.
      order: ``"second"`` or ``"first"``.
      solved: one bool per adapted leaf (:func:`solved_leaves`).
      diff: ``(fixed, rates, theta, prior)``, as for :func:`newton_step`, over every adapted leaf.
      data: ``(rows, mask)``, the support rows.
      moving: the adapted leaves.

    Returns:
      The adapted leaves, the solved ones updated.
    """
    fixed, rates, theta, prior = diff
    others = [m for m, s in zip(moving, solved, strict=True) if not s]

    def merge(part, rest):
        part, rest = iter(part), iter(rest)
        return [next(part) if s else next(rest) for s in solved]

    def part_loss(part, fixed, theta, data):
        return inner_loss(merge(part, others), fixed, theta, data)

    pick = lambda xs: [x for x, s in zip(xs, solved, strict=True) if s]  # noqa: E731
    part = newton_step(part_loss, solver, order, (fixed, pick(rates), theta, pick(prior)), data, pick(moving))
    return merge(part, others)


def solve_then_descend(inner_loss, gradient, solver, order, solved, diff, data, moving):
    """One mixed inner step: solve the ``solved`` leaves, then a gradient step on the others at that solution.

    Args:
      inner_loss: ``inner_loss(moving, fixed, theta, data)``, the support loss.
      gradient: the problem's gradient (:meth:`~jaxrec.core.solvers.InnerProblem.gradient`).
      solver: the :class:`NewtonStep`.
      order: ``"second"`` or ``"first"``.
      solved: one bool per adapted leaf (:func:`solved_leaves`).
      diff: ``(fixed, rates, theta, prior)``; the rates are the step sizes of the leaves not solved.
      data: ``(rows, mask)``, the support rows.
      moving: the adapted leaves.

    Returns:
      The adapted leaves after the step.
    """
    fixed, rates, theta, _ = diff
    moving = solve_part(inner_loss, solver, order, solved, diff, data, moving)
    grads = gradient(moving, fixed, theta, data)
    return [m if s else m - r * g for m, r, g, s in zip(moving, rates, grads, solved, strict=True)]


def newton_step(
    inner_loss: Callable,
    solver: NewtonStep,
    order: str,
    diff: tuple,
    data: tuple,
    moving: list,
) -> list:
    """One Newton step on ``J`` for the adapted leaves ``moving``.

    Args:
      inner_loss: ``inner_loss(moving, fixed, theta, data)``, the support loss (a mean over the rows of ``data``).
      solver: the :class:`NewtonStep`.
      order: ``"second"`` or ``"first"`` (see the module docstring).
      diff: ``(fixed, rates, theta, prior)``: the fixed leaves, the rates ``alpha`` (one per adapted leaf, scalar
        or leaf-shaped), what ``inner_loss`` takes as ``theta`` and the prior mean (the initial adapted leaves).
      data: ``(rows, mask)``, the support rows.
      moving: the adapted leaves (a list of arrays).

    Returns:
      The adapted leaves after the step (a list of arrays).

    Raises:
      ValueError: ``moving`` holds more than ``solver.max_params`` parameters.
    """
    fixed, rates, theta, prior = diff
    flat, unravel = ravel_pytree(moving)
    if flat.size > solver.max_params:
        raise ValueError(
            f"the Newton inner step adapts {flat.size} parameters, more than max_params={solver.max_params}: it "
            "forms their Hessian per task; adapt fewer (e.g. adapt_filter='head/output') or raise max_params"
        )
    prior_flat, _ = ravel_pytree(prior)
    alpha, _ = ravel_pytree(
        [jnp.broadcast_to(jnp.asarray(r, m.dtype), m.shape) for r, m in zip(rates, moving, strict=True)]
    )
    precision = 1.0 / jnp.maximum(alpha, MIN_RATE)
    _, mask = data
    n = jnp.sum(mask).astype(flat.dtype)

    def loss(v):
        return inner_loss(unravel(v), fixed, theta, data)

    # one linearisation of the gradient gives it and its Hessian-vector products (the Hessian by columns)
    grad, hvp = jax.linearize(jax.grad(loss), flat)
    hessian = jax.vmap(hvp, out_axes=1)(jnp.eye(flat.size, dtype=flat.dtype))
    offset = flat - prior_flat
    if order == "first":
        # no derivative of the loss's gradient or Hessian, nor of the path to phi (d phi / d theta = I, as first-order
        # MAML); the prior variances keep theirs, as Meta-SGD's rates do in first order (phi = theta - alpha sg(g))
        grad, hessian, offset = jax.lax.stop_gradient((grad, hessian, offset))
    system = n * hessian + jnp.diag(precision)
    residual = n * grad + precision * offset
    delta = solve(system, residual)
    return list(unravel(flat - delta))


def _host_devices_share_one_pool() -> bool:
    """Several XLA CPU devices in this process: their executables run on one intra-op thread pool."""
    return jax.default_backend() == "cpu" and jax.device_count() > 1


def solve(system: jax.Array, rhs: jax.Array) -> jax.Array:
    """``system^-1 rhs`` for one small dense system (vmapped over tasks by the caller).

    On one device this is ``jnp.linalg.solve`` (LAPACK ``getrf``/``getrs`` on CPU). With several XLA CPU devices it is
    :func:`eliminate`, in plain XLA ops: jaxlib's batched LAPACK kernels split the batch over the intra-op thread
    pool and wait for it, while every device's executable already holds one of its threads; with one device per core
    no thread is left and the step never finishes (seen with jaxlib 0.10 on 2 cores, ``--devices 2``).
    """
    if _host_devices_share_one_pool():
        return eliminate(system, rhs)
    return jnp.linalg.solve(system, rhs)


def eliminate(system: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``system x = rhs`` by Gauss-Jordan elimination with partial pivoting (``lax.fori_loop`` of rank-one
    updates): ``O(d^3)`` like LU, differentiable to any order by ``jax.grad`` through the loop.

    Args:
      system: ``[d, d]``, non-singular.
      rhs: ``[d]``.

    Returns:
      ``x`` of shape ``[d]``.
    """
    d = system.shape[-1]
    rows = jnp.arange(d)
    augmented = jnp.concatenate([system, rhs[:, None].astype(system.dtype)], axis=1)

    def step(k, a):
        pivot = jnp.argmax(jnp.where(rows >= k, jnp.abs(a[:, k]), -1.0))
        top, chosen = a[k], a[pivot]
        a = a.at[k].set(chosen).at[pivot].set(top)
        row = a[k] / a[k, k]
        a = a - jnp.where(rows == k, 0.0, a[:, k])[:, None] * row[None, :]
        return a.at[k].set(row)

    return jax.lax.fori_loop(0, d, step, augmented)[:, d]
