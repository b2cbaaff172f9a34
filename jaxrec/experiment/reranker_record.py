"""The re-ranker a run folder keeps, so that ``jaxrec recommend`` and ``jaxrec serve`` list as the evaluated
``rerank`` method did.

A top-N run trained with ``--rerank MODEL`` meta-trains a second, more expressive model on the same tasks
(:attr:`~jaxrec.experiment.topn.TopNExperiment.rerank_model`) and evaluates ``rerank``: the meta-learner's top
``rerank_candidates`` items for a user, re-scored by the re-ranker adapted to the same support set (the recall
stage and the re-ranking stage both meta-learned). :func:`write_reranker` keeps what that needs beside the
checkpoint, in the run folder:

* ``reranker.json``: the re-ranker's config (the run's, its model the re-ranker's), the candidate count, the
  validation users' choice of lists (:meth:`~jaxrec.experiment.topn.TopNExperiment.rerank_choice`: the re-ranked
  ones only where they rank those users better than the list the run serves without them) and the SHA-256 of the
  file below;
* ``reranker.msgpack``: its meta-learned parameters and inner rate (:func:`flax.serialization.to_bytes`).

:func:`read_reranker` builds the model again from the config and the run's featurizer and restores the parameters
into it, so that the folder stands alone, as its hybrid does (:mod:`jaxrec.experiment.hybrid_record`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from jaxrec.core.inner import InnerLoop
from jaxrec.core.metasgd import split_meta_params
from jaxrec.experiment.checkpoint import CheckpointError, check_kept_file, file_sha256, write_json
from jaxrec.experiment.config import EVALUATION_FIELDS, ExperimentConfig, resolve
from jaxrec.experiment.protocol import CATALOGUE_LOSSES, Learner, trained_catalogue

__all__ = [
    "RERANKER_FILE",
    "RERANKER_PARAMS_FILE",
    "ServedReranker",
    "read_reranker",
    "reranker_config",
    "served_otherwise",
    "write_reranker",
]

logger = logging.getLogger(__name__)

RERANKER_FILE = "reranker.json"
RERANKER_PARAMS_FILE = "reranker.msgpack"


@dataclasses.dataclass(frozen=True)
class ServedReranker:
    """The re-ranking stage of a run: a model adapted to a user's support set that re-scores the meta-learner's
    top ``candidates`` items.

    Attributes:
      name: the re-ranking model's name (``"melu"``, ...).
      model: the Flax model.
      inner: its inner loop.
      state: ``(params, inner_lr)``, its meta-learned initialisation and inner rate(s).
      candidates: the items it re-scores per user (``rerank_candidates``).
      lists: whether a recommender lists re-ranked by default: the validation users' choice (``validation``).
      validation: ``{"metric", "rerank", "<other>", "lists", "users"}``, the re-ranked lists' validation figure
        against the list the run serves without them, and the validation users' count
        (:meth:`~jaxrec.experiment.topn.TopNExperiment.rerank_choice`).
    """

    name: str
    model: Any
    inner: InnerLoop
    state: Any
    candidates: int
    lists: bool
    validation: dict

    @property
    def other(self) -> str:
        """The list the run serves without re-ranking (``"maml"`` or ``"maml+<partner>"``), as recorded."""
        return served_otherwise(self.validation)


def served_otherwise(validation: dict) -> str:
    """The list a run serves without re-ranking, named in its validation record (``"maml"`` or
    ``"maml+<partner>"``: :meth:`~jaxrec.experiment.topn.TopNExperiment.rerank_choice`)."""
    return next(k for k in validation if k not in ("metric", "rerank", "lists", "users"))


def reranker_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config a run's re-ranking model (``config.topn.rerank``) is meta-trained with: the run's, its model the
    re-ranker with the loss, adaptation and inner solver that suit it, keeping its last state (resolved: what a run
    folder records of it)."""
    c = config
    loss = "bpr" if c.topn.ranking_loss in CATALOGUE_LOSSES else c.topn.ranking_loss
    query_loss = None if c.topn.query_loss in CATALOGUE_LOSSES else c.topn.query_loss
    fields = {"model": c.topn.rerank, "ranking_loss": loss, "query_loss": query_loss, "item_start": "random"}
    fields.update(adapt="auto", inner_solver="auto", inner_steps=None)  # what suits the re-ranking model
    if c.topn.rerank == "melu":  # MeLU's features alone may be none (a plain log): the item id is one more field
        fields["model_kwargs"] = {"use_ids": ["item"]}
    # the re-ranker keeps its last state: its own whole-catalogue figure is not the re-ranking's
    fields["select_epoch"] = "last"
    return resolve(c.override(**fields, rerank=None, frozen=None, anchor=0.0))


