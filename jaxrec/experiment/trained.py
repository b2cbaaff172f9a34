"""A trained model as its run folder holds it: everything ``jaxrec recommend`` (or a service) needs, without the
training data.

A run folder (``jaxrec train --out DIR``) holds the checkpoints, whose record has the config, the featurizer
(vocabularies, raw item ids, the rating scale) and the tuned inner rate, and ``DIR/items.csv.gz``: every item's raw
id and title, its SHA-256 in the record; a run trained with ``--hybrid`` also keeps its hybrid
(:mod:`jaxrec.experiment.hybrid_record`). :func:`load_trained` rebuilds the model from the record alone (no data is
read, and no path written in a record is opened: the items file has a fixed name inside the folder), so the folder
works from any directory and after the training data is gone.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from jaxrec.core.inner import InnerLoop
from jaxrec.data import DataError, Dataset, Featurizer
from jaxrec.data.augment import unknown_fraction
from jaxrec.data.tasks import genre_domains
from jaxrec.experiment.checkpoint import CheckpointError, CheckpointStore, checkpoint_folder, write_json
from jaxrec.experiment.config import ExperimentConfig
from jaxrec.experiment.hybrid_record import ServedHybrid, read_hybrid
from jaxrec.experiment.protocol import Learner, topn_unknown_ids, trained_catalogue
from jaxrec.experiment.reranker_record import ServedReranker, read_reranker

__all__ = [
    "ITEMS_FILE",
    "RECENCY_FILE",
    "TrainedModel",
    "load_trained",
    "read_items",
    "read_recency",
    "write_items",
    "write_recency",
]

ITEMS_FILE = "items.csv.gz"
RECENCY_FILE = "support_recency.json"


def _items_table(dataset: Dataset) -> pd.DataFrame:
    # the genres say which items a cross-domain run's target domain holds (TrainedModel.outside_domain)
    columns = ["raw_id"] + [c for c in ("title", "genres") if c in dataset.items]
    return dataset.items[columns].reset_index(drop=True)


def write_items(run_folder: str | os.PathLike, dataset: Dataset) -> dict:
    """Write the catalogue of a run (raw item id, title and genres where known, in item-code order) into its folder.

    The file is gzip-compressed CSV written byte-for-byte reproducibly (no time stamp in the gzip header), so that
    its checksum is a function of the data.

    Args:
      run_folder: the run folder.
      dataset: the run's dataset.

    Returns:
      The record to keep in the checkpoint: ``{"sha256": ..., "items": count}``.
    """
    text = _items_table(dataset).to_csv(index=False)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as out:
        out.write(text.encode("utf-8"))
    payload = buffer.getvalue()
    path = Path(run_folder) / ITEMS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return {"sha256": hashlib.sha256(payload).hexdigest(), "items": len(dataset.items)}


def write_recency(run_folder: str | os.PathLike, experiment: Any, params: Any) -> dict | None:
    """Keep the meta method's recency weighting of the support (``support_recency``, chosen on the validation users
    for ``params``, choosing it first if no evaluation has) in the run folder, for ``recommend`` and ``serve``.

    Returns:
      The document written, or None when the run chose none (no ``support_recency``): a stale file is removed.
    """
    path = Path(run_folder) / RECENCY_FILE
    if not experiment.config.topn.support_recency:
        path.unlink(missing_ok=True)
        return None
    experiment.meta_method(params)
    record = experiment.tuned.get("support_recency", {}).get("maml")
    if record is None:  # a log without timestamps: the support has no order to weigh by
        path.unlink(missing_ok=True)
        return None
    document = {"maml": float(record["strength"]), **{k: v for k, v in record.items() if k != "strength"}}
    write_json(path, document)
    return document


def read_recency(run_folder: str | os.PathLike) -> float:
    """The meta method's recency strength kept in a run folder (0 when it keeps none).

    Raises:
      CheckpointError: if the file is unreadable.
    """
    path = Path(run_folder) / RECENCY_FILE
    if not path.is_file():
        return 0.0
    try:
        strength = float(json.loads(path.read_text())["maml"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the run's support recency record is unreadable: {e}") from e
    if not math.isfinite(strength):
        raise CheckpointError(f"{path}: the run's support recency {strength} is not a finite number")
    return strength


def read_items(run_folder: str | os.PathLike, record: dict | None) -> pd.DataFrame:
    """The catalogue of a run folder, checked against the record written with it.

    Args:
      run_folder: the run folder.
      record: the ``"items"`` record of the checkpoint.

    Returns:
      The table (``raw_id`` and, where the data had them, ``title`` and ``genres``), one row per item code.

    Raises:
      CheckpointError: if the record or the file is missing, or the file changed since training.
    """
    path = Path(run_folder) / ITEMS_FILE
    if not isinstance(record, dict) or "sha256" not in record:
        raise CheckpointError(f"{run_folder}: the checkpoint records no item catalogue ({ITEMS_FILE})")
    if not path.is_file():
        raise CheckpointError(f"{run_folder}: the run's item catalogue {path} is missing")
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != record["sha256"]:
        raise CheckpointError(f"{run_folder}: the item catalogue {path} has changed since training")
    return pd.read_csv(
        io.BytesIO(payload), compression="gzip", dtype={"raw_id": str, "genres": str}, keep_default_na=False
    )


@dataclasses.dataclass
class TrainedModel:
    """A meta-learned model restored from its run folder.

    Attributes:
      config: the run's (resolved) config.
      featurizer: the run's featurizer (vocabularies fitted on the meta-train ratings).
      spec: the model's feature spec.
      model: the Flax model.
      inner: the run's :class:`~jaxrec.InnerLoop`.
      inner_lr: the run's inner rate (tuned on validation users where it was).
      params: the meta-learned parameters (a :class:`~jaxrec.MetaSGDParams` for Meta-SGD).
      items: the catalogue, one row per item code (``raw_id``, ``title`` and ``genres`` where known).
      step: the checkpoint's step.
      folder: the checkpoint folder.
      hybrid: the run's hybrid (``jaxrec train --hybrid``), what a top-N recommender ranks by, or None.
      weighted: the training log's interactions carry weights (counts, plays) that are not all 1, so a new user's
        are read as weights too.
      ratings_as_interactions: the training log's ratings were read as interactions (``--feedback implicit``
        without ``--positive-threshold``), each whatever its rating, so a new user's are too: a rating is no weight.
      support_recency: the strength of the recency weighting of a new user's items by their order, the oldest
        first, chosen on the validation users (0: none; :data:`RECENCY_FILE`).
      items_added: the catalogue's last items that were added after training (:meth:`with_items`).
      reranker: the run's re-ranker (``jaxrec train --rerank``), or None: a top-N recommender's lists are re-ranked
        by it where ``reranker.lists`` (the validation users' choice).
    """

    config: ExperimentConfig
    featurizer: Featurizer
    spec: Any
    model: Any
    inner: InnerLoop
    inner_lr: float
    params: Any
    items: pd.DataFrame
    step: int
    folder: Path
    hybrid: ServedHybrid | None = None
    weighted: bool = False
    ratings_as_interactions: bool = False
    support_recency: float = 0.0
    items_added: int = 0
    reranker: ServedReranker | None = None

    @property
    def apply_fn(self):
        """The model's ``apply``."""
        return self.model.apply

    @property
    def loss_fn(self):
        """The inner loop's loss."""
        return self.inner.loss_fn

    @property
    def item_ids(self) -> np.ndarray:
        """Raw item ids, by item code."""
        return np.asarray(self.featurizer.item_raw_ids)

    @property
    def titles(self) -> np.ndarray | None:
        """Titles by item code, or None when the data had none."""
        return self.items["title"].astype(str).to_numpy() if "title" in self.items else None

    def with_items(self, table: pd.DataFrame, where: str = "the new items") -> tuple[TrainedModel, dict]:
        """This model with items added to its catalogue after training, scored from their side features alone
        (:meth:`~jaxrec.data.Featurizer.with_items`): a new item gets the unknown id, as the evaluation's held-out new
        items had, so a model that reads item features ranks it as the ``new_item`` scenario measured. Nothing is
        trained again; a run's hybrid partner is fitted again with the new items as items no one has interacted
        with.

        Args:
          table: the new items' features indexed by raw id (:func:`~jaxrec.data.read_side_table`), its columns
            named as the training ``--item-features`` table's; a ``title`` column gives their titles.
          where: the table's name, for messages.

        Returns:
          ``(model, report)``: the grown model and the featurizer's report of what was added and read, with
          ``id_dropout``, the fraction of training rows whose item id was dropped (0: the model never learned to score
          an item without its id, so new items rank below the known ones and among themselves by their features),
          and ``features_in_params``, whether any parameter is named for an item feature (False: the model likely
          reads none, and scores every new item alike).

        Raises:
          DataError: see :meth:`~jaxrec.data.Featurizer.with_items`; also for a cross-domain run (its catalogue is
            split into domains by genre, which added items would need) and a run of item tasks.
        """
        if self.config.protocol.tasks_by == "item":
            raise DataError(f"{where}: this run adapts to new items from their users (item tasks): add none to it")
        if self.config.protocol.scheme == "cross-domain":
            raise DataError(f"{where}: a cross-domain run splits its catalogue by genre: items cannot be added to it")
        featurizer, report = self.featurizer.with_items(table, where)
        new_ids = featurizer.item_raw_ids[self.featurizer.n_items :]
        # the catalogue file's ids are text; a model built otherwise keeps its column's type
        text = pd.api.types.is_string_dtype(self.items["raw_id"])
        rows = pd.DataFrame({"raw_id": [str(i) for i in new_ids] if text else new_ids})
        if "title" in self.items:
            given = table["title"].to_numpy() if "title" in table else np.full(len(table), None, dtype=object)
            titles = given[report["rows"]]  # the added items' rows of the table, in their codes' order
            rows["title"] = [
                str(i) if t is None or pd.isna(t) else str(t) for t, i in zip(titles, new_ids, strict=True)
            ]
        items = pd.concat([self.items, rows], ignore_index=True)
        hybrid = None
        if self.hybrid is not None:
            grown = featurizer.n_items - self.featurizer.n_items + self.items_added
            hybrid = read_hybrid(self.folder.parent, featurizer, self.config.topn.shots, added=grown)
        # a model that never trained an item without its id scores every new item from an untrained id slot
        meta, implicit = self.config.meta, self.config.data.feedback == "implicit"
        # (a top-N run drops ids only with a new-item scenario to learn them for)
        dropped = (
            topn_unknown_ids(self.config) if implicit else unknown_fraction(meta.item_dropout, meta.task_item_dropout)
        )
        report["id_dropout"] = dropped
        # a model that reads a feature has parameters named for it (the built-in models' embeddings and dense layers)
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(self.params)[0]]
        keys = [*featurizer.item_tables, *featurizer.item_multi_hot]
        report["features_in_params"] = any(key in path for key in keys for path in paths)
        added = self.items_added + report["added"]
        return dataclasses.replace(self, featurizer=featurizer, items=items, hybrid=hybrid, items_added=added), report

    def outside_domain(self) -> np.ndarray | None:
        """The codes of the items outside a cross-domain run's target domain (``--scheme cross-domain``): its new
        users adapt on target-domain ratings and were evaluated on target items, so they are recommended target
        items only (``recommend`` and ``serve`` leave these out of every list).

        Returns:
          int64 codes, sorted; an empty array for a run of another scheme; None for a cross-domain run whose
          catalogue keeps no genres (a run folder written before ``items.csv.gz`` kept them).
        """
        protocol = self.config.protocol
        if protocol.scheme != "cross-domain":
            return np.zeros(0, np.int64)
        if "genres" not in self.items:
            return None
        where = str(self.folder.parent / ITEMS_FILE)
        _, is_target = genre_domains(self.items["genres"], protocol.target_genres, protocol.source_genres, where=where)
        return np.flatnonzero(~is_target).astype(np.int64)


