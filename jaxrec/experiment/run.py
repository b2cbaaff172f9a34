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
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxrec.core.errors import JaxrecError
from jaxrec.core.trainer import NonFiniteError, run_steps
from jaxrec.data import DataError, Featurizer
from jaxrec.experiment.checkpoint import (
    CheckpointError,
    CheckpointStore,
    checkpoint_folder,
    read_metadata,
)
from jaxrec.experiment.config import EVALUATION_FIELDS, ExperimentConfig, as_flags, resolve
from jaxrec.experiment.hybrid_record import HYBRID_FILE, INTERACTIONS_FILE, write_hybrid
from jaxrec.experiment.protocol import Experiment
from jaxrec.experiment.reranker_record import RERANKER_FILE, RERANKER_PARAMS_FILE, read_reranker, write_reranker
from jaxrec.experiment.selection import EpochSelector
from jaxrec.experiment.topn import TopNExperiment
from jaxrec.experiment.trained import ITEMS_FILE, RECENCY_FILE, read_items, write_items, write_recency

__all__ = [
    "LOCK_FILE",
    "RESUME_OVERRIDABLE",
    "RUN_FILES",
    "RunError",
    "Interrupted",
    "StopRequest",
    "TrainingRun",
    "atomic_write_text",
    "build_experiment",
    "FolderLock",
    "check_fresh_out",
    "make_config",
    "complete_steps",
    "never_saved",
    "restore_run",
    "resolved_fields",
    "resume_config",
]

logger = logging.getLogger(__name__)


class RunError(JaxrecError, ValueError):
    """A run cannot start or continue as asked: a flag, an output folder or a saved record is not usable."""


#: how often the progress bar's loss is read from the device (at most; and at each epoch's end)
_BAR_REFRESH_SECONDS = 1.0
#: the most meta-steps whose metrics wait on the device: a host that dispatches ahead of the device holds each
#: queued step's batch there, so it is held back this far (the older steps' metrics read, the newest left in flight)
_MAX_PENDING_STEPS = 64

RESUME_OVERRIDABLE = ("epochs", "baselines", "bootstrap", "devices", "eval_batch_size", "data", "data_dir")
RESUME_OVERRIDABLE += ("item_features", "user_features")


