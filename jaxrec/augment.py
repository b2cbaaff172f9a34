"""Item-id dropout: train the model to score items whose id it has never seen.

A new item (one with no meta-train rating) reaches the model as the OOV id slot 0, whose embedding and item bias no
training row ever touched: its score can only come from the item's content (genres, year) through layers that
learned to lean on the id instead. DropoutNet (Volkovs, Yu & Poutanen, NeurIPS 2017) trains with a random fraction
``rate`` of the ids replaced by the "missing" input, so that the OOV slot learns the average unknown item and the
network learns to score from content when the id is missing:

    item'_r = 0 with probability rate, else item_r          (independently per training row r)

Applied to training rows only (meta-train batches and the supervised model's minibatches), never to evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.batch import TaskBatch

__all__ = ["drop_ids", "drop_item_ids"]

OOV = 0  # slot 0 of every vocabulary (jaxrec.models)


def drop_ids(ids: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``ids`` with each entry replaced by the OOV slot 0 independently with probability ``rate``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"id dropout rate must be in [0, 1), got {rate}")
    ids = np.asarray(ids)
    if rate == 0.0:
        return ids
    return np.where(rng.random(ids.shape) < rate, OOV, ids).astype(ids.dtype)


def drop_item_ids(batch: TaskBatch, rate: float, rng: np.random.Generator, key: str = "item") -> TaskBatch:
    """``batch`` with :func:`drop_ids` applied to the ``key`` column of its support and query rows (padding rows
    are masked out of every loss, so dropping theirs changes nothing). A batch without that column is returned as
    it is."""
    if key not in batch.support:
        return batch
    support = dict(batch.support, **{key: drop_ids(batch.support[key], rate, rng)})
    query = dict(batch.query, **{key: drop_ids(batch.query[key], rate, rng)})
    return dataclasses.replace(batch, support=support, query=query)