def _trained_alike(recorded: ExperimentConfig, expected: ExperimentConfig) -> bool:
    """Whether two re-ranker configs train the same model: every field alike but where the data is and how it is
    evaluated (:data:`~jaxrec.experiment.config.EVALUATION_FIELDS`)."""
    a, b = recorded.flat(), expected.flat()
    return all(a[name] == b[name] for name in a if name not in EVALUATION_FIELDS)


def write_reranker(run_folder: str | os.PathLike, experiment: Any, params: Any) -> dict | None:
    """Keep the run's re-ranker in its folder (see the module docstring), meta-training it first if no evaluation
    has (:attr:`~jaxrec.experiment.topn.TopNExperiment.rerank_model`).

    Args:
      run_folder: the run folder.
      experiment: the run's :class:`~jaxrec.experiment.topn.TopNExperiment`.
      params: the meta-learned parameters (the re-ranked lists are compared on the validation users with the
        lists of these).

    Returns:
      The ``reranker.json`` document, or None when the run has no re-ranker (a stale record of an earlier run in
      the folder is then removed).
    """
    folder = Path(run_folder)
    name = experiment.config.topn.rerank
    if name is None:
        for stale in (RERANKER_FILE, RERANKER_PARAMS_FILE):
            (folder / stale).unlink(missing_ok=True)
        return None
    _, state, _ = experiment.rerank_model
    path = folder / RERANKER_PARAMS_FILE
    tmp = path.with_name("tmp-" + path.name)
    tmp.write_bytes(flax.serialization.to_bytes(state))
    os.replace(tmp, path)
    document = {
        "format": 1,
        "model": name,
        "candidates": int(experiment.config.topn.rerank_candidates),
        "validation": experiment.rerank_choice(params),
        "config": reranker_config(experiment.config).to_dict(),
        "params": {"file": RERANKER_PARAMS_FILE, "sha256": file_sha256(path)},
    }
    write_json(folder / RERANKER_FILE, document)
    return document


def read_reranker(
    run_folder: str | os.PathLike, featurizer: Any, spec: Any, config: ExperimentConfig | None = None
) -> ServedReranker | None:
    """The re-ranker kept in a run folder, its parameters restored, with the validation users' choice of whether
    to list by it (:attr:`ServedReranker.lists`); None when the folder keeps none.

    Args:
      run_folder: the run folder.
      featurizer: the run's featurizer (the catalogue a catalogue loss is built on).
      spec: the run's feature spec (the re-ranker reads the same rows as the meta-learner).
      config: the run's config, or None: a kept re-ranker trained for another (a resumed run stopped before its end
        wrote its own) is then not read, with a warning.

    Raises:
      CheckpointError: if the record is unreadable, its parameters file is missing, changed or of another shape.
    """
    folder = Path(run_folder)
    path = folder / RERANKER_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        recorded = ExperimentConfig.from_dict(document["config"])
        candidates, checksum = int(document["candidates"]), document["params"]["sha256"]
        validation = dict(document["validation"])
        lists = validation["lists"] == "rerank"
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the run's re-ranker record is unreadable: {e}") from e
    if config is not None and not _trained_alike(recorded, reranker_config(config)):
        logger.warning("%s: the kept re-ranker was trained for another config of the run; it is not used", path)
        return None
    params_path = folder / RERANKER_PARAMS_FILE
    check_kept_file(path, params_path, checksum, "the re-ranker's parameters")
    try:
        learner = Learner.build(recorded, spec, catalogue=trained_catalogue(featurizer))
        template = split_meta_params(learner.template_state(recorded, spec).params, recorded.meta.inner_lr)
        state = flax.serialization.from_bytes(template, params_path.read_bytes())
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: the re-ranker cannot be restored: {e}") from e
    # from_bytes keeps the stored arrays whatever their shapes: a record of another model is named here, not later
    expected = [(jax.tree_util.keystr(k), np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(template)]
    stored = [(jax.tree_util.keystr(k), np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(state)]
    if expected != stored:
        wrong = next((e, s) for e, s in itertools.zip_longest(expected, stored) if e != s)
        raise CheckpointError(
            f"{path}: the re-ranker's parameters are not those of its model (first difference: expected, stored "
            f"= {wrong})"
        )
    logger.info("re-ranker %s (%d candidates) restored from %s", recorded.model.name, candidates, folder)
    return ServedReranker(
        name=recorded.model.name,
        model=learner.model,
        inner=learner.inner,
        state=state,
        candidates=candidates,
        lists=lists,
        validation=validation,
    )
