"""Item-id dropout: train the model to score items whose id it has never seen.

A new item (one with no meta-train rating) reaches the model as the OOV id slot 0, whose embedding and item bias no
training row ever touched: its score can only come from the item's content (genres, year) through layers that
learned to lean on the id instead. DropoutNet (Volkovs, Yu & Poutanen, NeurIPS 2017) trains with a random fraction
``rate`` of the ids replaced by the "missing" input, so that the OOV slot learns the average unknown item and the
network learns to score from content when the id is missing:

    item'_r = 0 with probability rate, else item_r          (independently per training row r)

Row-level dropout mixes known and unknown items in every task; a user of the new-item scenario has none of the
former: every support and query row is an unknown item. Meta-learning trains on tasks, so it can also train on
that task shape: ``task_rate`` drops every item id of a whole task (support and query) with that probability,
which the row-level supervised baseline has no counterpart of.

Applied to training rows only (meta-train batches and the supervised model's minibatches), never to evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.core.batch import TaskBatch

__all__ = ["drop_ids", "drop_item_ids", "id_dropout", "unknown_fraction"]

OOV = 0  # slot 0 of every vocabulary (jaxrec.models)


def drop_ids(ids: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Replace each id by the OOV slot 0 independently with probability ``rate``.

    Args:
      ids: an integer array of vocabulary ids, of any shape.
      rate: the probability of dropping each entry, in ``[0, 1)``.
      rng: the numpy generator the drops are drawn from.

    Returns:
      ``ids`` with the dropped entries set to 0, of the same shape and dtype (``ids`` itself when ``rate`` is 0).

    Raises:
      ValueError: if ``rate`` is not in ``[0, 1)``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"id dropout rate must be in [0, 1), got {rate}")
    ids = np.asarray(ids)
    if rate == 0.0:
        return ids
    return np.where(rng.random(ids.shape) < rate, OOV, ids).astype(ids.dtype)


def drop_item_ids(
    batch: TaskBatch,
    rate: float,
    rng: np.random.Generator,
    key: str = "item",
    task_rate: float = 0.0,
    negatives: bool = False,
) -> TaskBatch:
    """Apply item-id dropout to the support and query rows of a training batch.

    Each id of the ``key`` column is dropped by :func:`drop_ids` with probability ``rate``, and every id of a task
    is dropped with probability ``task_rate`` (one draw per task, support and query alike). Padding rows are masked
    out of every loss, so dropping their ids changes nothing. Only the ``key`` column changes (and, with
    ``negatives``, ``neg_<key>``): the item ids of ``history_item`` stay.

    With implicit feedback every ``key`` row is a positive, so dropping only those ids teaches the model that an
    item without an id is one the user wants, and every new item floods every user's list. ``negatives=True`` drops
    the sampled negatives' ids (``neg_<key>``) at the same rates, so that an unknown id is as often a negative.

    Args:
      batch: the training batch.
      rate: the probability of dropping each row's id (row-level dropout), in ``[0, 1)``.
      rng: the numpy generator the drops are drawn from.
      key: the row key whose ids are dropped.
      task_rate: the probability of dropping every id of a whole task, in ``[0, 1]`` (1: every task is cold, as
        item-task methods that learn a new item's embedding from its features train).
      negatives: also drop the ids of the ``neg_<key>`` column (the sampled negatives of top-N rows), where present.

    Returns:
      ``batch`` with the ``key`` column of its support and query replaced; a batch without that column is
      returned as it is.

    Raises:
      ValueError: if ``task_rate`` is not in ``[0, 1]``, or (for a batch with the ``key`` column) ``rate`` is not in
        ``[0, 1)``.
    """
    if not 0.0 <= task_rate <= 1.0:
        raise ValueError(f"task id dropout rate must be in [0, 1], got {task_rate}")
    if key not in batch.support:
        return batch
    keys = [key] + ([f"neg_{key}"] if negatives and f"neg_{key}" in batch.support else [])
    support = {k: drop_ids(batch.support[k], rate, rng) for k in keys}
    query = {k: drop_ids(batch.query[k], rate, rng) for k in keys if k in batch.query}
    if task_rate:
        whole = rng.random(batch.support[key].shape[0]) < task_rate  # tasks are the leading axis of both sides

        def hide(ids):
            return np.where(whole.reshape((-1,) + (1,) * (ids.ndim - 1)), OOV, ids).astype(ids.dtype)

        support, query = {k: hide(v) for k, v in support.items()}, {k: hide(v) for k, v in query.items()}
    return dataclasses.replace(batch, support=dict(batch.support, **support), query=dict(batch.query, **query))


def id_dropout(rate: float, task_rate: float = 0.0, negatives: bool = False):
    """The batch transform of :func:`drop_item_ids` at these rates (``transform(batch, rng) -> batch``, what
    :class:`~jaxrec.data.stream.StepBatches` applies), or None when both rates are 0.

    Args:
      rate: the row-level drop probability.
      task_rate: the task-level drop probability.
      negatives: also drop the sampled negatives' ids (top-N rows).

    Returns:
      The transform, or None.
    """
    if not (rate or task_rate):
        return None

    def transform(batch: TaskBatch, rng: np.random.Generator) -> TaskBatch:
        return drop_item_ids(batch, rate, rng, task_rate=task_rate, negatives=negatives)

    return transform


def unknown_fraction(rate: float, task_rate: float = 0.0) -> float:
    """The fraction of training rows whose item id is dropped: ``task_rate + (1 - task_rate) * rate``. A loss whose
    negatives are the whole catalogue (the exact ALS loss's Gram term) weighs the catalogue's id-less vectors by it,
    as :func:`drop_item_ids` with ``negatives=True`` does for sampled negatives."""
    return float(task_rate + (1.0 - task_rate) * rate)
