"""Inner solvers: how the adapted leaves of one task move, behind one small protocol.

A solver is a static, hashable value with one method,

    solver.run(problem, steps, remat, unroll) -> moving,

that takes an :class:`InnerProblem` (the task's support loss over the adapted leaves, their starting values and
rates, the order of differentiation) and returns the adapted leaves after ``steps`` inner steps. Like an optax
transformation it holds configuration only; everything it differentiates arrives in ``problem``, so ``jax.grad``
through ``run`` is the exact meta-gradient (second order), or its first-order approximation when
``problem.order == "first"`` (the solver puts ``stop_gradient`` on what depends on the inner gradients).

Solvers here: :class:`GradientSteps` (plain SGD at the inner rates, MAML's inner loop), :class:`OptaxSteps` (any
optax transformation, differentiated through), :class:`Amortized` (no inner gradient: a meta-learned encoder
computes the adapted leaves from the support set, as neural processes do), and, in :mod:`jaxrec.core.newton`, the
Newton (MAP) step and its mix with gradient steps. :func:`as_solver` turns what a user passes (``None``, an optax
transformation, a solver) into one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax

from jaxrec.core.remat import iterate

__all__ = ["Amortized", "GradientSteps", "InnerProblem", "InnerSolver", "OptaxSteps", "as_solver"]


@dataclasses.dataclass(frozen=True)
class InnerProblem:
    """One task's inner problem over its adapted leaves (lists of arrays, in ``jax.tree.leaves`` order).

    Attributes:
      loss: ``loss(moving, fixed, theta, data) -> scalar``, the support loss (plus any auxiliary term).
      order: ``"second"`` or ``"first"``.
      moving: the adapted leaves' starting values (the initialisation ``theta``'s).
      fixed: the leaves held fixed in the loop (still inputs of the loss, so the outer gradient reaches them).
      rates: one inner rate per adapted leaf (scalar or leaf-shaped): step sizes, or prior variances (Newton).
      theta: what ``loss`` receives as the initialisation (for auxiliary terms), or None.
      data: ``(rows, mask)``, the padded-and-zeroed support rows.
      paths: the key paths of the adapted leaves (for solvers that treat some leaves differently).
      join: ``join(moving, fixed) -> params``, the whole parameter pytree (for solvers that read it whole), or None.
      split: ``split(params) -> (moving, fixed)``, the inverse of ``join``, or None.
    """

    loss: Callable
    order: str
    moving: list
    fixed: list
    rates: list
    theta: Any
    data: tuple
    paths: tuple
    join: Callable | None = None
    split: Callable | None = None

    def gradient(self, moving: list, fixed: list, theta: Any, data: tuple) -> list:
        """The gradient of ``loss`` with respect to ``moving``.

        In first order (``order == "first"``) the gradient is wrapped in ``stop_gradient``: a constant of the
        outer derivative.

        Args:
          moving: the adapted leaves at which to differentiate.
          fixed: the leaves held fixed in the loop.
          theta: what ``loss`` receives as the initialisation, or None.
          data: ``(rows, mask)``, the support rows.

        Returns:
          One gradient per adapted leaf (a list, in the order of ``moving``).
        """
        grads = jax.grad(self.loss)(moving, fixed, theta, data)
        return jax.lax.stop_gradient(grads) if self.order == "first" else grads


@runtime_checkable
class InnerSolver(Protocol):
    """The protocol of inner solvers: ``run(problem, steps, remat, unroll) -> adapted leaves``."""

    def run(self, problem: InnerProblem, steps: int, remat: bool | str, unroll: int | bool) -> list:
        """Adapt the leaves of ``problem`` by ``steps`` inner steps.

        Args:
          problem: the task's :class:`InnerProblem`.
          steps: ``K``, the number of inner steps.
          remat: the remat policy of the loop (:func:`jaxrec.core.remat.iterate`).
          unroll: the unroll of the loop's ``lax.scan``.

        Returns:
          The adapted leaves (a list, in the order of ``problem.moving``).
        """
        ...


@dataclasses.dataclass(frozen=True)
class GradientSteps:
    """MAML's inner loop (Finn et al. 2017): plain gradient steps at the inner rates.

    Each step is ``phi_{k+1} = phi_k - alpha * grad L_s(phi_k)``, with ``alpha`` the inner rate of each leaf (a
    scalar, or per parameter with Meta-SGD).
    """

    def run(self, problem: InnerProblem, steps: int, remat: bool | str, unroll: int | bool) -> list:
        """Take ``steps`` gradient steps on ``problem`` (the :class:`InnerSolver` protocol).

        Args:
          problem: the task's :class:`InnerProblem`; ``problem.rates`` are the step sizes.
          steps: ``K``, the number of inner steps.
          remat: the remat policy of the loop (:func:`jaxrec.core.remat.iterate`).
          unroll: the unroll of the loop's ``lax.scan``.

        Returns:
          The adapted leaves ``phi_K`` (a list, in the order of ``problem.moving``).
        """

        def step(diff, data, moving):
            fixed, rates, theta = diff
            grads = problem.gradient(moving, fixed, theta, data)
            return [p - lr * g for p, lr, g in zip(moving, rates, grads, strict=True)]

        diff = (problem.fixed, problem.rates, problem.theta)
        return iterate(step, diff, problem.data, problem.moving, steps, remat, unroll)


@dataclasses.dataclass(frozen=True)
class OptaxSteps:
    """Inner steps of an optax transformation on the support loss, differentiated through.

    A task with no support row (a padding task, a user with no interaction yet) takes no step and comes back
    unadapted, its gradients kept away from the transformation. Use ``eps_root > 0`` with Adam, whose square root
    has no derivative at 0: without it, an entry whose support gradient is exactly 0 in a task that has support rows
    (an embedding row no support row reads) makes the meta-gradient NaN (``0 * inf``), and the step is skipped as
    non-finite. The inner rates are not used: the transformation carries its own.

    Attributes:
      transformation: the optax ``GradientTransformation`` applied at each inner step.
    """

    transformation: optax.GradientTransformation

    def run(self, problem: InnerProblem, steps: int, remat: bool | str, unroll: int | bool) -> list:
        """Apply ``steps`` updates of the transformation to ``problem`` (the :class:`InnerSolver` protocol).

        The optimiser state starts from ``transformation.init`` of the starting leaves; in first order the updates
        are wrapped in ``stop_gradient``.

        Args:
          problem: the task's :class:`InnerProblem` (its rates are not used).
          steps: ``K``, the number of inner steps.
          remat: the remat policy of the loop (:func:`jaxrec.core.remat.iterate`).
          unroll: the unroll of the loop's ``lax.scan``.

        Returns:
          The adapted leaves (a list, in the order of ``problem.moving``).
        """
        tx = self.transformation

        def step(diff, data, carry):
            fixed, theta = diff
            moving, opt_state = carry
            grads = problem.gradient(moving, fixed, theta, data)
            # without support every gradient is exactly 0, where Adam's square root has no derivative: the branch
            # the task discards below gets 1 instead, so that its zero cotangent meets a finite derivative
            has_support = jnp.any(data[1])
            grads = [jnp.where(has_support, g, jnp.ones_like(g)) for g in grads]
            updates, opt_state = tx.update(grads, opt_state, moving)
            if problem.order == "first":
                updates = jax.lax.stop_gradient(updates)
            return optax.apply_updates(moving, updates), opt_state

        carry = (problem.moving, tx.init(problem.moving))
        moving, _ = iterate(step, (problem.fixed, problem.theta), problem.data, carry, steps, remat, unroll)
        has_support = jnp.any(problem.data[1])
        return [jnp.where(has_support, m, start) for m, start in zip(moving, problem.moving, strict=True)]


@dataclasses.dataclass(frozen=True)
class Amortized:
    """Amortised adaptation: the adapted leaves are a meta-learned function of the support set, not of gradients.

    A neural process (Garnelo et al. 2018; TaNP, Lin et al. 2021) encodes each support row and pools the codes
    into the task's representation, ``phi = encode(theta, S)``; meta-training differentiates the query loss
    through ``encode`` into the encoder's weights, which live among the fixed leaves. There is no inner gradient,
    so the order of differentiation changes nothing (the meta-gradient is exact in both) and one encoding is the
    whole adaptation, whatever the number of steps.

    Attributes:
      encode: ``encode(params, rows, mask) -> params``: the whole parameter pytree with the adapted leaves
        computed from the support rows (padding rows zeroed and masked out); hashable, as the inner loop is a
        ``jit`` static value.
    """

    encode: Callable

    def run(self, problem: InnerProblem, steps: int, remat: bool | str, unroll: int | bool) -> list:
        """Encode the support set into the adapted leaves (the :class:`InnerSolver` protocol).

        Args:
          problem: the task's :class:`InnerProblem` (its ``join`` and ``split`` are needed; its loss, rates and
            order are not used).
          steps: the inner steps (>= 1; one encoding is the adaptation).
          remat: unused (nothing is iterated).
          unroll: unused.

        Returns:
          The adapted leaves (a list, in the order of ``problem.moving``).

        Raises:
          ValueError: if ``problem`` has no ``join`` / ``split``.
        """
        if problem.join is None or problem.split is None:
            raise ValueError("Amortized needs the problem's join and split (jaxrec.adapt provides them)")
        params = problem.join(problem.moving, problem.fixed)
        moving, _ = problem.split(self.encode(params, *problem.data))
        return moving


def as_solver(solver: Any) -> InnerSolver:
    """Turn what a user passes as the inner optimiser into an :class:`InnerSolver`.

    Args:
      solver: ``None`` (gives :class:`GradientSteps`), an optax ``GradientTransformation`` (gives
        :class:`OptaxSteps`), or a solver (anything with ``run``, e.g. :func:`jaxrec.newton`, returned as it is).

    Returns:
      The solver.

    Raises:
      TypeError: ``solver`` is none of these.
    """
    if solver is None:
        return GradientSteps()
    if isinstance(solver, InnerSolver):
        return solver
    if isinstance(solver, optax.GradientTransformation):
        return OptaxSteps(solver)
    raise TypeError(
        f"an inner solver must be None, an optax GradientTransformation or have a run() method, got {solver!r}"
    )