def make_config(base: ExperimentConfig | Mapping | None, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Apply field overrides to a base config.

    A new ``model`` without ``model_kwargs`` drops the base's kwargs (they belong to the base's model); a ``data``
    path without ``dataset`` clears the dataset name.

    Args:
      base: a config, a saved record, or None for the defaults.
      overrides: new values by field name.

    Returns:
      The config.

    Raises:
      RunError: if the record or a value is not valid; the message names the field.
    """
    try:
        if base is None:
            config = ExperimentConfig()
        elif isinstance(base, ExperimentConfig):
            config = base
        else:
            config = ExperimentConfig.from_dict(base)
        overrides = dict(overrides)
        if overrides.get("data") is not None and "dataset" not in overrides:
            overrides["dataset"] = None
        return config.override(**overrides)
    except (TypeError, ValueError) as e:
        raise RunError(f"invalid configuration: {e}") from e


def build_experiment(config, dataset=None):
    """Build the experiment of a config: :class:`~jaxrec.experiment.topn.TopNExperiment` for
    ``feedback="implicit"``, else :class:`~jaxrec.experiment.protocol.Experiment`.

    Args:
      config: the config.
      dataset: a :class:`~jaxrec.data.Dataset` in memory to use in place of the data the config names, or None.

    Returns:
      The experiment.

    Raises:
      RunError: if the experiment cannot be set up from the config.
      DataError: if the data cannot be read.
    """
    try:
        if config.data.feedback == "implicit":
            return TopNExperiment(config, dataset)
        return Experiment(config, dataset)
    except (ValueError, TypeError, KeyError) as e:
        if isinstance(e, DataError):
            raise
        raise RunError(f"cannot set up the experiment: {e}") from e


def os_reason(error: OSError) -> str:
    """An OS error in words: ``"no space left on device"``, ``"permission denied"``, ... (its ``strerror``)."""
    return (error.strerror or str(error) or type(error).__name__).lower()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (:func:`atomic_write`).

    Args:
      path: the file.
      text: its content.

    Raises:
      RunError: as :func:`atomic_write`.
    """
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write(path: Path, write: Callable[[Any], Any], binary: bool = True) -> None:
    """Write a file atomically: ``write(f)`` into a synced temporary file beside it, moved into place with
    ``os.replace``.

    Args:
      path: the file.
      write: writes the content to the open file ``f``.
      binary: open the file in binary mode (else text).

    Raises:
      RunError: if the OS refuses (no space left, permission denied, ...), naming the file; no partial file is
        left in its place.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RunError(f"{os_reason(e)} while writing {path}") from e


class Interrupted(BaseException):  # noqa: N818 - a signal, not an error: a BaseException like KeyboardInterrupt
    """A SIGINT or SIGTERM that stops what the process is doing (not caught by ``except Exception``).

    Attributes:
      signum: the signal's number.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag checked between meta-steps; a second signal aborts at once: it goes to the
    handler installed before (the ``jaxrec`` command's exits at once), or raises :class:`Interrupted`.

    A context manager: the handlers are installed on entry (in the main thread only) and the previous ones
    restored on exit.

    Attributes:
      signum: the number of the signal received, or None.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: give up on the clean exit, as the caller's handler would
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise Interrupted(signum)
        self.signum = signum
        logger.info("received signal %d: stopping after this meta-step", signum)

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler, default behaviour
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(sig, previous)


LOCK_FILE = ".jaxrec-train.lock"


try:  # POSIX; elsewhere a run folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class FolderLock:
    """A run folder held by one training process: an exclusive ``flock`` on :data:`LOCK_FILE`, released by
    :meth:`release` (a context manager too), or by the OS when the process ends, however it ends.

    Two processes training into one folder (a job requeued while its first run still lives) would delete each
    other's checkpoints and interleave their epoch logs. Within one process the lock is shared (a notebook cell run
    again builds its second run before the first is let go): the folder is let go when its last holder releases it.
    Where the OS or the file system has no ``flock`` (Windows, a network file system mounted without it) the folder is
    not locked, with a warning.

    Raises:
      RunError: if another process holds the folder (its pid named), or the folder cannot be written.
    """

    # this process's held folders, by the folder's (device, inode): a path deleted and made again is another folder
    _held: dict[tuple[int, int], list] = {}  # -> [open lock file, holders]

    def __init__(self, out: Path):
        self.out = Path(out)
        self._key: tuple[int, int] | None = None
        if fcntl is None:
            logger.warning("%s: this platform has no flock; the run folder is not locked against a second run", out)
            return
        try:
            info = os.stat(self.out)
        except OSError as e:
            raise RunError(f"cannot write the run folder {self.out}: {os_reason(e)}") from e
        key = (info.st_dev, info.st_ino)
        if key in self._held:
            self._held[key][1] += 1
            self._key = key
            return
        try:
            handle = open(self.out / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the run, closed by release()
        except OSError as e:
            raise RunError(f"cannot write the run folder {self.out}: {os_reason(e)}") from e
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunError(f"{out} is being trained by pid {holder}: wait for it to end, or stop it first") from None
        except OSError as e:  # no flock on this file system: run unlocked rather than not at all
            handle.close()
            logger.warning("%s: cannot lock the run folder (%s); it is not locked against a second run", out, e)
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._held[key] = [handle, 1]
        self._key = key

    def release(self) -> None:
        """Let the folder go, once its last holder in this process has (idempotent; also when a holder is
        collected unreleased, as a ``TrainingRun`` never closed is)."""
        key, self._key = self._key, None
        if key is None or key not in self._held:
            return
        entry = self._held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[key]
            entry[0].close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the registry may be gone: the OS lets go
            self.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TrainingRun:
    """Meta-training with checkpoints, an epoch log and exact resume (the engine of ``jaxrec train``).

    The data position is the global step: :meth:`Experiment.batches` skips exactly ``step`` batches, and the
    meta-step uses no other randomness, so ``(config, state)`` determines the rest of the run.

    Args:
      experiment: the :class:`~jaxrec.experiment.protocol.Experiment`.
      out: the run folder (created if needed).
      keep: checkpoints to keep.
      nonfinite: a non-finite meta-step: ``"skip"`` (count it) or ``"raise"`` (a ``NonFiniteError`` naming its
        users).
      lock: the :class:`FolderLock` already holding ``out`` (its holder releases it: ``jaxrec train`` holds it
        until its last write), or None to take one here, released by :meth:`close`.

    Attributes:
      exp: the experiment.
      out: the run folder.
      store: the :class:`~jaxrec.experiment.checkpoint.CheckpointStore` of ``out/checkpoints``.
      nonfinite: what a non-finite meta-step does.
      epoch_stats: the running sums of the current epoch (loss, grad norm, finite, skipped and all steps), as far
        as they were read from the device: complete at an epoch's end and at each checkpoint, not after each step.
    """

    def __init__(
        self,
        experiment,
        out: str | os.PathLike,
        *,
        keep: int = 3,
        nonfinite: str = "skip",
        lock: FolderLock | None = None,
    ):
        self.exp = experiment
        self.out = Path(out)
        self._own_lock = lock is None  # a lock given is its giver's to release (the command holds it longer)
        self.store = None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = FolderLock(self.out) if lock is None else lock
            self.store = CheckpointStore(self.out / "checkpoints", max_to_keep=keep)
            self.interactions = experiment.dataset.fingerprint()  # once: every checkpoint records the same log
        except BaseException as e:
            self.close()
            if isinstance(e, OSError):
                raise RunError(f"cannot write the run folder {self.out}: {os_reason(e)}") from e
            raise
        self.nonfinite = nonfinite
        self.items: dict | None = None  # the catalogue's record, written by start()
        self.weighted = experiment.dataset.has_weights  # a new user's weights are read as the log's were
        # ... and a new user's ratings as the log's: each an interaction where the log's were, whatever the rating
        self.ratings_as_interactions = bool(experiment.dataset.report.get("ratings_as_interactions", False))
        self.epoch_stats = {"loss_sum": 0.0, "grad_norm_sum": 0.0, "finite": 0, "steps": 0, "skipped": 0}
        self._pending: list[dict] = []  # the metrics of steps not yet added to epoch_stats, still on the device
        self._skipped = 0  # the run's non-finite steps, as far as they are read (the progress bar's)
        self.selector = None  # an EpochSelector when the run keeps a state chosen on its validation users

    # -- state -----------------------------------------------------------------------------------------------
    def start(self, resume: bool):
        """Get the state to train from.

        On resume the data must encode as when the checkpoint was written, the epoch statistics are restored and
        log lines past the checkpoint's step are dropped.

        Args:
          resume: restore the newest complete checkpoint instead of starting afresh.

        Returns:
          The state, placed on the trainer's devices.

        Raises:
          CheckpointError: on resume, if there is no usable checkpoint or the data does not match it.
          RunError: on a fresh start, if the folder already holds a run's checkpoints or files.
        """
        if not resume:
            held = [name for name in RUN_FILES if name != "checkpoints" and (self.out / name).exists()]
            saved = self.store.steps()
            unsaved = never_saved(self.out)
            if (saved or held) and not unsaved:  # a new run would mix its files with the other's
                steps = f"checkpoints at steps {saved}" if saved else "no checkpoint"
                raise RunError(
                    f"{self.out} already holds a run ({steps}; {', '.join(held) or 'no other run file'}): "
                    "start(resume=True) continues it; a new run needs a folder of its own "
                    "(jaxrec.experiment.run.check_fresh_out(out, overwrite=True) clears this one)"
                )
            self.items = write_items(self.out, self.exp.dataset)  # the catalogue the folder stands alone with
            state = self.exp.init_state()
            self.selector = self._selector(None)
            if self.selector is not None:  # the start is a candidate: scored and kept
                self._observe(int(state.step), state)
                self.save(state)
            return state
        meta = self.store.read_meta(self.store.verify())
        if (self.out / ITEMS_FILE).is_file():
            read_items(self.out, meta.get("items"))  # the catalogue of the run being continued, unchanged since
            self.items = meta.get("items")
        else:
            self.items = write_items(self.out, self.exp.dataset)
        self.exp.use_tuned(meta.get("tuned"))  # the rate the run trained with, not tuned again
        # the data is checked before the arrays are read: changed features can change their shapes
        _check_same_data(meta, self.exp, self.store.folder, self.interactions)
        checkpoint = self.store.restore(self.exp.template_state(), meta["step"])
        self.epoch_stats = dict(checkpoint.meta.get("data_position", {}).get("epoch_stats", self.epoch_stats))
        self._truncate_log(checkpoint.step)
        self.selector = self._selector((meta.get("tuned") or {}).get("epoch"))
        if self.selector is not None:  # said now, not after the next epoch, which reads them
            steps = self.store.steps()
            for needed in sorted(self.selector.needed_steps):
                if needed not in steps:
                    raise CheckpointError(
                        f"{self.store.folder}: the run's state chosen so far on its validation users, or the best "
                        f"scored, is gone (step {needed}); the steps are {steps}"
                    )
                self.store.verify(needed)  # and whole
        return self.exp.trainer.place(checkpoint.state)

    def _selector(self, record: dict | None):
        """The run's :class:`~jaxrec.experiment.selection.EpochSelector` (a resumed run's from its record), or None
        when it keeps the last state (``select_epoch="last"``, or a rated run)."""
        config = self.exp.config
        if config.data.feedback != "implicit" or config.topn.select_epoch == "last":
            return None
        if record is None and self.store.steps():  # a run begun without a choice keeps its last state
            return None
        if record is None:
            return self.exp.epoch_selector(self._figures_at)
        return EpochSelector.from_record(record, self._figures_at)  # its rule: the run's, fixed on resume

    def _figures_at(self, step: int) -> dict:
        """The validation statistics of a saved step (a candidate scored before a resume)."""
        state = self.store.restore(self.exp.template_state(), step).state
        return self.exp.validation_stats(self.exp.trainer.place(state).params)

    def _observe(self, step: int, state) -> float:
        """Score the state at ``step`` on the validation users, choose again, and record the choice."""
        self.selector.load_best()  # first: scoring a state records its recency choice, the current one's last
        self.selector.observe(step, self.exp.validation_stats(state.params))
        self.exp.note_epoch_choice(self.selector)
        return self.selector.scores[step]

    def chosen_state(self, state):
        """The state the run keeps: the one chosen on the validation users (restored) when it stopped at a scored
        candidate (an epoch's end), else ``state`` (a run stopped between epochs keeps its last state until resumed).
        :meth:`finish` also writes what serving it needs.
        """
        step = int(state.step)
        if self.selector is None or (kept := self.selector.kept_step(step)) == step:
            return state
        restored = self.store.restore(self.exp.template_state(), kept).state
        return self.exp.trainer.place(restored)

    def finish(self, state):
        """The state the run keeps (:meth:`chosen_state`), with what serving it needs written beside the checkpoints
        (:meth:`keep_serving_records`): the end of a run trained from Python, as of ``jaxrec train``. For a run that
        trained to its end: one stopped by a signal is resumed first, as the command resumes it.

        Returns:
          The kept state.
        """
        kept = self.chosen_state(state)
        self.keep_serving_records(kept.params)
        return kept

    def keep_serving_records(self, params: Any) -> dict[str, dict | None]:
        """Write what ranking a new user as the evaluation ranked them needs beside the checkpoints, for
        :func:`~jaxrec.experiment.trained.load_trained`, ``jaxrec recommend`` and ``jaxrec serve``: a top-N run's
        hybrid (``hybrid.json``, :func:`~jaxrec.experiment.hybrid_record.write_hybrid`) and its recency weighting of
        the support (``support_recency.json``, :func:`~jaxrec.experiment.trained.write_recency`), each chosen on the
        validation users for ``params``, and its re-ranker (``reranker.json``,
        :func:`~jaxrec.experiment.reranker_record.write_reranker`; a stale file of a run without one is removed).
        Without them a reloaded run ranks by the adapted model alone, its support unweighted.

        Returns:
          ``{"hybrid": ..., "support_recency": ..., "reranker": ...}``, each a record or None (empty for a rating
          run).

        Raises:
          RunError: if a record cannot be written.
        """
        if self.exp.config.data.feedback != "implicit":
            return {}
        records = {}
        for name, write in (("hybrid", write_hybrid), ("support_recency", write_recency), ("reranker", write_reranker)):
            try:
                records[name] = write(self.out, self.exp, params)
            except OSError as e:
                raise RunError(f"cannot write the {name.replace('_', ' ')} record to {self.out}: {os_reason(e)}") from e
        return records

    def save(self, state) -> int:
        """Checkpoint a state with its record (dataset, config, featurizer and data position). Call :meth:`start`
        first: it writes the item catalogue (``items.csv.gz``) that reloading the run needs.

        Args:
          state: the training state.

        Returns:
          The step saved.
        """
        self._settle()
        step = int(state.step)
        per_epoch = self.exp.steps_per_epoch
        meta = {
            "dataset": self.exp.dataset.name,
            "config": self.exp.config.to_dict(),
            "featurizer": self.exp.featurizer.to_dict(),
            "interactions": self.interactions,
            "weighted": self.weighted,
            "ratings_as_interactions": self.ratings_as_interactions,
            "data_in_memory": bool(getattr(self.exp, "data_in_memory", False)),
            "tuned": self.exp.tuned,
            "items": self.items,
            "skipped": int(state.skipped),
            "steps_per_epoch": per_epoch,
            "data_position": {
                "step": step,
                "epoch": step // per_epoch,
                "batch_in_epoch": step % per_epoch,
                "epoch_stats": dict(self.epoch_stats),
            },
        }
        keep = self.selector.needed_steps if self.selector is not None else ()
        try:
            return self.store.save(state, meta, keep=keep)
        except OSError as e:
            raise RunError(f"{os_reason(e)} while saving step {step} to {self.store.folder}") from e

    # -- epoch log -------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        """The epoch log, ``out/metrics.jsonl``: one JSON line per finished epoch (its step, mean loss and gradient
        norm, skipped steps, the validation figure where epochs are chosen on it, and ``seconds``: the epoch's own
        wall time in this process, its validation included and its end-of-epoch checkpoint not; a resumed epoch's
        counts from the resume)."""
        return self.out / "metrics.jsonl"

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past the restored step (they will be written again) and a torn last line; an unreadable
        line elsewhere, or epochs missing before the step, are dropped or missing with a warning naming the file."""
        epochs = step // self.exp.steps_per_epoch  # the epochs finished before the restored step
        if not self.log_path.exists():
            if epochs:
                logger.warning(
                    "%s is missing: the %d epoch(s) before step %d are not in it", self.log_path, epochs, step
                )
            return
        try:
            lines = self.log_path.read_bytes().split(b"\n")
        except OSError as e:
            raise RunError(f"{os_reason(e)} while reading the epoch log {self.log_path}") from e
        while lines and not lines[-1].strip():
            lines.pop()
        kept, unreadable = [], []
        for number, line in enumerate(lines, 1):
            try:
                text = line.decode("utf-8")
                past = json.loads(text).get("step", math.inf) > step
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
                if number < len(lines):  # the last line may be torn by a kill mid-write: that one is expected
                    unreadable.append(number)
                continue
            if not past:
                kept.append(text)
        if unreadable:
            shown = ", ".join(map(str, unreadable[:10])) + (" ..." if len(unreadable) > 10 else "")
            logger.warning("%s: line(s) %s unreadable, dropped", self.log_path, shown)
        if len(kept) < epochs:
            logger.warning(
                "%s holds %d of the %d epoch(s) before step %d: the others are not in it",
                self.log_path,
                len(kept),
                epochs,
                step,
            )
        atomic_write_text(self.log_path, "".join(k + "\n" for k in kept))

    def _log_epoch(self, state, seconds: float, validation: float | None = None) -> dict:
        self._settle()
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
        if validation is not None:
            record[f"validation_{self.selector.metric}"] = validation
        try:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunError(f"{os_reason(e)} while writing the epoch log {self.log_path}") from e
        self.epoch_stats = {"loss_sum": 0.0, "grad_norm_sum": 0.0, "finite": 0, "steps": 0, "skipped": 0}
        return record

    # -- loop ------------------------------------------------------------------------------------------------
    def _account(self, state, batch, metrics, batch_index: int) -> None:
        """Keep a step's metrics for :meth:`_settle`; under ``nonfinite="raise"``, check the step on the host now
        (a sync per step, the price of naming the step's users)."""
        self._pending.append(metrics)
        if self.nonfinite == "raise" and not bool(metrics["finite"]):
            users = _raw_users(self.exp, batch.task_id)
            raise NonFiniteError(int(state.step) - 1, batch_index, users, float(metrics["loss"]))

    def _settle(self, in_flight: int = 0) -> None:
        """Add the kept steps' metrics to ``epoch_stats``, but the newest ``in_flight`` of them.

        Read from the device at an epoch's end, a checkpoint and a refresh of the progress bar, not after every
        step: reading a step's loss waits for the step, and the next one would be dispatched only then. A refresh
        leaves the newest step in flight, so the device has work while the host reads. The sums are added in step
        order whenever they are read, so the epoch log does not depend on when that was.
        """
        ready = len(self._pending) - in_flight
        if ready <= 0:
            return
        metrics, self._pending = jax.device_get(self._pending[:ready]), self._pending[ready:]
        s = self.epoch_stats
        for m in metrics:
            s["steps"] += 1
            if bool(m["finite"]):
                s["loss_sum"] += float(m["loss"])
                s["grad_norm_sum"] += float(m["grad_norm"])
                s["finite"] += 1
            else:
                s["skipped"] += 1
                self._skipped += 1

    def train(
        self,
        state,
        stop_step: int,
        *,
        save_every: int = 0,
        progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[Any, int | None]:
        """Meta-train from ``state.step`` to ``stop_step``.

        Every finished epoch is logged and checkpointed; the last state is checkpointed too. A SIGINT / SIGTERM
        stops after the current meta-step.

        Args:
          state: the starting state.
          stop_step: the step to stop at.
          save_every: also checkpoint every this many steps (0: per epoch only).
          progress: show a progress bar.
          on_step: called with the number of steps done after each step.

        Returns:
          ``(state, signal number or None)``.

        Raises:
          NonFiniteError: with ``nonfinite="raise"``, at the first non-finite meta-step.
        """
        start, per_epoch = int(state.step), self.exp.steps_per_epoch
        epoch_began = time.perf_counter()
        bar = tqdm(total=stop_step, initial=start, disable=not progress, unit="step", desc="meta-train", leave=True)
        with StopRequest() as stop, contextlib.closing(bar):
            self.exp.resolve_inner_lr()  # a resumed run skips init_state
            loop = run_steps(self.exp.trainer, state, self.exp.batches(start), stop_step=stop_step)
            shown, self._skipped = time.perf_counter(), int(state.skipped)
            for step, (state, batch, metrics) in enumerate(loop, start):  # noqa: B007 - the last state is the result
                self._account(state, batch, metrics, step - start)
                done = step + 1
                ends_epoch = done % per_epoch == 0
                refresh = progress and time.perf_counter() - shown > _BAR_REFRESH_SECONDS
                if ends_epoch or refresh or len(self._pending) >= _MAX_PENDING_STEPS:
                    self._settle(in_flight=0 if ends_epoch else 1)  # at an epoch's end, before its time is taken
                    s, shown = self.epoch_stats, time.perf_counter()
                    if s["finite"]:
                        bar.set_postfix(loss=f"{s['loss_sum'] / s['finite']:.4f}", skipped=self._skipped, refresh=False)
                bar.update(1)
                if done % per_epoch == 0:
                    score = None if self.selector is None else self._observe(done, state)
                    self._log_epoch(state, time.perf_counter() - epoch_began, score)
                if done % per_epoch == 0 or (save_every and done % save_every == 0):
                    self.save(state)
                if done % per_epoch == 0:  # the next epoch's time starts after this one's checkpoint
                    epoch_began = time.perf_counter()
                if on_step is not None:
                    on_step(done)
                if stop.signum is not None:
                    break
            self.save(state)
        return state, stop.signum

    def close(self) -> None:
        """Close the checkpoint store and let the folder go (:class:`FolderLock`, unless it was given)."""
        try:
            if self.store is not None:
                self.store.close()
        finally:
            lock = getattr(self, "_lock", None)
            if lock is not None and self._own_lock:
                lock.release()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _raw_users(experiment, task_id) -> list:
    """Raw user ids of a batch's real tasks (dataset codes when unmappable)."""
    if task_id is None:
        return []
    codes = np.asarray(task_id)
    codes = codes[codes >= 0]
    raw = experiment.dataset.user_ids
    # an object array of text ids holds Python strings, which have no .item()
    return [(raw[c].item() if hasattr(raw[c], "item") else raw[c]) if c < len(raw) else int(c) for c in codes]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resolved_fields(config: ExperimentConfig) -> dict[str, Any]:
    """Every field of ``config`` as a run that started from it records it: resolved
    (:func:`~jaxrec.experiment.config.resolve`: the adapted set, the solver, a model's own frozen leaves ...) and as
    JSON (tuples as lists), so that the original command repeated compares equal to its run's record; a config that
    cannot be resolved, as given."""
    try:
        config = resolve(config)
    except ValueError:  # what cannot be resolved cannot be the recorded run's: compared as given, it differs
        pass
    return _jsonable(config.flat())


def _check_same_data(meta: dict, experiment, folder: Path, interactions: dict | None = None) -> None:
    """The data must encode exactly as when the checkpoint was written, or ids would silently mean other items, and
    hold the same interactions (``interactions``: the experiment's :meth:`~jaxrec.data.Dataset.fingerprint` when
    the caller has it, else computed here)."""
    saved = meta.get("featurizer")
    if saved is None:
        raise CheckpointError(f"{folder}: the checkpoint has no featurizer record (not written by `jaxrec train`?)")

    def encoding(record: dict) -> dict:  # what the ids mean; the dataset's name (a file's stem) is not part of it
        # a record written before the exact bin edges and the item columns' names were kept lacks them: the bins'
        # labels and the feature keys, which it has, say the same
        later = {"dataset"} | ({"bin_edges", "item_feature_names"} - set(saved))
        return {k: v for k, v in record.items() if k not in later}

    data = meta.get("config", {}).get("data") or {}
    source = data.get("path") or data.get("dataset") or meta.get("dataset")
    now_record = encoding(_jsonable(experiment.featurizer.to_dict()))
    if now_record != encoding(saved):
        tables = [f"{data[f]} ({f.split('_')[0]} features)" for f in ("item_features", "user_features") if data.get(f)]
        ours, theirs = now_record.get("vocabularies", {}), saved.get("vocabularies", {})
        changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))  # which features
        what = f"; the features that differ: {', '.join(changed)}" if changed else ""
        raise CheckpointError(
            f"{folder}: the data no longer matches the checkpoint (users, items or their features changed since "
            f"it was written from {', '.join([repr(source), *tables])}{what}); train again on the current data"
        )
    then = meta.get("interactions")
    if then is None:  # a checkpoint written before the interactions were recorded
        return
    now = interactions if interactions is not None else experiment.dataset.fingerprint()
    if any(then[key] != now.get(key) for key in then):  # the keys it recorded: older records have fewer
        if then.get("sha256_any_order") == now["sha256_any_order"]:
            raise CheckpointError(
                f"{folder}: the interactions are those the run was trained on from {source!r}, in another row "
                "order: the split and every draw follow the rows' order, so the run's figures come from the order "
                "it read; pass the log in that order"
            )
        raise CheckpointError(
            f"{folder}: the interactions differ from those the run was trained on from {source!r} ({then['rows']} "
            f"rows of {', '.join(then['columns'])} then, {now['rows']} rows of {', '.join(now['columns'])} now): "
            "the same users and items, another log or another reading of it (--columns, --positive-threshold); "
            "the splits would not be the run's"
        )