def load_trained(path: str | os.PathLike, step: int | None = None, rerank: bool | None = None) -> TrainedModel:
    """Restore a trained model from a run folder, without the training data.

    Args:
      path: the run folder (or its checkpoint folder).
      step: the checkpoint step (default: the one the run chose on its validation users, else the newest).
      rerank: None: restore the run's re-ranker (``--rerank``), its lists re-ranked where the validation users
        chose them; True: re-ranked whatever they chose; False: leave the re-ranker unread (the lists of the
        meta-learner or its hybrid, whatever state the re-ranker's files are in).

    Returns:
      The :class:`TrainedModel`.

    Raises:
      CheckpointError: if the checkpoint or the catalogue is missing, corrupt or of another format.
    """
    folder = checkpoint_folder(path)
    with CheckpointStore(folder, create=False) as store:
        # a damaged step is named before its record is read
        meta = store.read_meta(store.verify(store.served_step() if step is None else step))
        try:
            config = ExperimentConfig.from_dict(meta.get("config"))
            featurizer = Featurizer.from_dict(meta["featurizer"])
        except (KeyError, TypeError, ValueError, DataError) as e:
            raise CheckpointError(f"{folder}: the checkpoint's record cannot be read: {e}") from e
        spec = featurizer.spec
        if spec.history != config.history():
            spec = dataclasses.replace(spec, history=config.history())
        catalogue = trained_catalogue(featurizer) if config.data.feedback == "implicit" else None
        learner = Learner.build(config, spec, catalogue=catalogue)
        checkpoint = store.restore(learner.template_state(config, spec), meta["step"])
    inner_lr = float((meta.get("tuned") or {}).get("inner_lr", config.meta.inner_lr))
    items = read_items(folder.parent, meta.get("items"))
    return TrainedModel(
        config=config,
        featurizer=featurizer,
        spec=spec,
        model=learner.model,
        inner=learner.inner,
        inner_lr=inner_lr,
        params=checkpoint.state.params,
        items=items,
        step=checkpoint.step,
        folder=folder,
        hybrid=read_hybrid(folder.parent, featurizer, config.topn.shots) if catalogue is not None else None,
        weighted=bool(meta.get("weighted", False)),
        ratings_as_interactions=bool(meta.get("ratings_as_interactions", False)),
        support_recency=read_recency(folder.parent) if catalogue is not None else 0.0,
        reranker=_reranker(folder.parent, featurizer, spec, config, rerank) if catalogue is not None else None,
    )


def _reranker(
    run_folder: Path, featurizer: Featurizer, spec: Any, config: ExperimentConfig, rerank: bool | None
) -> ServedReranker | None:
    if rerank is False:
        return None
    served = read_reranker(run_folder, featurizer, spec, config)
    return dataclasses.replace(served, lists=True) if rerank and served is not None else served
