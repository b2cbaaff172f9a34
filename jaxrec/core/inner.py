"""The inner loop: adapt a parameter pytree to one task's support set.

MAML's inner loop (Finn et al. 2017) takes ``K`` gradient steps from the shared initialisation ``theta``:

    phi_0 = theta,    phi_{k+1} = phi_k - alpha * grad L_s(phi_k),    k = 0 .. K-1,

and returns ``phi_K``. Written with ``jax.grad`` inside ``lax.scan``, ``phi_K`` stays a differentiable function
of ``theta``, so ``jax.grad`` of any function of ``phi_K`` is the exact second-order meta-gradient

    d L_q(phi_K) / d theta = prod_{k=0}^{K-1} (I - alpha H_s(phi_k)) grad L_q(phi_K).

``order="first"`` wraps every inner update in ``stop_gradient``: then ``d phi_K / d theta = I`` and the
meta-gradient is ``grad L_q(phi_K)`` (first-order MAML). The step itself is a solver
(:mod:`jaxrec.core.solvers`): gradient steps, any optax ``GradientTransformation``, or the Newton (MAP) step of
:func:`jaxrec.newton`, each differentiated through like everything else.

:class:`InnerLoop` holds everything static about the loop (loss, steps, order, solver, adapted leaves, auxiliary
term, remat policy) as one frozen, hashable value, so that it can be a ``jit`` static argument and passed whole.
The inner rates are not in it: they are values (Meta-SGD learns them, fine-tuning tunes them), passed beside the
parameters, so that a new rate does not recompile anything.

Only the leaves selected by ``adapt_filter`` move in the inner loop (MeLU's local update of the decision layers,
Lee et al. 2019; ANIL, Raghu et al. 2020). The other leaves are held fixed inside the loop but remain inputs of
the loss, so the outer gradient still reaches them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.core.batch import zero_padding
from jaxrec.core.losses import LossFn
from jaxrec.core.params import AdaptFilter, named_filter, path_names, resolve_adapt_filter
from jaxrec.core.remat import REMAT_POLICIES
from jaxrec.core.solvers import Amortized, InnerProblem, InnerSolver, OptaxSteps, as_solver

__all__ = ["ORDERS", "InnerLoop", "adapt", "as_inner_loop", "check_inner_lr"]

ORDERS = ("second", "first")

# the keyword spelling of the InnerLoop fields that adapt, meta_loss, MetaTrainer, meta_train, ... accept
_KEYWORDS = {
    "loss_fn": "loss_fn",
    "inner_steps": "steps",
    "order": "order",
    "inner_optimizer": "solver",
    "adapt_filter": "adapt_filter",
    "inner_aux": "aux",
    "remat": "remat",
    "inner_unroll": "unroll",
    "query_loss_fn": "query_loss_fn",
}


def _frozen(tree: Any) -> Any:
    """A hashable stand-in of an adapt filter given as a bool pytree (predicates and None hash as they are)."""
    if tree is None or callable(tree) or isinstance(tree, str):
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(bool(x) for x in leaves)


@dataclasses.dataclass(frozen=True, eq=False)
class InnerLoop:
    """The inner loop of one task, as a static value.

    Attributes:
      loss_fn: ``loss_fn(params, rows, mask) -> scalar``, the support loss.
      steps: ``K``, the number of inner steps (an integer >= 0; 0 is the unadapted model).
      order: ``"second"`` (exact: differentiates through the inner gradients) or ``"first"`` (``stop_gradient``).
      solver: how a step moves the adapted leaves (:mod:`jaxrec.core.solvers`): None for gradient steps at the
        inner rates, an optax transformation, or :func:`jaxrec.newton`.
      adapt_filter: which leaves adapt: None (all), a predicate ``(path, leaf) -> bool``, or a bool pytree.
      aux: an optional ``aux(phi, theta) -> scalar`` added to the support loss (e.g. :func:`jaxrec.l2_to_init`).
      remat: what the backward pass keeps of the loop (:func:`jaxrec.core.remat.iterate`): ``False``, ``True`` /
        ``"step"``, ``"sqrt"`` or ``"recompute"``.
      unroll: the unroll of the loop's ``lax.scan`` (``True``: fully; the computation is the same).
      query_loss_fn: the outer loss ``L_q(phi)`` on the query rows, or None for ``loss_fn`` (MAML's choice). A
        different outer loss meta-trains the initialisation for the query objective that is wanted (a ranking
        loss) while the inner loop keeps a support loss that is cheap or exact to solve (the implicit-ALS
        objective, solved by one Newton step); the meta-gradient stays exact.

    Raises:
      TypeError: ``loss_fn`` (or a given ``query_loss_fn``) is not callable, or ``solver`` is not a solver
        (:func:`~jaxrec.core.solvers.as_solver`).
      ValueError: ``steps`` is not an integer >= 0, or ``order`` or ``remat`` is unknown.
    """

    loss_fn: LossFn
    steps: int = 1
    order: str = "second"
    solver: Any = None
    adapt_filter: AdaptFilter = None
    aux: Callable[[Any, Any], jax.Array] | None = None
    remat: bool | str = False
    unroll: int | bool = 1
    query_loss_fn: LossFn | None = None

    def __post_init__(self):
        if not callable(self.loss_fn):
            raise TypeError(f"InnerLoop: loss_fn must be callable, got {self.loss_fn!r}")
        if self.query_loss_fn is not None and not callable(self.query_loss_fn):
            raise TypeError(f"InnerLoop: query_loss_fn must be callable or None, got {self.query_loss_fn!r}")
        steps = self.steps
        integral = isinstance(steps, numbers.Integral) or (
            isinstance(steps, numbers.Real) and float(steps).is_integer()
        )
        if isinstance(steps, bool) or not integral:
            raise ValueError(f"inner_steps must be an integer >= 0, got {steps!r}")
        if int(steps) < 0:
            raise ValueError(f"inner_steps must be >= 0, got {steps}")
        object.__setattr__(self, "steps", int(steps))
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}: expected one of {ORDERS}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}: expected one of {REMAT_POLICIES}")
        object.__setattr__(self, "solver", as_solver(self.solver))
        if isinstance(self.adapt_filter, str):  # "all", "head" or a regex of the parameter path
            object.__setattr__(self, "adapt_filter", named_filter(self.adapt_filter))

    def _key(self) -> tuple:
        return (self.loss_fn, self.steps, self.order, self.solver, _frozen(self.adapt_filter), self.aux,
                self.remat, self.unroll, self.query_loss_fn)  # fmt: skip

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InnerLoop) and self._key() == other._key()

    @property
    def outer_loss_fn(self) -> LossFn:
        """The loss of the query rows after adaptation: ``query_loss_fn``, or ``loss_fn`` when it is None."""
        return self.loss_fn if self.query_loss_fn is None else self.query_loss_fn

    def replace(self, **changes: Any) -> InnerLoop:
        """A copy with some fields changed (``dataclasses.replace``).

        Args:
          **changes: new values of fields, by field name.

        Returns:
          The new :class:`InnerLoop` (validated like any other).
        """
        return dataclasses.replace(self, **changes)


def as_inner_loop(inner: InnerLoop | None = None, **options: Any) -> InnerLoop:
    """``inner``, or an :class:`InnerLoop` built from the keyword spelling of its fields.

    The keywords are those of the functions that take an inner loop: ``loss_fn``, ``inner_steps``, ``order``,
    ``inner_optimizer`` (the solver), ``adapt_filter``, ``inner_aux``, ``remat``, ``inner_unroll``,
    ``query_loss_fn``.

    Args:
      inner: an :class:`InnerLoop`, or None to build one from ``options``.
      **options: inner-loop fields in their keyword spelling; given with ``inner``, they replace its fields.

    Returns:
      The :class:`InnerLoop`.

    Raises:
      TypeError: an unknown option; no ``inner`` and no ``loss_fn`` or ``inner_steps``; ``inner`` is not an
        :class:`InnerLoop`.
    """
    unknown = sorted(set(options) - set(_KEYWORDS))
    if unknown:
        raise TypeError(f"unknown inner-loop option(s) {unknown}; expected some of {sorted(_KEYWORDS)}")
    fields = {_KEYWORDS[k]: v for k, v in options.items()}
    if inner is None:
        if "loss_fn" not in fields:
            raise TypeError("an inner loop needs loss_fn (or pass inner=jaxrec.InnerLoop(...))")
        if "steps" not in fields:
            raise TypeError("an inner loop needs inner_steps (or pass inner=jaxrec.InnerLoop(...))")
        return InnerLoop(**fields)
    if not isinstance(inner, InnerLoop):
        raise TypeError(f"inner must be a jaxrec.InnerLoop, got {type(inner).__name__}")
    return inner.replace(**fields) if fields else inner


def check_inner_lr(inner_lr: Any) -> None:
    """Check that a concrete scalar inner rate is finite and positive.

    A 0-d array (``jnp.array(0.01)``) is checked to be finite only: an array is how a rate of 0 (no adaptation) or
    a learned rate that a Meta-SGD update took below 0 (a Newton step floors it) is passed. A traced or
    per-parameter rate is not checked.

    Args:
      inner_lr: the inner rate.

    Raises:
      ValueError: a number is not finite or not positive, or a 0-d array is not finite.
    """
    concrete_array = isinstance(inner_lr, np.ndarray | jax.Array) and not isinstance(inner_lr, jax.core.Tracer)
    if concrete_array and np.ndim(inner_lr) == 0 and not math.isfinite(np.asarray(inner_lr).item()):
        raise ValueError(f"inner_lr must be finite, got {inner_lr!r}")
    if isinstance(inner_lr, numbers.Real) and not isinstance(inner_lr, bool):
        if not math.isfinite(float(inner_lr)) or float(inner_lr) <= 0:
            raise ValueError(f"inner_lr must be a finite positive number, got {inner_lr!r}")


@dataclasses.dataclass(frozen=True)
class _Partition:
    """Splits a params pytree into the leaves that adapt and those that stay fixed, and joins them back."""

    treedef: Any
    adapted: tuple[bool, ...]

    @classmethod
    def of(cls, params: Any, adapt_filter: AdaptFilter) -> _Partition:
        return cls(jax.tree.structure(params), resolve_adapt_filter(params, adapt_filter))

    def split(self, tree: Any) -> tuple[list, list]:
        leaves = self.treedef.flatten_up_to(tree)
        moving = [leaf for leaf, a in zip(leaves, self.adapted, strict=True) if a]
        fixed = [leaf for leaf, a in zip(leaves, self.adapted, strict=True) if not a]
        return moving, fixed

    def join(self, moving: list, fixed: list) -> Any:
        moving_it, fixed_it = iter(moving), iter(fixed)
        leaves = [next(moving_it) if a else next(fixed_it) for a in self.adapted]
        return self.treedef.unflatten(leaves)


def _learning_rates(inner_lr: Any, part: _Partition) -> list:
    """``inner_lr`` as one entry per adapted leaf: a scalar is shared, a params-shaped pytree is per parameter."""
    if not isinstance(inner_lr, Mapping | list | tuple) and jnp.ndim(inner_lr) == 0:
        return [inner_lr] * sum(part.adapted)
    try:
        moving, _ = part.split(inner_lr)
    except ValueError as err:
        raise ValueError("a per-parameter inner_lr must be a pytree with the structure of params") from err
    return moving


def _rates_for(solver: Any, inner_lr: Any, part: _Partition) -> list:
    """One rate per adapted leaf; an optax or amortised solver needs none, every other solver needs ``inner_lr``."""
    if inner_lr is None:
        if isinstance(solver, OptaxSteps | Amortized):
            return []
        raise ValueError(
            f"inner_lr is needed by the inner solver {type(solver).__name__} (step sizes or prior variances)"
        )
    return [jnp.asarray(r) for r in _learning_rates(inner_lr, part)]


def adapt(
    params: Any,
    rows: Mapping[str, jax.Array],
    mask: jax.Array,
    inner: InnerLoop | None = None,
    *,
    inner_lr: Any,
    **options: Any,
) -> Any:
    """Adapt ``params`` to one task: ``inner.steps`` steps of ``inner.solver`` on ``inner.loss_fn(params, rows, mask)``.

    Args:
      params: the initialisation ``theta`` (any pytree).
      rows: the task's support rows, a dict of arrays ``[rows, ...]``.
      mask: bool ``[rows]``; false rows are padding. A task whose mask is all false has a zero loss and zero
        gradient, so it comes back unadapted (``phi_K = theta``): it is scored with the shared initialisation.
      inner: the :class:`InnerLoop`; or give its fields as keywords (``loss_fn=..., inner_steps=..., order=...,
        inner_optimizer=..., adapt_filter=..., inner_aux=..., remat=...``, see :func:`as_inner_loop`).
      inner_lr: the inner rate ``alpha``: a scalar, or a params-shaped pytree of per-parameter rates (Meta-SGD).
        Step sizes of gradient steps; prior variances of the Newton step (:func:`jaxrec.newton`); unused by an
        optax solver.
      **options: inner-loop fields as keywords.

    Returns:
      ``phi_K``, a pytree with the structure of ``params``.

    Raises:
      TypeError: an unknown inner-loop option, or a missing ``loss_fn`` / ``inner_steps`` without ``inner``.
      ValueError: a concrete scalar ``inner_lr`` is not finite and positive, a per-parameter ``inner_lr`` does
        not have the structure of ``params``, or the adapt filter selects no parameter (``steps > 0``).
    """
    inner = as_inner_loop(inner, **options)
    check_inner_lr(inner_lr)
    if inner.steps == 0:
        return params
    part = _Partition.of(params, inner.adapt_filter)
    moving0, fixed = part.split(params)
    rows = zero_padding(rows, mask)
    if not moving0:  # e.g. a typo in a path pattern: the loop would run and silently adapt nothing
        names = ["/".join(path_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"the adapt filter selects no parameter (the parameters: {shown}): nothing would adapt; for a model "
            "used as it is, take no inner step (inner_steps=0)"
        )
    loss_fn, aux = inner.loss_fn, inner.aux

    # everything a step reads is an explicit argument, so that remat="recompute" can replay it in its backward
    # pass: fixed leaves, rates and theta (for the auxiliary term) are differentiable, the rows are data
    def inner_loss(moving, fixed, theta, data):
        phi = part.join(moving, fixed)
        loss = loss_fn(phi, *data)
        if aux is not None:
            loss = loss + aux(phi, theta)
        return loss

    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    problem = InnerProblem(
        loss=inner_loss,
        order=inner.order,
        moving=moving0,
        fixed=fixed,
        rates=_rates_for(inner.solver, inner_lr, part),
        theta=params if aux is not None else None,
        data=(rows, mask),
        paths=tuple(p for p, a in zip(paths, part.adapted, strict=True) if a),
        join=part.join,
        split=part.split,
    )
    solver: InnerSolver = inner.solver
    return part.join(solver.run(problem, inner.steps, inner.remat, inner.unroll), fixed)