# what a run writes in its folder
RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "metrics.json",
    ITEMS_FILE,
    HYBRID_FILE,
    INTERACTIONS_FILE,
    RECENCY_FILE,
    RERANKER_FILE,
    RERANKER_PARAMS_FILE,
)


def check_fresh_out(out: Path, overwrite: bool = False) -> None:
    """Check that a folder holds no run's files, so that a new run neither overwrites nor mixes with another.

    Args:
      out: the run folder.
      overwrite: remove the run files found (:data:`RUN_FILES` only; other files are left alone) instead of
        refusing.

    Raises:
      RunError: if ``out`` holds checkpoints, an epoch log or a metrics document and ``overwrite`` is false.
    """
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return
    if never_saved(out):
        return
    if overwrite:  # never under a run that lives in another process (the command's own lock is shared)
        with FolderLock(out):
            _remove_run_files(out, found)
        return
    steps = complete_steps(out)
    if steps:
        raise RunError(
            f"{out} already holds a run (checkpoints at steps {steps}): {', '.join(found)}; pass --resume to "
            "continue it, --overwrite to replace it, or choose another --out"
        )
    raise RunError(
        f"{out} holds a run's files and no complete checkpoint: {', '.join(found)}; nothing to resume: pass "
        "--overwrite to replace them, or choose another --out"
    )


