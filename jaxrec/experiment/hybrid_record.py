"""The hybrid a run folder keeps, so that ``jaxrec recommend`` and ``jaxrec serve`` rank as the evaluated hybrid did.

A top-N run trained with ``--hybrid NAME`` chooses, on its validation users, the weight ``w`` of ``NAME`` in the
hybrid ``h = z(maml) + w z(NAME)`` (:mod:`jaxrec.evaluation.hybrid`). :func:`write_hybrid` keeps what ranking a new
user by ``h`` needs beside the checkpoint, in the run folder:

* ``hybrid.json``: the partner's name, its hyper-parameters chosen on the validation users, the weight and the
  hybrid's validation Recall@20 with it, and the SHA-256 of the file below;
* ``hybrid_interactions.npz``: the meta-train interaction matrix the partner was fitted on (sparse, compressed).

:func:`read_hybrid` fits the partner again from them (the same function on the same matrix with the same
hyper-parameters: the same similarities, factors or weights as the evaluation's), so that the folder stands alone,
as its item catalogue does (:mod:`jaxrec.experiment.trained`). Storing the matrix rather than the fitted partner
keeps the folder small for every partner (EASE's weights are a dense ``V x V`` matrix; the matrix is the log).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp

from jaxrec.evaluation import retrieval_baselines as rb
from jaxrec.evaluation.hybrid import hybrid_scores
from jaxrec.evaluation.topn import fold_in_weights
from jaxrec.experiment.checkpoint import CheckpointError, check_kept_file, file_sha256, write_json

__all__ = ["HYBRID_FILE", "INTERACTIONS_FILE", "ServedHybrid", "read_hybrid", "write_hybrid"]

logger = logging.getLogger(__name__)

HYBRID_FILE = "hybrid.json"
INTERACTIONS_FILE = "hybrid_interactions.npz"


@dataclasses.dataclass(frozen=True)
class ServedHybrid:
    """The hybrid ``z(maml) + weight z(partner)`` of a run, its partner fitted when first used.

    Attributes:
      partner: the partner baseline's name (``"itemknn"``, ...).
      weight: the partner's weight, chosen on the validation users.
      fit: the fitted partner, fitted by the first call (``fit() -> fitted``; thread-safe, kept once fitted, shared
        by copies): a model grown by new items before its first use
        (:meth:`~jaxrec.experiment.trained.TrainedModel.with_items`) fits its partner once, not twice.
      n_items: the catalogue size.
      recency: the strength of the partner's recency weighting of the support, chosen on the validation users
        (``support_recency``; 0: each item at its interaction's weight alone).
    """

    partner: str
    weight: float
    fit: Callable[[], Any] = dataclasses.field(repr=False, compare=False)
    n_items: int
    recency: float = 0.0
    span: int | None = None  # the support size the recency was chosen for (the run's shots)

    @property
    def fitted(self) -> Any:
        """The fitted partner (``fitted.scores(S [users, n_items]) -> [users, n_items]``)."""
        return self.fit()

    @property
    def name(self) -> str:
        """The method's name in a metrics document: ``"maml+<partner>"``."""
        return f"maml+{self.partner}"

    def partner_scores(self, items: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The partner's scores of every item for a batch of users, folded in from their items at the weights the
        model adapts on, times their order's weights at the run's ``recency``, as the evaluation folds in a support
        set (:func:`~jaxrec.evaluation.topn.fold_in_weights`).

        Args:
          items: int ``[B, S]`` item codes (-1 = padding).
          mask: bool ``[B, S]``, the real entries.
          weights: ``[B, S]`` the interactions' weights (None: each 1).

        Returns:
          float32 ``[B, n_items]``.
        """
        weights = fold_in_weights(mask, weights, self.recency, self.span)
        support = rb.support_matrix(np.where(mask, items, -1), self.n_items, weights)
        return np.asarray(self.fitted.scores(support), np.float32)

    def combine(self, model_scores: jax.Array, partner_scores: jax.Array, exclude: jax.Array) -> jax.Array:
        """``z(model) + weight z(partner)`` over each user's eligible items, ``-inf`` on their own (``exclude
        [B, E]``, -1 = none): :func:`jaxrec.evaluation.hybrid.hybrid_scores`, traceable inside a compiled call."""
        return hybrid_scores(model_scores, partner_scores, self.weight, exclude)


def write_hybrid(run_folder: str | os.PathLike, experiment: Any, params: Any) -> dict | None:
    """Keep the run's hybrid in its folder (see the module docstring), choosing its weight first if no evaluation
    has (the partner tuned and the weight chosen on the validation users:
    :meth:`~jaxrec.experiment.topn.TopNExperiment.meta_hybrid`).

    Args:
      run_folder: the run folder.
      experiment: the run's :class:`~jaxrec.experiment.topn.TopNExperiment`.
      params: the meta-learned parameters (the weight is chosen for them).

    Returns:
      The ``hybrid.json`` document, or None when the run has no hybrid (no ``hybrid``, or its partner could not be
      fitted): a stale record of an earlier run in the folder is then removed.
    """
    folder = Path(run_folder)
    partner = experiment.config.topn.hybrid
    name = f"maml+{partner}"
    if partner is not None and name not in experiment.tuned:
        experiment.meta_hybrid(params)
    if partner is None or name not in experiment.tuned or partner not in experiment.tuned:
        for stale in (HYBRID_FILE, INTERACTIONS_FILE):
            (folder / stale).unlink(missing_ok=True)
        return None
    matrix_path = folder / INTERACTIONS_FILE
    tmp = matrix_path.with_name("tmp-" + matrix_path.name)  # save_npz appends .npz to a name without it
    sp.save_npz(tmp, experiment.train_matrix().tocsr(), compressed=True)
    os.replace(tmp, matrix_path)
    document = {
        "format": 1,
        "method": name,
        "partner": partner,
        "partner_hyper": experiment.tuned[partner].get("chosen") or {},
        "weight": float(experiment.tuned[name]["weight"]),
        "partner_recency": float(experiment.tuned.get("support_recency", {}).get(partner, {}).get("strength", 0.0)),
        **{k: v for k, v in experiment.tuned[name].items() if k != "weight"},  # its validation figure
        "n_items": int(experiment.dataset.n_items),
        "interactions": {
            "file": INTERACTIONS_FILE,
            "sha256": file_sha256(matrix_path),
        },
    }
    write_json(folder / HYBRID_FILE, document)
    return document


def read_hybrid(
    run_folder: str | os.PathLike, featurizer: Any, shots: int | None = None, added: int = 0
) -> ServedHybrid | None:
    """The hybrid kept in a run folder, its partner to be fitted again when first used (:attr:`ServedHybrid.fitted`);
    None when the folder keeps none.

    Args:
      run_folder: the run folder.
      featurizer: the run's featurizer (the item features of a ``content`` partner).
      shots: the run's support size, for which the partner's recency was chosen.
      added: items the featurizer holds beyond the run's catalogue, the last ones
        (:meth:`~jaxrec.data.Featurizer.with_items`): the partner is fitted with them as items no one has
        interacted with, as the evaluation's baselines meet held-out new items.

    Raises:
      CheckpointError: if the record is unreadable, its interactions file is missing, changed or unreadable (and,
        from the first use of :attr:`ServedHybrid.fitted`, if the partner cannot be fitted from them).
    """
    folder = Path(run_folder)
    path = folder / HYBRID_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        partner, weight, hyper = document["partner"], float(document["weight"]), dict(document["partner_hyper"])
        recency = float(document.get("partner_recency", 0.0))  # records before the weighting have none
        n_items, checksum = int(document["n_items"]), document["interactions"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the run's hybrid record is unreadable: {e}") from e
    if n_items + added != featurizer.n_items:
        raise CheckpointError(
            f"{path}: the hybrid was fitted on {n_items} items, the checkpoint has {featurizer.n_items - added}"
        )
    matrix_path = folder / INTERACTIONS_FILE
    check_kept_file(path, matrix_path, checksum, "the hybrid's interactions")
    try:
        features = featurizer.item_features()[0] if partner == "content" else None
        matrix = sp.load_npz(matrix_path).tocsr()
        if added:
            matrix = sp.hstack([matrix, sp.csr_matrix((matrix.shape[0], added), dtype=matrix.dtype)], format="csr")
    except (ValueError, TypeError, OSError) as e:
        raise CheckpointError(f"{path}: the hybrid's interactions {matrix_path} cannot be read: {e}") from e

    lock, fitted = threading.Lock(), []

    def fit() -> Any:
        with lock:  # a service's worker and a caller of the engine may ask at once: one fit
            if not fitted:
                try:
                    fitted.append(rb.fit_baseline(partner, matrix, features, **hyper))
                except (ValueError, TypeError) as e:
                    raise CheckpointError(f"{path}: the hybrid's partner {partner} cannot be fitted again: {e}") from e
                logger.info("hybrid maml+%s (weight %g) fitted again from %s", partner, weight, folder)
        return fitted[0]

    return ServedHybrid(partner=partner, weight=weight, fit=fit, n_items=n_items + added, recency=recency, span=shots)
