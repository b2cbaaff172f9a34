"""jaxrec: meta-learned cold-start recommendation in JAX.

The meta-learning core (:mod:`jaxrec.core`) sees only ``loss_fn(params, rows, mask)`` and a params pytree:

* :class:`InnerLoop` / :func:`adapt`: the inner loop of one task (``lax.scan`` of ``jax.grad`` steps, second or
  first order), with any solver of :mod:`jaxrec.core.solvers` (gradient steps, an optax transformation,
  :func:`newton`);
* :func:`meta_loss`: the mean post-adaptation query loss of a :class:`TaskBatch` (``vmap`` over tasks);
* :func:`meta_train` / :class:`MetaTrainer`: the jit-compiled meta-step (MAML, Reptile, Meta-SGD);
* :func:`row_sparse_sgd` / :func:`row_sparse_adam`: outer updates of large embedding tables that touch only the
  rows a batch reads (:mod:`jaxrec.scale`).

Above the core, loaded when first used (so that ``import jaxrec`` needs neither pandas nor the models):
:mod:`jaxrec.data` (logs, splits, tasks, the batch stream), :mod:`jaxrec.models`, :mod:`jaxrec.evaluation`,
:mod:`jaxrec.experiment` (the protocol, the run engine, the recommender, checkpoints), :mod:`jaxrec.methods`
(the literature's methods as named recipes), :mod:`jaxrec.serve` (the online service), :mod:`jaxrec.testing`
and the experimental :mod:`jaxrec.contrib`.
"""

import importlib

from jaxrec._version import __version__
from jaxrec.core.batch import BatchShapeError, TaskBatch, validate_batch, zero_padding
from jaxrec.core.errors import JaxrecError
from jaxrec.core.features import FeatureSpec
from jaxrec.core.inner import InnerLoop, adapt
from jaxrec.core.losses import bce_loss, l2_to_init, masked_mean, mse_loss, with_auxiliary
from jaxrec.core.metasgd import MetaSGDParams
from jaxrec.core.newton import NewtonStep, newton
from jaxrec.core.objectives import ALGORITHMS, meta_loss, meta_value_and_grad, reptile_direction, task_losses
from jaxrec.core.params import adapt_filter, embedding_tables, path_names, resolve_adapt_filter
from jaxrec.core.ranking import bpr_loss
from jaxrec.core.trainer import MetaTrainer, MetaTrainState, NonFiniteError, SparseOuterState, meta_train
from jaxrec.scale.host_devices import use_every_core
from jaxrec.scale.host_memory import keep_freed_host_memory
from jaxrec.scale.precision import mixed_precision
from jaxrec.scale.row_sparse import RowIndex, RowSparseAdamState, RowSparseOptimizer, row_sparse_adam, row_sparse_sgd
from jaxrec.scale.sharding import default_mesh, make_mesh, pad_tasks, replicate, shard_batch

# name -> module, imported on first access (PEP 562): the layers above the core pull in pandas and flax.linen
_LAZY = {
    "Experiment": "jaxrec.experiment",
    "ExperimentConfig": "jaxrec.experiment",
    "TopNExperiment": "jaxrec.experiment",
    "TaskSet": "jaxrec.data",
    "ColdStartSplit": "jaxrec.data",
    "build_tasks": "jaxrec.data",
    "cold_start_split": "jaxrec.data",
    "task_batches": "jaxrec.data",
    "meta_evaluate": "jaxrec.evaluation",
    "MeLU": "jaxrec.models",
    "create": "jaxrec.models",
    "default_loss": "jaxrec.models",
    "init_params": "jaxrec.models",
}
_SUBPACKAGES = (
    "cli", "contrib", "core", "data", "evaluation", "experiment", "methods", "models", "scale", "serve", "testing"
)  # fmt: skip


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"jaxrec.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxrec' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


__all__ = [
    "ALGORITHMS",
    "BatchShapeError",
    "ColdStartSplit",
    "Experiment",
    "ExperimentConfig",
    "FeatureSpec",
    "InnerLoop",
    "JaxrecError",
    "MeLU",
    "MetaSGDParams",
    "MetaTrainState",
    "MetaTrainer",
    "NewtonStep",
    "NonFiniteError",
    "RowIndex",
    "RowSparseAdamState",
    "RowSparseOptimizer",
    "SparseOuterState",
    "TaskBatch",
    "TaskSet",
    "TopNExperiment",
    "adapt",
    "adapt_filter",
    "bce_loss",
    "bpr_loss",
    "build_tasks",
    "cold_start_split",
    "create",
    "default_loss",
    "default_mesh",
    "embedding_tables",
    "init_params",
    "keep_freed_host_memory",
    "l2_to_init",
    "make_mesh",
    "masked_mean",
    "meta_evaluate",
    "meta_loss",
    "meta_train",
    "meta_value_and_grad",
    "mixed_precision",
    "mse_loss",
    "newton",
    "pad_tasks",
    "path_names",
    "replicate",
    "reptile_direction",
    "resolve_adapt_filter",
    "row_sparse_adam",
    "row_sparse_sgd",
    "shard_batch",
    "task_batches",
    "task_losses",
    "use_every_core",
    "validate_batch",
    "with_auxiliary",
    "zero_padding",
]
