"""The run engine of ``jaxrec train``: meta-training with checkpoints, an epoch log, clean stops on signals and
exact resume, and the restoring of a run folder.

The data position of a run is its global step: the experiment's batch stream skips exactly ``step`` batches and the
meta-step uses no other randomness, so ``(config, state)`` determines the rest of the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxrec.core.trainer import NonFiniteError, run_steps
from jaxrec.data import DataError
from jaxrec.experiment.checkpoint import CheckpointError, CheckpointStore, checkpoint_folder, read_metadata
from jaxrec.experiment.config import ExperimentConfig
from jaxrec.experiment.protocol import Experiment

__all__ = [
    "RESUME_OVERRIDABLE",
    "RunError",
    "StopRequest",
    "TrainingRun",
    "atomic_write_text",
    "build_experiment",
    "check_fresh_out",
    "make_config",
    "restore_run",
    "resume_config",
]

logger = logging.getLogger(__name__)


class RunError(ValueError):
    """A run cannot start or continue as asked: a flag, an output folder or a saved record is not usable."""


RESUME_OVERRIDABLE = ("epochs", "baselines", "bootstrap", "devices", "eval_batch_size")


def make_config(base: ExperimentConfig | Mapping | None, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """``base`` (a config, a saved record, or None for the defaults) with ``overrides`` (field names) applied.

    A new ``model`` without ``model_kwargs`` drops the base's kwargs (they belong to the base's model); a ``data``
    path without ``dataset`` clears the dataset name. Errors are :class:`RunError` naming the field."""
    try:
        if base is None:
            config = ExperimentConfig()
        elif isinstance(base, ExperimentConfig):
            config = base
        else:
            config = ExperimentConfig.from_dict(base)
        overrides = dict(overrides)
        if "model" in overrides and overrides["model"] != config.model.name and "model_kwargs" not in overrides:
            overrides["model_kwargs"] = {}
        if overrides.get("data") is not None and "dataset" not in overrides:
            overrides["dataset"] = None
        return config.override(**overrides)
    except (TypeError, ValueError) as e:
        raise RunError(f"invalid configuration: {e}") from e


def build_experiment(config):
    try:
        return Experiment(config)
    except (ValueError, TypeError, KeyError) as e:
        if isinstance(e, DataError):
            raise
        raise RunError(f"cannot set up the experiment: {e}") from e


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag checked between meta-steps (a second signal aborts at once)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: give up on the clean exit
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.signum = signum
        logger.info("received signal %d: stopping after this meta-step", signum)

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler, default behaviour
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class TrainingRun:
    """Meta-training with checkpoints, an epoch log and exact resume (the engine of ``jaxrec train``).

    The data position is the global step: :meth:`Experiment.batches` skips exactly ``step`` batches, and the
    meta-step uses no other randomness, so ``(config, state)`` determines the rest of the run.
    """

    def __init__(self, experiment, out: str | os.PathLike, *, keep: int = 3, nonfinite: str = "skip"):
        self.exp = experiment
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = CheckpointStore(self.out / "checkpoints", max_to_keep=keep)
        self.nonfinite = nonfinite
        self.epoch_stats = {"loss_sum": 0.0, "grad_norm_sum": 0.0, "finite": 0, "steps": 0, "skipped": 0}

    # -- state -----------------------------------------------------------------------------------------------
    def start(self, resume: bool):
        """A fresh state, or the newest complete checkpoint's (resume)."""
        template = self.exp.init_state()
        if not resume:
            return template
        checkpoint = self.store.restore(template)
        _check_same_data(checkpoint.meta, self.exp, self.store.folder)
        self.epoch_stats = dict(checkpoint.meta.get("data_position", {}).get("epoch_stats", self.epoch_stats))
        self._truncate_log(checkpoint.step)
        return self.exp.trainer.place(checkpoint.state)

    def save(self, state) -> int:
        step = int(state.step)
        per_epoch = self.exp.steps_per_epoch
        meta = {
            "dataset": self.exp.dataset.name,
            "config": self.exp.config.to_dict(),
            "featurizer": self.exp.featurizer.to_dict(),
            "skipped": int(state.skipped),
            "steps_per_epoch": per_epoch,
            "data_position": {
                "step": step,
                "epoch": step // per_epoch,
                "batch_in_epoch": step % per_epoch,
                "epoch_stats": dict(self.epoch_stats),
            },
        }
        return self.store.save(state, meta)

    # -- epoch log -------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past the restored step (they will be written again) and any torn last line."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", math.inf) <= step:
                kept.append(line)
        atomic_write_text(self.log_path, "".join(k + "\n" for k in kept))

    def _log_epoch(self, state, seconds: float) -> dict:
        s = self.epoch_stats
        record = {
            "epoch": int(state.step) // self.exp.steps_per_epoch,
            "step": int(state.step),
            "loss": s["loss_sum"] / s["finite"] if s["finite"] else None,
            "grad_norm": s["grad_norm_sum"] / s["finite"] if s["finite"] else None,
            "skipped": int(state.skipped),
            "skipped_in_epoch": s["skipped"],
            "seconds": round(seconds, 3),
        }
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.epoch_stats = {"loss_sum": 0.0, "grad_norm_sum": 0.0, "finite": 0, "steps": 0, "skipped": 0}
        return record

    # -- loop ------------------------------------------------------------------------------------------------
    def _account(self, state, batch, metrics, batch_index: int) -> None:
        finite = bool(metrics["finite"])
        s = self.epoch_stats
        s["steps"] += 1
        if finite:
            s["loss_sum"] += float(metrics["loss"])
            s["grad_norm_sum"] += float(metrics["grad_norm"])
            s["finite"] += 1
            return
        s["skipped"] += 1
        if self.nonfinite == "raise":
            users = _raw_users(self.exp, batch.task_id)
            raise NonFiniteError(int(state.step) - 1, batch_index, users, float(metrics["loss"]))

    def train(
        self,
        state,
        stop_step: int,
        *,
        save_every: int = 0,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[Any, int | None]:
        """Meta-train from ``state.step`` to ``stop_step``; returns ``(state, signal number or None)``."""
        start, per_epoch = int(state.step), self.exp.steps_per_epoch
        began = time.perf_counter()
        bar = tqdm(total=stop_step, initial=start, disable=not progress, unit="step", desc="meta-train", leave=True)
        with StopRequest() as stop, contextlib.closing(bar):
            self.exp.resolve_inner_lr()  # a resumed run skips init_state
            loop = run_steps(self.exp.trainer, state, self.exp.batches(start), stop_step=stop_step)
            for step, (state, batch, metrics) in enumerate(loop, start):  # noqa: B007 - the last state is the result
                self._account(state, batch, metrics, step - start)
                bar.update(1)
                if self.epoch_stats["finite"]:
                    bar.set_postfix(
                        loss=f"{self.epoch_stats['loss_sum'] / self.epoch_stats['finite']:.4f}",
                        skipped=int(state.skipped),
                        refresh=False,
                    )
                done = step + 1
                if done % per_epoch == 0:
                    self._log_epoch(state, time.perf_counter() - began)
                if done % per_epoch == 0 or (save_every and done % save_every == 0):
                    self.save(state)
                if on_step is not None:
                    on_step(done)
                if stop.signum is not None:
                    break
            self.save(state)
        return state, stop.signum

    def close(self) -> None:
        self.store.close()


def _raw_users(experiment, task_id) -> list:
    """Raw user ids of a batch's real tasks (dataset codes when unmappable)."""
    if task_id is None:
        return []
    codes = np.asarray(task_id)
    codes = codes[codes >= 0]
    raw = experiment.dataset.user_ids
    return [raw[c].item() if c < len(raw) else int(c) for c in codes]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _check_same_data(meta: dict, experiment, folder: Path) -> None:
    """The data must encode exactly as when the checkpoint was written, or ids would silently mean other items."""
    saved = meta.get("featurizer")
    if saved is None:
        raise CheckpointError(f"{folder}: the checkpoint has no featurizer record (not written by `jaxrec train`?)")
    if _jsonable(experiment.featurizer.to_dict()) != saved:
        raise CheckpointError(
            f"{folder}: the data no longer matches the checkpoint (users, items or their features changed since "
            f"it was written from {meta.get('config', {}).get('data') or meta.get('dataset')!r}); "
            "train again on the current data"
        )


def check_fresh_out(out: Path) -> None:
    folder = out / "checkpoints"
    if folder.is_dir():
        with CheckpointStore(folder, create=False) as store:
            if store.steps():
                raise RunError(
                    f"{out} already holds a run (checkpoints at steps {store.steps()}); pass --resume to continue it "
                    "or choose another --out"
                )


def resume_config(out: Path, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """The config of the run in ``out``, with the ``overrides`` that may change on resume
    (:data:`RESUME_OVERRIDABLE`); any other changed field is a :class:`RunError`, since the run would not be the
    same."""
    meta = read_metadata(out / "checkpoints")
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise RunError(f"{out}: the checkpoint has no config record")
    try:
        ran = ExperimentConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise RunError(f"{out}: the checkpoint's config record cannot be read: {e}") from e
    recorded = _jsonable(ran.flat())
    changed = [
        k
        for k, v in overrides.items()
        # "auto" resolves to what the run recorded, so it asks for no change
        if k not in RESUME_OVERRIDABLE and v != "auto" and _jsonable(v) != recorded.get(k)
    ]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise RunError(
            f"cannot change {flags} on --resume (the run would not be the same); only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change"
        )
    return make_config(ran, {k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE})


def restore_run(path: str | os.PathLike, step: int | None = None, overrides: dict | None = None):
    """``(experiment, checkpoint)`` of a run folder: the experiment rebuilt from the saved config, the state
    restored into its structure; :class:`~jaxrec.experiment.checkpoint.CheckpointError` when missing, corrupt or
    incompatible."""
    folder = checkpoint_folder(path)
    with CheckpointStore(folder, create=False) as store:
        meta = store.read_meta(step)
        saved = meta.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{folder}: the checkpoint has no config record")
        try:
            config = make_config(saved, overrides or {})
        except RunError as e:
            raise CheckpointError(f"{folder}: incompatible checkpoint: {e}") from e
        experiment = build_experiment(config)
        _check_same_data(meta, experiment, folder)
        checkpoint = store.restore(experiment.init_state(), meta["step"])
    return experiment, checkpoint