def _remove_run_files(out: Path, found: list[str]) -> None:
    for name in found:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    logger.warning("--overwrite: removed %s from %s", ", ".join(found), out)


def never_saved(out: Path) -> bool:
    """Whether ``out`` holds a run stopped before it wrote anything but its catalogue: an empty (or unfinished)
    checkpoint folder and ``items.csv.gz``, nothing else of :data:`RUN_FILES`. There is nothing to resume, nor to
    keep, and a new run may start there (one that logged an epoch first is another run's log: ``--overwrite``)."""
    found = {name for name in RUN_FILES if (out / name).exists()}
    if not found <= {"checkpoints", ITEMS_FILE}:
        return False
    folder = out / "checkpoints"
    return not folder.exists() or (folder.is_dir() and not complete_steps(out))


def complete_steps(out: Path) -> list[int]:
    """The complete checkpoint steps of the run folder ``out`` (none without a checkpoint folder)."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    with CheckpointStore(folder, create=False) as store:
        return store.steps()


def resume_config(out: Path, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Read the config of the run in a folder, with the overrides that may change on resume.

    Args:
      out: the run folder.
      overrides: new values by field name; only those of :data:`RESUME_OVERRIDABLE` may differ from the run's
        (``"auto"`` asks for no change).

    Returns:
      The run's config with the allowed overrides applied.

    Raises:
      RunError: if the checkpoint has no readable config record, or another field changes (the run would not be
        the same).
      CheckpointError: if the checkpoint record cannot be read.
    """
    meta = read_metadata(out / "checkpoints")
    if meta.get("data_in_memory"):  # its columns were never recorded: a file's cannot be named on resume
        raise RunError(
            f"{out}: this run was trained from Python on a dataset given in memory ({meta.get('dataset')!r}); "
            "continue it from Python with the same data: experiment, _ = restore_run(out, dataset=dataset); "
            "TrainingRun(experiment, out).start(resume=True)"
        )
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise RunError(f"{out}: the checkpoint has no config record")
    try:
        ran = ExperimentConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise RunError(f"{out}: the checkpoint's config record cannot be read: {e}") from e
    recorded = _jsonable(ran.flat())
    # the kind of run is checked first: the record's options of its kind would read as options given to the other
    trained_as, asked = recorded.get("feedback") or "explicit", overrides.get("feedback", "auto")
    if asked not in ("auto", None) and asked != trained_as:
        raise RunError(f"cannot change --feedback on --resume (the run was trained on {trained_as} feedback)")
    overrides = {k: v for k, v in overrides.items() if k != "feedback"}  # asked for no change
    try:  # an option this kind of run never reads is refused as such, not as a change (the record holds the default)
        asked = ran.override(**{k: v for k, v in overrides.items() if v != "auto"})
    except (TypeError, ValueError) as e:
        raise RunError(f"{out}: {as_flags(str(e))}") from None
    asked = resolved_fields(asked)  # the flags as the run resolved its own (MAMO's memories added to --frozen, ...)
    changed = [
        k
        for k, v in overrides.items()
        # "auto" resolves to what the run recorded, so it asks for no change
        if k not in RESUME_OVERRIDABLE and v != "auto" and asked[k] != recorded.get(k)
    ]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise RunError(
            f"cannot change {flags} on --resume (the run would not be the same); only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change"
        )
    _require_named_data(out, saved, overrides, "continuing")
    return make_config(ran, {"data_dir": None, **{k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE}})


