"""Every evaluated row, written out (``--save-predictions DIR``), so that an outside tool scores exactly the same
rows with its own metrics.

Per scenario, compressed CSV with raw user and item ids:

* ``<scenario>.split.csv.gz``: the split itself, ``user,item,role,target`` (``role`` is ``support`` or ``query``;
  ``target`` the rating, the 0/1 label with binary targets (``--implicit``, the rating beside it in ``rating``),
  or the interaction weight in top-N mode);
* ratings: ``<scenario>.predictions.csv.gz``, ``user,item,<method>,...``: every method's prediction on each
  query row, as the method gives it (nDCG ranks these); MAE and RMSE clip them to the rating scale first, which
  metrics.json records as ``rating_scale``;
* top-N: ``<scenario>.topk.csv.gz``, ``user,method,rank,item``: every method's top-k list (rank 1 first), over
  the whole catalogue with the user's support items excluded (a warm or new-item scenario's user: every item of
  theirs in training, of which the split file holds the latest ``shots``, the support; none can be in a query);
* top-N with the sampled protocol (``--sampled-negatives N``): ``<scenario>.sampled.csv.gz``,
  ``user,positive,item,<method>,...``: each query positive's candidates, the positive itself (``item ==
  positive``) and its ``N`` sampled negatives, with every method's score of each. A positive's ``sampled_hr@k``
  counts the negatives scored above it (``h``) and those tied with it (``t``): ``clip(k - h, 0, t + 1) / (t + 1)``,
  averaged over the user's positives, then over users (the biased protocol of
  :func:`~jaxrec.evaluation.topn.sampled_statistics`).

The split's users are named, not their side features: a model that reads user features (``--user-features``, or
a dataset's own table, e.g. ml-100k's ages and occupations) adapted to each user with theirs, so its lists are
reproduced from the split's support rows with each user's features given too (``recommend --features``,
``TopNRecommender.top_k(..., user_features=...)``); without them the lists differ.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from jaxrec.data.tasks import SCENARIOS
from jaxrec.data.topn import TOPN_SCENARIOS
from jaxrec.experiment.methods import experiment_predictors
from jaxrec.experiment.topn import NEW_ITEM_ONLY

__all__ = ["metrics_and_predictions", "write_rating_predictions", "write_topn_predictions"]

logger = logging.getLogger(__name__)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, compression="gzip")
    return path


def _split_frame(
    dataset: Any, users: np.ndarray, sides: list[tuple[str, np.ndarray, np.ndarray]], threshold: float | None = None
) -> pd.DataFrame:
    """``user,item,role,target`` rows of tasks: ``sides`` holds ``(role, item codes [T, L], targets [T, L])``; with
    a ``threshold`` (binary targets) ``target`` is the label and ``rating`` the rating it was read from."""
    parts = []
    for role, items, targets in sides:
        keep = items >= 0
        owner = np.broadcast_to(users[:, None], items.shape)[keep]
        frame = {"user": dataset.user_ids[owner], "item": dataset.item_ids[items[keep]], "role": role}
        if threshold is None:
            frame["target"] = targets[keep]
        else:
            frame["target"] = (targets[keep] >= threshold).astype(np.float32)
            frame["rating"] = targets[keep]
        parts.append(pd.DataFrame(frame))
    return pd.concat(parts, ignore_index=True)


def write_rating_predictions(folder: str | Path, experiment: Any, params: Any) -> list[Path]:
    """Write the split and every method's query predictions of each scenario of a rating experiment.

    Args:
      folder: the output folder (created).
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment`.
      params: the meta-learned parameters.

    Returns:
      The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    methods = experiment_predictors(experiment, params)
    batch_size = experiment.config.evaluation.eval_batch_size
    threshold = experiment.featurizer.implicit_threshold
    written = []
    for scenario, tasks in experiment.scenario_tasks.items():
        plan = tasks.batch_plan(batch_size, None)
        users, s_items, s_target, q_items, q_target, scores = [], [], [], [], [], {m: [] for m in methods}
        for task_index in plan:
            keep = np.asarray(task_index) >= 0
            (support, _), (query, q_mask) = tasks.codes(task_index)
            batch = tasks.make_batch(task_index)
            for name, (predict, state) in methods.items():
                predicted = np.asarray(jax.device_get(_jitted(predict)(state, batch)))[:, : q_mask.shape[1]]
                scores[name].append(np.where(q_mask, predicted, np.nan)[keep])
            users.append(np.asarray(batch.task_id)[keep])
            s_items.append(support["item"][keep])
            s_target.append(support["rating"][keep])
            q_items.append(query["item"][keep])
            q_target.append(query["rating"][keep])
        if not users:
            continue
        users = np.concatenate(users)
        q_items = np.concatenate(q_items)
        split = _split_frame(
            experiment.dataset,
            users,
            [
                ("support", np.concatenate(s_items), np.concatenate(s_target)),
                ("query", q_items, np.concatenate(q_target)),
            ],
            threshold,
        )
        written.append(_write(split, folder / f"{scenario}.split.csv.gz"))
        keep = q_items >= 0
        owner = np.broadcast_to(users[:, None], q_items.shape)[keep]
        predictions = pd.DataFrame(
            {"user": experiment.dataset.user_ids[owner], "item": experiment.dataset.item_ids[q_items[keep]]}
        )
        for name, parts in scores.items():
            predictions[name] = np.concatenate(parts)[keep]
        written.append(_write(predictions, folder / f"{scenario}.predictions.csv.gz"))
    logger.info("wrote %d prediction files to %s", len(written), folder)
    return written


@functools.lru_cache(maxsize=32)
def _jitted(predict: Any):
    return jax.jit(predict)


def write_topn_predictions(folder: str | Path, experiment: Any, detail: dict) -> list[Path]:
    """Write the split and every method's top-k lists of each scenario of a top-N experiment.

    Args:
      folder: the output folder (created).
      experiment: the :class:`~jaxrec.experiment.topn.TopNExperiment`.
      detail: ``{scenario: (stats, lists, sampled)}`` of its evaluation (``metrics_document(..., keep_lists=True)``
        keeps it in ``last_detail``).

    Returns:
      The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    ds = experiment.dataset
    for scenario, (stats, lists, sampled) in detail.items():
        tasks = experiment.scenario_tasks[scenario]
        everyone = np.arange(len(tasks))
        (support, _), (query, _) = tasks.tasks.codes(everyone)  # the rows' items and weights, read once
        split = _split_frame(
            ds,
            tasks.users,
            [("support", support["item"], support["rating"]), ("query", query["item"], query["rating"])],
        )
        written.append(_write(split, folder / f"{scenario}.split.csv.gz"))
        parts = []
        for method, items in lists.items():
            users = stats[method]["user"]
            keep = items >= 0
            ranks = np.broadcast_to(np.arange(1, items.shape[1] + 1)[None, :], items.shape)
            owner = np.broadcast_to(users[:, None], items.shape)
            parts.append(
                pd.DataFrame(
                    {
                        "user": ds.user_ids[owner[keep]],
                        "method": method,
                        "rank": ranks[keep],
                        "item": ds.item_ids[items[keep]],
                    }
                )
            )
        written.append(_write(pd.concat(parts, ignore_index=True), folder / f"{scenario}.topk.csv.gz"))
        if sampled is not None:
            written.append(_write(_sampled_frame(ds, sampled), folder / f"{scenario}.sampled.csv.gz"))
    logger.info("wrote %d prediction files to %s", len(written), folder)
    return written


def _sampled_frame(dataset: Any, sampled: Any) -> pd.DataFrame:
    """``user,positive,item,<method>,...``: the sampled protocol's candidates
    (:class:`~jaxrec.evaluation.topn.SampledRows`), the positive first in each list, with every method's scores."""
    candidates = sampled.candidates
    positives = np.broadcast_to(candidates[:, :, :1], candidates.shape)
    keep = (positives >= 0) & (candidates >= 0)
    owner = np.broadcast_to(sampled.users[:, None, None], candidates.shape)
    frame = {
        "user": dataset.user_ids[owner[keep]],
        "positive": dataset.item_ids[positives[keep]],
        "item": dataset.item_ids[candidates[keep]],
    }
    frame.update({method: scores[keep] for method, scores in sampled.scores.items()})
    return pd.DataFrame(frame)


def metrics_and_predictions(experiment: Any, params: Any, folder: str | Path | None = None) -> tuple[dict, list[Path]]:
    """Evaluate a run into its metrics document and, with ``folder``, write its split and predictions there.

    Args:
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment` or
        :class:`~jaxrec.experiment.topn.TopNExperiment`.
      params: the meta-learned parameters.
      folder: where to write the predictions (None: nowhere).

    Returns:
      ``(document, files written)``.

    Raises:
      OSError: if a prediction file cannot be written.
    """
    if experiment.config.data.feedback == "implicit":
        document = experiment.metrics_document(params, keep_lists=folder is not None)
        files = [] if folder is None else write_topn_predictions(folder, experiment, experiment.last_detail)
    else:
        document = experiment.metrics_document(params)
        files = [] if folder is None else write_rating_predictions(folder, experiment, params)
    if folder is not None:
        _remove_stale(Path(folder), files)
    return document, files


#: the files :func:`write_rating_predictions` and :func:`write_topn_predictions` write: ``<scenario>.<kind>.csv.gz``
_PREDICTION_FILES = {
    f"{scenario}.{kind}.csv.gz"
    for scenario in (*SCENARIOS, *TOPN_SCENARIOS, NEW_ITEM_ONLY)
    for kind in ("split", "predictions", "topk", "sampled")
}


def _remove_stale(folder: Path, written: list[Path]) -> None:
    """Remove the prediction files of an earlier evaluation that this one did not write (another scenario, the
    sampled protocol's rows of a run that sampled): the folder then holds one evaluation's files, never a mix. Only
    files of the names an evaluation writes are touched, never another file or folder."""
    kept = {path.resolve() for path in written}
    stale = sorted(
        p for p in folder.iterdir() if p.name in _PREDICTION_FILES and p.is_file() and p.resolve() not in kept
    )
    for path in stale:
        path.unlink()
    if stale:
        logger.warning(
            "removed %d prediction file(s) of an earlier evaluation from %s: %s",
            len(stale),
            folder,
            ", ".join(p.name for p in stale),
        )
