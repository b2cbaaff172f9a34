"""Meta-training: one jit-compiled meta-step, and ``meta_train`` looping it over task batches.

The meta-step maps ``(state, batch) -> (state, metrics)``. It is compiled once per batch *shape* (tasks,
support rows, query rows), never per task, with the state's buffers donated so that parameters are updated in
place. Metrics stay on the device; nothing is copied to the host per step unless a callback or
``nonfinite="raise"`` asks for it.

Non-finite guard: when the meta-loss or any meta-gradient entry is NaN or inf, the step leaves the parameters
and the optimiser state as they were and counts the step in ``state.skipped``. A poisoned task therefore never
reaches the parameters.

Row-sparse outer updates (``sparse_tables``, :mod:`jaxrec.scale.row_sparse`): the named embedding tables are
localised to the rows the whole batch reads before the meta-objective runs, so the meta-gradient, the non-finite
guard, the gradient norm and the outer update (``sparse_optimizer``, scattered into the donated tables) all cost
``O(rows read)`` instead of ``O(V)``; the optax ``optimizer`` handles every other parameter.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.core.batch import TaskBatch, validate_batch
from jaxrec.core.errors import JaxrecError
from jaxrec.core.inner import InnerLoop, as_inner_loop, check_inner_lr
from jaxrec.core.metasgd import MetaSGDParams, init_metasgd
from jaxrec.core.objectives import check_algorithm, meta_value_and_grad, no_inner_step, reptile_direction
from jaxrec.core.params import check_differentiable, has_task_initialisation
from jaxrec.core.solvers import Amortized, OptaxSteps
from jaxrec.scale.local_embeddings import Tables, local_tables_context
from jaxrec.scale.row_sparse import RowSparseOptimizer, gather_rows, localize_batch, merge_tables, split_tables
from jaxrec.scale.sharding import default_mesh, replicate, shard_batch

__all__ = ["run_steps", "MetaTrainState", "MetaTrainer", "NonFiniteError", "SparseOuterState", "meta_train"]

logger = logging.getLogger(__name__)

NONFINITE_MODES = ("skip", "raise")


class NonFiniteError(JaxrecError, FloatingPointError):
    """A meta-step produced a NaN or inf loss or meta-gradient (raised with ``nonfinite="raise"``).

    Args:
      step: the index of the meta-step.
      batch_index: the index of the batch in the iterable being trained on.
      users: the task ids (users) of the batch's real tasks, or None when it has no ``task_id``.
      loss: the meta-loss of the step.

    Attributes:
      step: as given.
      batch_index: as given.
      users: as given.
      loss: as given.
    """

    def __init__(self, step: int, batch_index: int, users: list[int] | None, loss: float):
        self.step, self.batch_index, self.users, self.loss = step, batch_index, users, loss
        who = f"users (task ids) {users}" if users is not None else "tasks without task_id"
        super().__init__(
            f"non-finite meta-loss or meta-gradient at step {step} (batch {batch_index}, loss={loss}); "
            f"the batch holds {who}. The parameters were left unchanged."
        )


@flax.struct.dataclass
class MetaTrainState:
    """Everything a meta-step updates.

    Attributes:
      step: int32 scalar, the number of meta-steps taken (skipped ones included).
      params: the meta-parameters (a :class:`~jaxrec.MetaSGDParams` for Meta-SGD).
      opt_state: the outer optimiser state; a :class:`SparseOuterState` with ``MetaTrainer(sparse_tables=...)``.
      skipped: int32 scalar, the number of steps dropped for a non-finite loss or meta-gradient.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array