def _require_in_memory_data(folder: Path, meta: dict, overrides: Mapping[str, Any]) -> None:
    """A run trained on a dataset given in memory names no file or known dataset to read again: the same data must
    be given (from Python, or as a file from the command line), checked against the checkpoint."""
    if meta.get("data_in_memory") and overrides.get("data") is None:
        said = (
            f"{folder}: this run was trained from Python on a dataset given in memory ({meta.get('dataset')!r}); "
            "evaluating it needs the same data again: from Python restore_run(path, dataset=...)"
        )
        features = _side_features(meta)
        if features:  # a log file carries the interactions; the side features come in tables beside it
            raise RunError(
                f"{said}, or from the command line --data FILE with its --columns and the tables of its side features "
                f"({', '.join(features)}) as --item-features / --user-features FILE (checked against the checkpoint: "
                "they must encode as the training data did)"
            )
        raise RunError(
            f"{said}, from the command line --data FILE with its --columns (checked against the checkpoint: it must "
            "encode as the training data did)"
        )


def _side_features(meta: dict) -> list[str]:
    """The user and item side features a checkpoint's featurizer encodes (empty when its record is unreadable)."""
    try:
        spec = Featurizer.from_dict(meta["featurizer"]).spec
    except (KeyError, TypeError, ValueError, DataError):
        return []
    return sorted(k for k in (*spec.categorical, *spec.multi_hot) if k not in ("user", "item"))


