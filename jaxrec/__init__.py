"""jaxrec: meta-learned cold-start recommendation in JAX.

The meta-learning core sees only ``loss_fn(params, rows, mask)`` and a params pytree:

* :func:`adapt` -- the inner loop of one task (``lax.scan`` of ``jax.grad`` steps, second or first order);
* :func:`meta_loss` -- the mean post-adaptation query loss of a :class:`TaskBatch` (``vmap`` over tasks);
* :func:`meta_train` -- the jit-compiled meta-step looped over task batches (MAML, Reptile, Meta-SGD);
* :func:`newton` -- the inner step as the exact MAP (ridge) estimate under a Gaussian prior at the initialisation,
  for a small adapted set such as the output layer (``inner_optimizer=jaxrec.newton()``);
* :class:`GroupedParams` / :func:`group_params` -- several initialisations, each task adapting from the one that
  fits its support set (task grouping);
* :func:`row_sparse_sgd` / :func:`row_sparse_adam` -- outer updates of large embedding tables that touch only the
  rows a batch reads (``MetaTrainer(sparse_tables=..., sparse_optimizer=...)``).
"""

from jaxrec import (
    augment,
    baselines,
    datasets,
    distributed,
    evaluate,
    experiment,
    grouping,
    metrics,
    models,
    newton_adapt,
    precision,
    tasks,
)
from jaxrec.adapt import adapt, resolve_adapt_filter, zero_padding
from jaxrec.batch import BatchShapeError, TaskBatch, validate_batch
from jaxrec.evaluate import meta_evaluate
from jaxrec.experiment import Experiment, ExperimentConfig
from jaxrec.features import FeatureSpec
from jaxrec.grouping import GroupedParams, choose_group, group_params
from jaxrec.host_memory import keep_freed_host_memory
from jaxrec.losses import bce_loss, bpr_loss, l2_to_init, masked_mean, mse_loss, with_auxiliary
from jaxrec.maml import ALGORITHMS, MetaSGDParams, meta_loss, meta_value_and_grad, reptile_direction, task_losses
from jaxrec.models import (
    MeLU,
    create,
    default_loss,
    embedding_tables,
    init_params,
    reference_spec,
    synthetic_rows,
    synthetic_task_batch,
)
from jaxrec.newton_adapt import NewtonStep, newton
from jaxrec.precision import mixed_precision
from jaxrec.sharding import default_mesh, make_mesh, pad_tasks, replicate, shard_batch
from jaxrec.sparse_update import (
    RowIndex,
    RowSparseAdamState,
    RowSparseOptimizer,
    localize_batch,
    row_sparse_adam,
    row_sparse_sgd,
)
from jaxrec.tasks import ColdStartSplit, TaskSet, build_tasks, cold_start_split, task_batches
from jaxrec.train import MetaTrainer, MetaTrainState, NonFiniteError, SparseOuterState, meta_train

__version__ = "0.1.0"
