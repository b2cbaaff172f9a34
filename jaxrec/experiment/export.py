"""A trained top-N model as plain arrays: the item side and the new-user fold-in, for a retrieval stack outside jaxrec.

A two-tower run of the exact ALS fold-in (``--method twotower-als``) scores item ``i`` for a user as
``s_i = <p~, q~_i>``, ``q~_i = [q_i, b_i]`` the item's vector and bias (the global offset folded in), ``p~ = [p, 1]``.
The item side does not depend on the user, so it can be loaded into any index of inner products (an ANN library, a
database, a matrix in NumPy). The user side is one linear solve: a new user's vector is the MAP fold-in of their
items (Hu, Koren & Volinsky, ICDM 2008, section 4, with a Gaussian prior in place of the zero-mean ridge), the
minimiser of

    J(p) = p~^T G p~ + sum_r [(1 + c w_r) (1 - s_r)^2 - s_r^2] + (p - m)^T Lambda (p - m)

over the user's items ``r`` (weights ``w_r``), ``G = sum_i q~_i q~_i^T`` over the trained catalogue (every item a
non-interaction of confidence 1), the prior mean ``m`` and the ridge ``Lambda = diag(1 / (2 alpha))`` meta-learned.
Setting its gradient to zero:

    (G_qq + c sum_r w_r q_r q_r^T + Lambda) p = sum_r (1 + c w_r) q_r - g - c sum_r w_r b_r q_r + Lambda m

(``G_qq`` the ``d x d`` block of ``G``, ``g`` its bias column). Use the exported ``gram``: it is summed over the items
the run trained on (not every row of ``item_vectors``), and a run with new items (item-id dropout) mixes each item's
vector with and without its id, so recomputing it from ``item_vectors`` gives another fold-in. That is what the
Newton inner step (:mod:`jaxrec.core.newton`) computes inside jaxrec; :func:`fold_in` is the same solve in NumPy,
and the tests check that its lists are ``jaxrec recommend``'s.

The weights ``w_r``, as ``jaxrec recommend`` forms them:

* **given**: a run trained on a log with a weight column (``weighted``: plays, counts) takes each item's weight as
  given; any other run counts each item once (``w_r = 1``; :func:`fold_in` refuses other weights for it).
* **recency** (``recency = tau > 0``, chosen on the validation users): the weight of the item at age ``a`` in the
  user's order (``a = 0`` for the newest, the last given) is multiplied by ``exp(-tau a / D) * shots / sum_{j <
  shots} exp(-tau j / D)``, ``D = max(shots - 1, 1)``, so that a support of ``shots`` items (the support size the
  strength was chosen for) weighs ``shots`` in all. ``shots`` sets the scale only: every item given is used
  (:func:`~jaxrec.evaluation.topn.recency_weights` with ``span = shots``).
* **repeats**: ``recommend`` merges an item given twice into its first place (a weighted run sums the weights); the
  functions here take each item once.

A run of a rated log with a positive threshold (``positive_threshold``, e.g. MovieLens's 4) counts only ratings at
or above it as interactions: ``recommend`` leaves a user's lower ratings out of the fold-in and out of the list, and
so does :func:`top_k` given them as ``exclude``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec.core.metasgd import split_meta_params
from jaxrec.core.newton import MIN_RATE, NewtonStep
from jaxrec.core.params import path_names
from jaxrec.evaluation.topn import recency_weights
from jaxrec.experiment.recommend import ItemWording, checked_items, checked_values, chosen_recency, fixed_item_side
from jaxrec.experiment.run import RunError, atomic_write, os_reason
from jaxrec.models import TwoTower

__all__ = ["FORMAT", "export_arrays", "fold_in", "fold_in_users", "load_export", "save_export", "top_k"]

logger = logging.getLogger(__name__)

#: the export's format version, written into the file: a reader checks it
FORMAT = 1


def export_arrays(trained: Any, model_alone: bool = False, params: Any = None) -> dict[str, np.ndarray]:
    """The arrays of a trained top-N run that rank a new user's catalogue without jaxrec (see the module docstring).

    Args:
      trained: the run's :class:`~jaxrec.experiment.trained.TrainedModel`, or a
        :class:`~jaxrec.experiment.topn.TopNExperiment` with ``params`` (its support's recency, chosen on the
        validation users for them; an experiment has no hybrid).
      model_alone: export a run that ranks by a hybrid (``--hybrid``) or re-ranks its lists (``--rerank``) anyway:
        the arrays then rank by the adapted model alone, which is not what the run's ``recommend`` and service rank
        by.
      params: the meta-learned parameters; None for the trained model's.

    Returns:
      ``{"format", "item_ids" [V] (str), "item_vectors" [V, d + 1] (q_i, b_i), "gram" [d + 1, d + 1],
      "prior_mean" [d], "ridge" [d] (Lambda's diagonal), "confidence" (c), "recency" (tau), "shots", "weighted",
      "positive_threshold" (NaN: none)}``,
      float64 where the model's arithmetic is float32 (the solve is well within it); row ``j`` of ``item_vectors``
      is the item ``item_ids[j]``.

    Raises:
      RunError: if the run is not one the closed form describes: not top-N, not a two-tower model, not the exact
        ALS fold-in solved by the Newton step, adapting more than the user vector, pooling the support's history,
        or (without ``model_alone``) ranking by a hybrid or re-ranking.
    """
    config = trained.config
    if config.data.feedback != "implicit":
        raise RunError(
            f"this run ({config.model.name}) predicts ratings; the export is of a top-N run (--feedback implicit, "
            "--method twotower-als)"
        )
    what = f"this run ({config.model.name}, ranking loss {config.topn.ranking_loss})"
    model = trained.model
    if not isinstance(model, TwoTower):
        raise RunError(
            f"{what}: the export is the fold-in of a two-tower model's user vector (--method twotower-als); another "
            "model has no item side of its own to export"
        )
    if model.pool_history:
        raise RunError(
            f"{what} pools the support's history items into the user vector (pool_history): the fold-in is then not "
            "the export's linear solve"
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
    given = trained.params if params is None else params
    params, rates = split_meta_params(given, trained.inner_lr)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    adapted = [j for j, (path, leaf) in enumerate(leaves) if inner.adapt_filter(path, leaf)]
    names = ["/".join(path_names(leaves[j][0])) for j in adapted]
    if len(adapted) != 1 or "user_vector" not in names[0]:
        raise RunError(f"{what} adapts {names}: the export's fold-in adapts the user vector alone")
    reranker = getattr(trained, "reranker", None)
    if reranker is not None and reranker.lists and not model_alone:  # what the run lists first: re-ranked
        raise RunError(
            f"{what} lists its top {reranker.candidates} re-ranked by {reranker.name} (--rerank), which the arrays "
            "cannot carry: export the recall stage alone with --model-alone (its lists will differ from recommend's)"
        )
    hybrid = getattr(trained, "hybrid", None)
    if hybrid is not None and not model_alone:
        raise RunError(
            f"{what} ranks by the hybrid {hybrid.name} (weight {hybrid.weight:g}), which the arrays "
            "cannot carry: export the adapted model alone with --model-alone (its lists will differ from recommend's)"
        )
    featurizer = trained.featurizer
    side = fixed_item_side(trained, params, featurizer.item_rows(np.arange(featurizer.n_items)))
    unknown_user = featurizer.user_rows(np.full(1, -1))  # a new user's features are unknown: their slots' vectors
    prior = np.asarray(model.apply(params, unknown_user, method=model.user_vectors))[0, :-1]
    rate_leaves = jax.tree.leaves(rates)  # Meta-SGD: a rate per parameter, shaped as the parameters; else one rate
    rate = rate_leaves[adapted[0]] if len(rate_leaves) == len(leaves) else rate_leaves[0]
    alpha = np.broadcast_to(np.asarray(rate, np.float64), prior.shape)
    ridge = 1.0 / (2.0 * np.maximum(alpha, MIN_RATE))  # the Newton step's floor on a rate
    threshold = config.data.positive_threshold
    return {
        "format": np.asarray(FORMAT),
        "item_ids": np.asarray([str(i) for i in featurizer.item_raw_ids]),
        "item_vectors": np.asarray(side.vectors, np.float64),
        "gram": np.asarray(side.gram, np.float64),
        "prior_mean": prior.astype(np.float64),
        "ridge": ridge,
        "confidence": np.asarray(float(config.topn.als_confidence)),
        "recency": np.asarray(float(chosen_recency(trained, given))),
        "shots": np.asarray(int(config.topn.shots)),
        # a run records whether its log was weighted (recommend reads a new user's weights as the log's were)
        "weighted": np.asarray(bool(trained.weighted if hasattr(trained, "weighted") else trained.dataset.has_weights)),
        "positive_threshold": np.asarray(np.nan if threshold is None else float(threshold)),
    }


def save_export(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write :func:`export_arrays` to a ``.npz`` file (compressed); returns its path."""
    path = Path(path)
    for folder in reversed(path.parents):
        if folder.exists() and not folder.is_dir():
            raise RunError(f"--out {path}: {folder} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{os_reason(e)} while making the folder of {path}") from None
    # an interrupted export leaves no partial file at ``path``
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    logger.info("exported %d items x %d to %s", *arrays["item_vectors"].shape, path)
    return path


def load_export(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file of :func:`save_export`, its arrays checked against each other.

    Raises:
      RunError: if it is not such a file (not an ``.npz`` archive, damaged, of another format version, an array
        missing or of the wrong shape), naming the file and what is wrong.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except OSError as e:
        raise RunError(f"{path}: cannot read it: {os_reason(e)}") from None
    except ValueError:  # numpy's reading of a file that is no archive (it would suggest unpickling it: never)
        raise RunError(f"{path}: not a jaxrec export (the .npz archive jaxrec export writes)") from None
    except (EOFError, zipfile.BadZipFile) as e:  # cut short or damaged
        raise RunError(f"{path}: a damaged archive, not a readable jaxrec export: {e or type(e).__name__}") from None
    version = arrays.get("format")
    if version is not None and (version.shape or not np.issubdtype(version.dtype, np.integer) or version != FORMAT):
        raise RunError(f"{path}: a jaxrec export of format {version}; this jaxrec reads format {FORMAT}")
    missing = sorted(set(_SHAPES) - set(arrays))
    if missing:
        raise RunError(f"{path}: not a jaxrec export: no {', '.join(missing)}")
    vectors = arrays["item_vectors"]
    width = vectors.shape[-1] - 1 if vectors.ndim == 2 else -1
    sizes = {"V": len(arrays["item_ids"]), "d": width, "d + 1": width + 1}
    for key, shape in _SHAPES.items():
        expected = tuple(sizes[n] for n in shape)
        if arrays[key].shape != expected:
            raise RunError(
                f"{path}: {key} has shape {arrays[key].shape}, not {expected} ({', '.join(shape) or 'a scalar'})"
            )
    return arrays


#: the arrays of an export and their shapes (``V`` items, vectors of ``d + 1``)
_SHAPES = {
    "format": (),
    "item_ids": ("V",),
    "item_vectors": ("V", "d + 1"),
    "gram": ("d + 1", "d + 1"),
    "prior_mean": ("d",),
    "ridge": ("d",),
    "confidence": (),
    "recency": (),
    "shots": (),
    "weighted": (),
    "positive_threshold": (),
}


def _positions(item_ids: np.ndarray) -> ItemWording:
    """How the item checks name an export's items: positions in ``item_ids``, a repeat by its raw id."""
    return ItemWording(
        argument="items",
        kind="positions in item_ids",
        entry="a position in item_ids",
        mapping="map raw ids with {item: j for j, item in enumerate(arrays['item_ids'])}",
        outside="",
        repeat="",
        label=lambda j: f"item {item_ids[j]} (position {j})",
    )


def fold_in(arrays: dict[str, np.ndarray], items: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """A new user's vector ``p~ = [p, 1]`` from their items, in NumPy: the solve of the module docstring.

    Args:
      arrays: :func:`export_arrays` (or :func:`load_export`).
      items: the user's items as rows of ``item_vectors`` (positions in ``item_ids``), each once, the oldest first.
      weights: their weights (each > 0; default 1 each), before the run's recency weighting.

    Returns:
      ``[d + 1]``: the item scores are ``arrays["item_vectors"] @ p~``.

    Raises:
      ValueError: naming the first unusable entry: no item, items that are not integer positions, a position
        outside the catalogue, an item given twice, a weight that is not a finite number > 0, or weights other
        than 1 for a run trained without them.
    """
    if weights is not None and not bool(arrays["weighted"]) and np.any(np.asarray(weights) != 1):
        raise ValueError(
            "this run was trained on a log without weights: each item counts once (weights=None), as recommend "
            "counts it"
        )
    codes = checked_items(items, len(arrays["item_vectors"]), _positions(arrays["item_ids"]))
    w = checked_values(codes, np.ones(codes.shape) if weights is None else weights, weights=True)
    return fold_in_users(arrays, codes[None, :], w[None, :], np.ones((1, len(codes)), bool))[0]


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


def top_k(
    arrays: dict[str, np.ndarray], items: np.ndarray, k: int, weights: np.ndarray | None = None, exclude=()
) -> np.ndarray:
    """The ``k`` best items for a new user (positions in ``item_ids``, best first), their own items and ``exclude``
    (positions: items seen but not interactions, out of stock, ...) left out and ties broken by the lower position,
    as ``jaxrec recommend`` ranks them."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    scores = arrays["item_vectors"] @ fold_in(arrays, items, weights)
    scores[np.asarray(items, np.int64)] = -np.inf
    scores[np.asarray(exclude, np.int64)] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[: min(k, int(np.isfinite(scores).sum()))]