def _require_named_data(folder: Path, saved: dict, overrides: Mapping[str, Any], doing: str = "evaluating") -> None:
    """A path written in a record is never opened: data read from a file must be named on the command line (a
    dataset's folder is ``--data-dir`` or the default data root, never a recorded one)."""
    data = saved.get("data") or {}
    # the record's field -> the override (and flag) that names its file again
    option = {"path": "data", "item_features": "item_features", "user_features": "user_features"}
    missing = [
        (option[field], data[field])
        for field in option
        if data.get(field) is not None and overrides.get(option[field]) is None
    ]
    if missing:  # every file at once, not one per failed attempt
        flags = {key: "--" + key.replace("_", "-") for key, _ in missing}
        read = "; ".join(f"{flags[key]} {value}" for key, value in missing)
        them = "it" if len(missing) == 1 else "them"
        named = " ".join(f"{flags[key]} FILE" for key, _ in missing)
        python = ", ".join(f"{key!r}: FILE" for key, _ in missing)
        raise RunError(
            f"{folder}: this run read {read}; {doing} it reads {them} again, so name {them}: pass {named} (from "
            f"Python: overrides={{{python}}}; checked against the checkpoint: it must encode as the training data did)"
        )


def restore_run(path: str | os.PathLike, step: int | None = None, overrides: dict | None = None, dataset: Any = None):
    """Restore a run folder: the experiment rebuilt from the saved config, the state restored into its structure.

    Args:
      path: a run folder or its checkpoint folder.
      step: the step (default: the one the run chose on its validation users, else the newest).
      overrides: field values applied to the saved config.
      dataset: the :class:`~jaxrec.data.Dataset` of a run trained on one given in memory (checked against the
        checkpoint: it must encode as the training data did), or None.

    Returns:
      ``(experiment, checkpoint)``.

    Raises:
      CheckpointError: if the checkpoint is missing, corrupt or incompatible (its config, data or structure).
      RunError: if the experiment cannot be set up from the saved config.
      DataError: if the data cannot be read.
    """
    folder = checkpoint_folder(path)
    overrides = dict(overrides or {})
    with CheckpointStore(folder, create=False) as store:
        # a damaged checkpoint is named before any data is read
        meta = store.read_meta(store.verify(store.served_step() if step is None else step))
        saved = meta.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{folder}: the checkpoint has no config record")
        if dataset is None:
            _require_in_memory_data(folder, meta, overrides)
            _require_named_data(folder, saved, overrides)
        try:
            config = make_config(saved, {"data_dir": None, "devices": None, **overrides})
        except RunError as e:
            try:  # the saved config alone: the checkpoint's fault, or the options given with it
                make_config(saved, {"data_dir": None, "devices": None})
            except RunError:
                raise CheckpointError(f"{folder}: incompatible checkpoint: {e}") from e
            raise RunError(f"{folder}: the options given do not fit this run: {e}") from e
        experiment = build_experiment(config, dataset)
        _check_same_data(meta, experiment, folder)
        experiment.use_tuned(meta.get("tuned"))
        newest = store.resolve(None)
        if step is None and newest != meta["step"]:  # the choice as the run's end recorded it, not as the chosen step's
            experiment.use_tuned({"epoch": (store.read_meta(newest).get("tuned") or {}).get("epoch")})
        checkpoint = store.restore(experiment.template_state(), meta["step"])
    if isinstance(experiment, TopNExperiment) and experiment.config.topn.rerank and set(overrides) <= EVALUATION_FIELDS:
        # the re-ranker the folder keeps (and serves) is the one evaluated, not meta-trained again (unless it was
        # trained for another config: a resumed run stopped before its end)
        kept = read_reranker(folder.parent, experiment.featurizer, experiment.spec, experiment.config)
        if kept is not None:
            experiment.use_rerank_model(kept.model, kept.state, kept.inner)
    return experiment, checkpoint
