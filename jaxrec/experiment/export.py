"""A trained top-N model as plain arrays: the item side and the new-user fold-in, for a retrieval stack outside jaxrec.

A two-tower run of the exact ALS fold-in (``--method twotower-als``) scores item ``i`` for a user as
``s_i = <p~, q~_i>``, ``q~_i = [q_i, b_i]`` the item's vector and bias (the global offset folded in), ``p~ = [p, 1]``.
The item side does not depend on the user, so it can be loaded into any index of inner products (an ANN library, a
database, a matrix in NumPy). The user side is one linear solve: a new user's vector is the MAP fold-in of their
items (Hu, Koren & Volinsky, ICDM 2008, section 4, with a Gaussian prior in place of the zero-mean ridge), the
minimiser of

    J(p) = p~^T G p~ + sum_r [(1 + c w_r) (1 - s_r)^2 - s_r^2] + (p - m)^T Lambda (p - m)

over the user's items ``r`` (weights ``w_r``), ``G = sum_i q~_i q~_i^T`` over the catalogue, the prior mean ``m`` and
the ridge ``Lambda = diag(1 / (2 alpha))`` meta-learned. Setting its gradient to zero:

    (G_qq + c sum_r w_r q_r q_r^T + Lambda) p = sum_r (1 + c w_r) q_r - g - c sum_r w_r b_r q_r + Lambda m

(``G_qq`` the ``d x d`` block of ``G``, ``g`` its bias column). That is what the Newton inner step
(:mod:`jaxrec.core.newton`) computes inside jaxrec; :func:`fold_in` is the same solve in NumPy, and the tests check
that its lists are ``jaxrec recommend``'s.

A run that chose a recency weighting of the support multiplies each item's weight by
:func:`~jaxrec.evaluation.topn.recency_weights` of its place in the user's order (the oldest first).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec.core.metasgd import split_meta_params
from jaxrec.core.newton import NewtonStep
from jaxrec.core.params import path_names
from jaxrec.evaluation.topn import recency_weights
from jaxrec.experiment.recommend import checked_support, chosen_recency, fixed_item_side
from jaxrec.experiment.run import RunError
from jaxrec.models import TwoTower

__all__ = ["FORMAT", "export_arrays", "fold_in", "fold_in_users", "load_export", "save_export", "top_k"]

logger = logging.getLogger(__name__)

#: the export's format version, written into the file: a reader checks it
FORMAT = 1


def export_arrays(trained: Any, model_alone: bool = False) -> dict[str, np.ndarray]:
    """The arrays of a trained top-N run that rank a new user's catalogue without jaxrec (see the module docstring).

    Args:
      trained: the run's :class:`~jaxrec.experiment.trained.TrainedModel`.
      model_alone: export a run that ranks by a hybrid (``--hybrid``) anyway: the arrays then rank by the adapted
        model alone, which is not what the run's ``recommend`` and service rank by.

    Returns:
      ``{"format", "item_ids" [V] (str), "item_vectors" [V, d + 1] (q_i, b_i), "gram" [d + 1, d + 1],
      "prior_mean" [d], "ridge" [d], "confidence", "recency", "shots"}``, float64 where the model's arithmetic is
      float32 (the solve is well within it).

    Raises:
      RunError: if the run is not one the closed form describes: not top-N, not a two-tower model, not the exact
        ALS fold-in solved by the Newton step, adapting more than the user vector, pooling the support's history,
        or (without ``model_alone``) ranking by a hybrid.
    """
    config = trained.config
    what = f"this run ({config.model.name}, ranking loss {config.topn.ranking_loss})"
    if config.data.feedback != "implicit":
        raise RunError(f"{what} predicts ratings; the export is of a top-N run (--feedback implicit)")
    model = trained.model
    if not isinstance(model, TwoTower) or model.pool_history:
        raise RunError(
            f"{what}: the export is the fold-in of a two-tower model whose user vector is adapted alone "
            "(--method twotower-als); a model with other user-side inputs has no closed form to export"
        )
    inner = trained.inner
    solver = inner.solver
    if config.topn.ranking_loss != "als_exact" or not isinstance(solver, NewtonStep) or solver.solve is not None:
        raise RunError(
            f"{what}: only the exact ALS fold-in solved by a Newton step (--method twotower-als) is one linear solve; "
            "another loss or inner loop needs jaxrec to adapt (jaxrec recommend, jaxrec serve)"
        )
    if inner.aux is not None or inner.steps < 1:
        raise RunError(f"{what}: an inner loop of {inner.steps} steps or with an extra term is not the plain fold-in")
    params, rates = split_meta_params(trained.params, trained.inner_lr)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    adapted = [j for j, (path, leaf) in enumerate(leaves) if inner.adapt_filter(path, leaf)]
    names = ["/".join(path_names(leaves[j][0])) for j in adapted]
    if len(adapted) != 1 or "user_vector" not in names[0]:
        raise RunError(f"{what} adapts {names}: the export's fold-in adapts the user vector alone")
    if trained.hybrid is not None and not model_alone:
        raise RunError(
            f"{what} ranks by the hybrid {trained.hybrid.name} (weight {trained.hybrid.weight:g}), which the arrays "
            "cannot carry: export the adapted model alone with --model-alone (its lists will differ from recommend's)"
        )
    featurizer = trained.featurizer
    side = fixed_item_side(trained, params, featurizer.item_rows(np.arange(featurizer.n_items)))
    unknown_user = featurizer.user_rows(np.full(1, -1))  # a new user's features are unknown: their slots' vectors
    prior = np.asarray(model.apply(params, unknown_user, method=model.user_vectors))[0, :-1]
    rate_leaves = jax.tree.leaves(rates)  # Meta-SGD: a rate per parameter, shaped as the parameters; else one rate
    rate = rate_leaves[adapted[0]] if len(rate_leaves) == len(leaves) else rate_leaves[0]
    alpha = np.broadcast_to(np.asarray(rate, np.float64), prior.shape)
    ridge = 1.0 / (2.0 * np.maximum(alpha, 1e-8))  # the Newton step's floor on a rate (jaxrec.core.newton)
    return {
        "format": np.asarray(FORMAT),
        "item_ids": np.asarray([str(i) for i in trained.item_ids]),
        "item_vectors": np.asarray(side.vectors, np.float64),
        "gram": np.asarray(side.gram, np.float64),
        "prior_mean": prior.astype(np.float64),
        "ridge": ridge,
        "confidence": np.asarray(float(config.topn.als_confidence)),
        "recency": np.asarray(float(chosen_recency(trained))),
        "shots": np.asarray(int(config.topn.shots)),
    }


def save_export(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write :func:`export_arrays` to a ``.npz`` file (compressed); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    logger.info("exported %d items x %d to %s", *arrays["item_vectors"].shape, path)
    return path


def load_export(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file of :func:`save_export`.

    Raises:
      RunError: if it is not such a file, or of another format version.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: not a jaxrec export (.npz): {e}") from None
    missing = {"format", "item_ids", "item_vectors", "gram", "prior_mean", "ridge"} - set(arrays)
    if missing or int(arrays["format"]) != FORMAT:
        raise RunError(f"{path}: not a jaxrec export of format {FORMAT} (missing {sorted(missing)})")
    return arrays


def fold_in(arrays: dict[str, np.ndarray], items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """A new user's vector ``p~ = [p, 1]`` from their items, in NumPy: the solve of the module docstring.

    Args:
      arrays: :func:`export_arrays` (or :func:`load_export`).
      items: the user's items as rows of ``item_vectors`` (positions in ``item_ids``), each once, the oldest first.
      weights: their weights (each > 0; default 1 each), before the run's recency weighting.

    Returns:
      ``[d + 1]``: the item scores are ``arrays["item_vectors"] @ p~``.

    Raises:
      ValueError: naming the first unusable entry, as ``recommend`` refuses it
        (:func:`~jaxrec.experiment.recommend.checked_support`): no item, a position outside the catalogue, an item
        given twice, a weight that is not a finite number > 0.
    """
    weights = np.ones(np.shape(items)) if weights is None else weights
    items, w = checked_support(items, weights, len(arrays["item_vectors"]), weights=True)  # recommend's refusals
    return fold_in_users(arrays, items[None, :], w[None, :], np.ones((1, len(items)), bool))[0]


def fold_in_users(
    arrays: dict[str, np.ndarray], items: np.ndarray, weights: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """:func:`fold_in` of a batch of users at once, unchecked: every user's ``d x d`` system solved together.

    Args:
      arrays: :func:`export_arrays` (or :func:`load_export`).
      items: ``[U, S]`` positions, each user's first ``n_u`` entries real (the oldest first), the rest padding.
      weights: ``[U, S]`` their weights (before the recency weighting; padding's are not read).
      mask: ``[U, S]`` bool, the real entries.

    Returns:
      ``[U, d + 1]`` user vectors ``[p, 1]``.
    """
    mask = np.asarray(mask, bool)
    w = np.where(mask, np.asarray(weights, np.float64), 0.0)
    strength = float(arrays["recency"])
    if strength:
        w = w * recency_weights(mask, strength, int(arrays["shots"]))
    vectors, gram = arrays["item_vectors"], arrays["gram"]
    c, ridge, mean = float(arrays["confidence"]), arrays["ridge"], arrays["prior_mean"]
    picked = vectors[np.where(mask, items, 0)]  # [U, S, d + 1]
    q, b = picked[..., :-1], picked[..., -1]
    lhs = gram[:-1, :-1] + c * np.einsum("us,usd,use->ude", w, q, q) + np.diag(ridge)
    rhs = np.einsum("us,usd->ud", mask * (1.0 + c * w) - c * w * b, q) - gram[:-1, -1] + ridge * mean
    users = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    return np.concatenate([users, np.ones((len(users), 1), users.dtype)], axis=1)


def top_k(arrays: dict[str, np.ndarray], items: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best items for a new user (positions in ``item_ids``, best first), their own items left out and
    ties broken by the lower position, as ``jaxrec recommend`` ranks them."""
    scores = arrays["item_vectors"] @ fold_in(arrays, items, weights)
    scores[np.asarray(items, np.int64)] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[: min(k, int(np.isfinite(scores).sum()))]