class SparseOuterState(NamedTuple):
    """The outer optimiser state with row-sparse tables.

    Attributes:
      optax_state: the state of the optax optimiser over every other parameter (the tables are ``None`` holes in
        its trees).
      sparse_state: the state of the row-sparse optimiser over the tables.
    """

    optax_state: Any
    sparse_state: Any


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class MetaTrainer:
    """A meta-learning configuration and its compiled meta-step.

    Args:
      inner: the :class:`~jaxrec.InnerLoop` (or give its fields as keywords: ``loss_fn=..., inner_steps=...,
        order=..., inner_optimizer=..., adapt_filter=..., inner_aux=..., remat=...``).
      inner_lr: the inner rate (scalar), or the starting value of Meta-SGD's per-parameter rates.
      algorithm: ``"maml"`` (of ``inner.order``), ``"reptile"`` or ``"metasgd"``.
      optimizer: the outer (meta) optax optimiser.
      task_chunk: evaluate the batch this many tasks at a time, accumulating the gradient.
      mesh: a ``jax.sharding.Mesh`` whose axis ``"tasks"`` shards the task axis, or None.
      objective_options: further keyword arguments of the meta-objective (``local_embeddings``).
      sparse_tables: ``{table path: row key}`` (e.g. :func:`jaxrec.embedding_tables`) of tables whose outer update
        is row-sparse with ``sparse_optimizer``, at a cost that does not depend on their size
        (:mod:`jaxrec.scale.row_sparse`); ``optimizer`` updates the rest. Paths are those of the model's params
        (for Meta-SGD the rates of the tables are updated row-sparsely too).
      sparse_optimizer: the row-sparse optimiser of ``sparse_tables`` (:func:`jaxrec.row_sparse_sgd` or
        :func:`jaxrec.row_sparse_adam`). Row-sparse SGD equals dense SGD; row-sparse Adam is *lazy* Adam.
      after_step: an update of the parameters that is not a gradient step, run inside the compiled step after the
        outer update, ``after_step(params, new_params, batch, inner_lr) -> new_params`` (``params``: before the
        step); e.g. MAMO's memory writes (:func:`jaxrec.models.mamo.memory_write`). A step dropped for a non-finite
        loss or gradient drops its write too, and a non-finite write drops the step. Not with ``sparse_tables``.
      **inner_options: inner-loop fields as keywords.

    Attributes:
      inner: the :class:`~jaxrec.InnerLoop`.
      inner_lr: as given.
      algorithm: as given.
      optimizer: the outer optax optimiser (default ``optax.adam(1e-3)``).
      task_chunk: as given.
      mesh: as given.
      objective_options: as given (a dict).
      sparse_tables: as given, with each path a tuple.
      sparse_optimizer: as given.
      after_step: as given.
      traces: how many times the meta-step was traced (= compiled): once per batch shape.

    Raises:
      ValueError: an unknown algorithm or order; a bad concrete ``inner_lr``; ``"metasgd"`` without
        ``inner_lr`` or with an inner solver that takes no rate (optax, amortised); ``"reptile"`` or ``"metasgd"``
        without inner steps; a non-positive ``task_chunk``; ``sparse_tables`` without ``sparse_optimizer`` or the
        reverse; ``after_step`` with ``sparse_tables``.
      TypeError: a bad inner-loop option (:func:`jaxrec.core.inner.as_inner_loop`).
    """

    def __init__(
        self,
        inner: InnerLoop | None = None,
        *,
        inner_lr: Any = None,
        algorithm: str = "maml",
        optimizer: optax.GradientTransformation | None = None,
        task_chunk: int | None = None,
        mesh: Any = None,
        objective_options: dict | None = None,
        sparse_tables: Tables | None = None,
        sparse_optimizer: RowSparseOptimizer | None = None,
        after_step: Callable | None = None,
        **inner_options: Any,
    ):
        self.inner = as_inner_loop(inner, **inner_options)
        check_algorithm(algorithm, self.inner.order)
        check_inner_lr(inner_lr)
        if algorithm == "metasgd" and inner_lr is None:
            raise ValueError("algorithm='metasgd' needs inner_lr, the starting value of the per-parameter rates")
        if algorithm == "metasgd" and isinstance(self.inner.solver, OptaxSteps | Amortized):
            # the rates would get no gradient and stay at their start: MAML run under Meta-SGD's name
            raise ValueError(
                f"algorithm='metasgd' meta-learns per-parameter inner rates, which the inner solver "
                f"{type(self.inner.solver).__name__} does not use (an optax transformation carries its own rate, an "
                "encoding takes no step): use algorithm='maml'"
            )
        if algorithm in ("reptile", "metasgd") and self.inner.steps == 0:
            raise ValueError(no_inner_step(algorithm))
        if task_chunk is not None and (isinstance(task_chunk, bool) or int(task_chunk) <= 0):
            raise ValueError(f"task_chunk must be a positive number of tasks, got {task_chunk!r}")
        self._inner_lr = inner_lr
        self.algorithm = algorithm
        self.optimizer = optax.adam(1e-3) if optimizer is None else optimizer
        self.task_chunk = task_chunk
        self.mesh = mesh
        self.objective_options = dict(objective_options or {})
        self.sparse_tables = sparse_tables
        self.sparse_optimizer = sparse_optimizer
        if self.sparse_tables and self.sparse_optimizer is None:
            raise ValueError("sparse_tables needs a sparse_optimizer (jaxrec.row_sparse_sgd or row_sparse_adam)")
        if self.sparse_optimizer is not None and not self.sparse_tables:
            raise ValueError("sparse_optimizer given without sparse_tables: name the tables it updates")
        if self.sparse_tables:
            self.sparse_tables = {tuple(path): key for path, key in self.sparse_tables.items()}
        if after_step is not None and self.sparse_tables:
            raise ValueError("after_step is not supported with row-sparse tables (sparse_tables)")
        self.after_step = after_step
        self.traces = 0  # how many times the meta-step was traced (= compiled): once per batch shape
        self._step = jax.jit(self._meta_step, donate_argnums=(0,))

    @property
    def inner_lr(self) -> Any:
        """The inner rate (Meta-SGD: the starting rates). It is a constant of the compiled step, so it may change
        only before the first step is compiled."""
        return self._inner_lr

    @inner_lr.setter
    def inner_lr(self, value: Any) -> None:
        same = value is self._inner_lr or (isinstance(value, float | int) and value == self._inner_lr)
        if self.traces and not same:
            raise ValueError(
                "MetaTrainer.inner_lr is compiled into the meta-step, which already ran: make a new MetaTrainer"
            )
        check_inner_lr(value)
        self._inner_lr = value

    # -- state -------------------------------------------------------------------------------------------
    def init(self, params: Any) -> MetaTrainState:
        """A fresh state for ``params``, placed like :meth:`place` does.

        The params are copied, so the caller's arrays survive buffer donation. With ``algorithm="metasgd"``
        plain params get per-parameter rates set to ``inner_lr``.

        Args:
          params: the initial meta-parameters.

        Returns:
          The :class:`MetaTrainState` at step 0.

        Raises:
          ValueError: :class:`~jaxrec.MetaSGDParams` given to an algorithm other than ``"metasgd"``; row-sparse
            tables with params that choose their initialisation per task (GroupedParams).
          TypeError: a leaf of ``params`` is not floating-point (a meta-gradient algorithm).
        """
        if self.algorithm == "metasgd":
            params = init_metasgd(params, self.inner_lr)
        elif isinstance(params, MetaSGDParams):
            raise ValueError(f"MetaSGDParams given to algorithm {self.algorithm!r}; pass params.params")
        # fresh, strongly typed copies: weak-typed leaves (jnp.array(0.2)) would retrace the step after the first
        # call, whose outputs are strongly typed
        params = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), params)
        if self.algorithm != "reptile":  # Reptile takes no outer gradient: a leaf it does not adapt may be anything
            check_differentiable(params)
        if self.sparse_tables:
            rest, tables = split_tables(params, self._state_tables(params))
            opt_state = SparseOuterState(self.optimizer.init(rest), self.sparse_optimizer.init(tables))
        else:
            opt_state = self.optimizer.init(params)
        state = MetaTrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            skipped=jnp.zeros((), jnp.int32),
        )
        return self.place(state)

    def _state_tables(self, params: Any) -> dict:
        """``sparse_tables`` as paths of the state's params (Meta-SGD: the initialisation's and the rates' tables)."""
        if has_task_initialisation(params.params if isinstance(params, MetaSGDParams) else params):
            raise ValueError("row-sparse outer updates (sparse_tables) do not support GroupedParams")
        if isinstance(params, MetaSGDParams):
            return {
                (field,) + path: key for field in ("params", "inner_lr") for path, key in self.sparse_tables.items()
            }
        return dict(self.sparse_tables)

    def place(self, state: MetaTrainState) -> MetaTrainState:
        """Put a state on the mesh (replicated) or, without one, on the default device.

        Args:
          state: the :class:`MetaTrainState` (e.g. a restored checkpoint).

        Returns:
          The placed state.
        """
        if self.mesh is not None:
            return replicate(state, self.mesh)
        return jax.device_put(state)

    # -- the step ----------------------------------------------------------------------------------------
    def _objective(self, params: Any, batch: TaskBatch, inner_lr: Any) -> tuple[jax.Array, Any]:
        """``(meta-loss, meta-gradient)`` (Reptile: its pseudo-gradient) of ``params`` on ``batch``."""
        if self.algorithm == "reptile":
            return reptile_direction(params, batch, self.inner, inner_lr=inner_lr, **self.objective_options)
        return meta_value_and_grad(
            params, batch, self.inner, inner_lr=inner_lr, task_chunk=self.task_chunk, **self.objective_options
        )

    def _meta_step(self, state: MetaTrainState, batch: TaskBatch):
        self.traces += 1  # runs at trace time only
        if self.sparse_tables:
            return self._sparse_meta_step(state, batch)
        loss, grads = self._objective(state.params, batch, self.inner_lr)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        # a non-finite gradient would turn the optimiser state into NaN too: zero it before the update
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, opt_state = self.optimizer.update(safe_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if self.after_step is not None:  # a write that is not finite drops the step like a non-finite gradient
            params = self.after_step(state.params, params, batch, self.inner_lr)
            finite = finite & _all_finite(params)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = MetaTrainState(
            step=state.step + 1,
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = {"loss": loss, "finite": finite, "grad_norm": optax.tree.norm(safe_grads)}
        return new_state, metrics

    def _sparse_meta_step(self, state: MetaTrainState, batch: TaskBatch):
        """The meta-step with row-sparse tables: nothing below touches more than the batch's rows of a table."""
        tables = self._state_tables(state.params)
        local_params, local_batch, index = localize_batch(state.params, batch, tables)
        # a params-shaped inner learning rate (per-parameter rates) is localised like the parameters
        inner_lr = gather_rows(self.inner_lr, index)
        with local_tables_context():
            loss, grads = self._objective(local_params, local_batch, inner_lr)
        finite = jnp.isfinite(loss) & _all_finite(grads)  # the local tables: [U, E] rows, not [V, E]
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        rest_grads, row_grads = split_tables(safe_grads, tables)
        rest, table_params = split_tables(state.params, tables)
        optax_state, sparse_state = state.opt_state
        updates, new_optax_state = self.optimizer.update(rest_grads, optax_state, rest)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        rest = jax.tree.map(keep, optax.apply_updates(rest, updates), rest)
        # commit=False (non-finite step) writes no row and leaves the row-sparse state as it was
        table_params, sparse_state = self.sparse_optimizer.update(
            row_grads, sparse_state, table_params, index, commit=finite
        )
        new_state = MetaTrainState(
            step=state.step + 1,
            params=merge_tables(rest, table_params),
            opt_state=SparseOuterState(jax.tree.map(keep, new_optax_state, optax_state), sparse_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        # rows outside the batch have a zero gradient and padding slots a zero one: the dense gradient's norm
        metrics = {"loss": loss, "finite": finite, "grad_norm": optax.tree.norm(safe_grads)}
        return new_state, metrics

    def lower(self, state: MetaTrainState, batch: TaskBatch):
        """The meta-step lowered for these shapes, nothing run.

        Args:
          state: a :class:`MetaTrainState` of the shapes to compile for.
          batch: a :class:`~jaxrec.TaskBatch` of the shapes to compile for (sharded on the mesh, if any).

        Returns:
          The ``jax.stages.Lowered`` meta-step (``.compile()`` for memory and cost analyses).
        """
        return self._step.lower(state, self._step_input(batch))

    def step(self, state: MetaTrainState, batch: TaskBatch) -> tuple[MetaTrainState, dict]:
        """One meta-update.

        Args:
          state: the :class:`MetaTrainState`. It is donated: use the returned state, not the one passed in.
          batch: the :class:`~jaxrec.TaskBatch` (sharded on the mesh, if any).

        Returns:
          ``(state, metrics)``: the new state and the device scalars ``loss``, ``finite`` and ``grad_norm``.

        Raises:
          BatchShapeError: the batch's arrays and masks disagree.
        """
        validate_batch(batch)
        return self._step(state, self._step_input(batch))

    def _step_input(self, batch: TaskBatch) -> TaskBatch:
        """The batch as the compiled step takes it: sharded on the mesh, if any, and without its task ids unless
        ``after_step`` reads them (errors name users host-side), so that a batch with them and one without share
        the compiled step."""
        if self.after_step is None:
            batch = batch.replace(task_id=None)
        return batch if self.mesh is None else shard_batch(batch, self.mesh)


def run_steps(
    trainer: MetaTrainer, state: MetaTrainState, batches: Iterable[TaskBatch], *, stop_step: int | None = None
) -> Iterator[tuple[MetaTrainState, TaskBatch, dict]]:
    """The training loop: one meta-step per batch until ``state.step`` reaches ``stop_step`` or the batches end.

    :func:`meta_train`, :meth:`jaxrec.Experiment.train` and the run engine of ``jaxrec train`` all run this loop;
    what they do between steps (logging, checks, checkpoints) is theirs.

    Args:
      trainer: the :class:`MetaTrainer` whose step to run.
      state: the :class:`MetaTrainState` to start from. It is donated to each step: use the yielded one.
      batches: an iterable of :class:`~jaxrec.TaskBatch`.
      stop_step: stop once ``state.step`` reaches this value (no step at all if it already has), or None to run
        until the batches end.

    Yields:
      ``(state, batch, metrics)`` after each step; the metrics stay on the device (no host sync per step).
    """
    step = int(state.step)
    if stop_step is not None and step >= stop_step:
        return
    for batch in batches:
        state, metrics = trainer.step(state, batch)
        step += 1
        yield state, batch, metrics
        if stop_step is not None and step >= stop_step:
            return


def meta_train(
    params: Any,
    task_batches: Iterable[TaskBatch],
    inner: InnerLoop | None = None,
    *,
    inner_lr: Any = None,
    algorithm: str = "maml",
    optimizer: optax.GradientTransformation | None = None,
    task_chunk: int | None = None,
    steps: int | None = None,
    nonfinite: str = "skip",
    callback: Callable[[int, dict], None] | None = None,
    log_every: int = 100,
    mesh: Any = "auto",
    state: MetaTrainState | None = None,
    objective_options: dict | None = None,
    sparse_tables: Tables | None = None,
    sparse_optimizer: RowSparseOptimizer | None = None,
    after_step: Callable | None = None,
    **inner_options: Any,
) -> tuple[Any, dict]:
    """Meta-train ``params`` over ``task_batches``.

    Args:
      params: the initial meta-parameters (any pytree). For ``algorithm="metasgd"`` the result is a
        :class:`~jaxrec.MetaSGDParams` holding the initialisation and the learned per-parameter rates.
      task_batches: an iterable of :class:`~jaxrec.TaskBatch`; training stops when it ends or after ``steps``.
      inner: the :class:`~jaxrec.InnerLoop`, or its fields as keywords (``loss_fn=..., inner_steps=...,
        order=..., inner_optimizer=..., adapt_filter=..., inner_aux=..., remat=...``).
      inner_lr: the inner rate; Meta-SGD's starting rates.
      algorithm: ``"maml"``, ``"reptile"`` or ``"metasgd"``.
      optimizer: the outer optax optimiser (default ``optax.adam(1e-3)``).
      task_chunk: see :func:`jaxrec.meta_loss`.
      steps: at most this many meta-steps (an integer >= 0; default: until ``task_batches`` ends).
      nonfinite: ``"skip"`` (default; the step is dropped on the device and counted, no host sync) or
        ``"raise"`` (checks every step on the host and raises :class:`NonFiniteError` naming the batch and its
        users; the parameters are never updated with non-finite values in either mode).
      callback: ``callback(step, metrics)`` every ``log_every`` steps and after the last, with host floats.
      log_every: the interval of ``callback``, in steps (0: after the last step only).
      mesh: ``"auto"`` (all devices when there is more than one), ``None`` (single device) or a
        ``jax.sharding.Mesh`` whose axis ``"tasks"`` shards the task axis.
      state: a :class:`MetaTrainState` to continue from (resume); ``params`` is then ignored. It is copied: the
        caller's arrays (e.g. the params an earlier call returned, which are its ``history["state"]``'s) survive.
      objective_options: further keyword arguments of the meta-objective (e.g. task-local embedding options).
      sparse_tables: ``{table path: row key}`` of embedding tables with row-sparse outer updates (see
        :class:`MetaTrainer` and :mod:`jaxrec.scale.row_sparse`); ``optimizer`` then updates the other parameters.
      sparse_optimizer: the row-sparse optimiser of ``sparse_tables``.
      after_step: a non-gradient update after each step (e.g. MAMO's memory writes; see :class:`MetaTrainer`).
      **inner_options: inner-loop fields as keywords.

    Returns:
      ``(params, history)``; ``history`` holds per-step ``loss``, ``grad_norm`` and ``finite`` (numpy arrays),
      ``steps``, ``skipped`` (non-finite steps dropped), ``nonfinite_steps`` (their indices), ``compilations``
      (traces of the meta-step: one per batch shape), ``batch_shapes``, ``seconds`` and ``state`` (the final
      :class:`MetaTrainState`).

    Raises:
      ValueError: an unknown ``nonfinite`` mode, a ``steps`` that is not an integer >= 0, or a bad configuration
        (:class:`MetaTrainer`).
      NonFiniteError: with ``nonfinite="raise"``, at the first non-finite step.
    """
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"unknown nonfinite mode {nonfinite!r}: expected one of {NONFINITE_MODES}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0):
        raise ValueError(f"steps must be an integer >= 0 or None, got {steps!r}")
    trainer = MetaTrainer(
        inner,
        inner_lr=inner_lr,
        algorithm=algorithm,
        optimizer=optimizer,
        task_chunk=task_chunk,
        mesh=default_mesh() if isinstance(mesh, str) and mesh == "auto" else mesh,
        objective_options=dict(objective_options or {}),
        sparse_tables=sparse_tables,
        sparse_optimizer=sparse_optimizer,
        after_step=after_step,
        **inner_options,
    )
    # a resumed state is copied as init copies params: the steps donate it, and the caller's arrays (the params a
    # previous call returned are its state's) must survive
    state = trainer.init(params) if state is None else trainer.place(jax.tree.map(jnp.copy, state))
    first_step = int(state.step)
    metrics_log: list[dict] = []
    shapes: set[tuple[int, int, int]] = set()
    start = time.perf_counter()
    stop_step = None if steps is None else first_step + steps
    loop = run_steps(trainer, state, task_batches, stop_step=stop_step)
    for index, (state, batch, metrics) in enumerate(loop):  # noqa: B007 - the last state is the result
        shapes.add(batch.shape)
        metrics_log.append(metrics)
        if nonfinite == "raise" and not bool(metrics["finite"]):
            users = None if batch.task_id is None else [int(u) for u in np.asarray(batch.task_id) if u >= 0]
            raise NonFiniteError(first_step + index, index, users, float(metrics["loss"]))
        if callback is not None and log_every and (index + 1) % log_every == 0:
            callback(first_step + index + 1, {k: float(v) for k, v in metrics.items()})
    history = _history(metrics_log, state, trainer, shapes, time.perf_counter() - start)
    if callback is not None and metrics_log and (not log_every or len(metrics_log) % log_every):
        callback(int(history["steps"]), {k: float(v[-1]) for k, v in history.items() if k in ("loss", "grad_norm")})
    if history["skipped"]:
        logger.warning("skipped %d meta-steps with a non-finite loss or gradient", history["skipped"])
    return state.params, history


def _history(metrics_log, state, trainer, shapes, seconds) -> dict:
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *metrics_log)) if metrics_log else {}
    finite = np.asarray(stacked.get("finite", np.zeros(0, bool)))
    return {
        "loss": np.asarray(stacked.get("loss", np.zeros(0))),
        "grad_norm": np.asarray(stacked.get("grad_norm", np.zeros(0))),
        "finite": finite,
        "steps": int(state.step),
        "skipped": int(state.skipped),
        "nonfinite_steps": [int(i) for i in np.flatnonzero(~finite)],
        "compilations": trainer.traces,
        "batch_shapes": sorted(shapes),
        "seconds": seconds,
        "state": state,
    }
