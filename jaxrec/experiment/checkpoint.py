"""Crash-safe training checkpoints (orbax) with a JSON record of everything needed to resume or serve.

Layout of a checkpoint folder (``<run>/checkpoints``)::

    <step>/state/...        the MetaTrainState (step, params, opt_state, skipped) as orbax arrays
    <step>/meta/metadata    JSON: format, jaxrec version, step, config, featurizer, data position, ...

Why a kill cannot leave a half-written checkpoint behind: orbax writes every step into
``<step>.orbax-checkpoint-tmp`` and, once every file is written, atomically renames it to ``<step>`` (POSIX
``rename`` of a directory). :meth:`CheckpointStore.steps` lists only renamed (finalised) steps, so a process killed
mid-save leaves the previous step as the newest one, and the stale temporary folder is deleted the next time the
folder is opened for writing. Saves are synchronous: :meth:`CheckpointStore.save` returns once the step is
committed. (Crash-safe means *process* crashes; surviving a power cut also needs the filesystem to persist the
rename, which orbax does not fsync.)

Every failure to find, read or match a checkpoint raises :class:`CheckpointError` with a message naming the
folder and the cause.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax

from jaxrec._version import __version__
from jaxrec.core.errors import JaxrecError
from jaxrec.experiment.selection import kept_step

__all__ = [
    "CHECKPOINT_FORMAT",
    "MANIFEST",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "check_kept_file",
    "checkpoint_folder",
    "file_sha256",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "verify",
    "write_json",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "jaxrec.checkpoint/2"
MANIFEST = "jaxrec_manifest.json"  # in each step's folder: every file's size and SHA-256, written after the save
SUBFOLDER = "checkpoints"


class CheckpointError(JaxrecError, RuntimeError):
    """A checkpoint that is missing, unreadable (corrupt) or incompatible with the requested model."""


@dataclasses.dataclass
class Checkpoint:
    """A restored checkpoint.

    Attributes:
      folder: the checkpoint folder it was restored from.
      step: its step.
      state: the training state: a MetaTrainState when restored against a template, else nested dicts of numpy
        arrays.
      meta: its JSON record (format, jaxrec version, step, config, featurizer, data position, ...).
    """

    folder: Path
    step: int
    state: Any
    meta: dict

    @property
    def config(self) -> dict:
        """The config record saved with the checkpoint (``{}`` when there is none)."""
        return self.meta.get("config", {})


def _version() -> str:
    return __version__


def checkpoint_folder(path: str | os.PathLike) -> Path:
    """Find the checkpoint folder of a path.

    Args:
      path: a run folder (holding ``checkpoints/``) or the checkpoint folder itself.

    Returns:
      ``path/checkpoints`` when it is a folder, else ``path``.
    """
    path = Path(path).expanduser()
    return path / SUBFOLDER if (path / SUBFOLDER).is_dir() else path


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


class CheckpointStore:
    """The checkpoints of one run: an orbax ``CheckpointManager`` keeping the newest ``max_to_keep`` steps.

    Args:
      folder: the checkpoint folder.
      max_to_keep: how many of the newest steps are kept (None: all), besides the steps a save names to keep (the
        state a run chose on its validation users).
      create: create the folder and remove stale temporary folders; False opens an existing folder read-only (no
        folder is created, no temporary folder is removed).

    Attributes:
      folder: the absolute checkpoint folder.

    Raises:
      CheckpointError: if ``create=False`` and the folder does not exist, or orbax cannot open it.
    """

    def __init__(self, folder: str | os.PathLike, *, max_to_keep: int | None = 3, create: bool = True):
        ocp = _ocp()
        self.folder = Path(folder).expanduser().absolute()
        if not create and not self.folder.is_dir():
            what = "a file, not a run folder" if self.folder.exists() else "no such checkpoint folder"
            raise CheckpointError(f"{self.folder}: {what}")
        self.max_to_keep = max_to_keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # kept by _prune: the newest ones and the steps a save names
            create=create,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=create,
        )
        try:
            self._manager = ocp.CheckpointManager(self.folder, options=options, item_names=("state", "meta"))
        except Exception as e:  # noqa: BLE001 - orbax raises many types; the user needs one
            raise CheckpointError(f"{self.folder}: cannot open the checkpoint folder: {e}") from e
        self._verified: set[int] = set()  # steps whose files matched their manifest, hashed once per store

    # -- listing -----------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """List the complete steps: saved, and their manifest written after the save.

        Returns:
          The steps, oldest first; interrupted saves are never listed, those stopped between the save and its
          manifest included (their files were never recorded, so nothing could tell a damaged file from a good
          one): the next save removes them.
        """
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps() if (self.folder / str(s) / MANIFEST).is_file())

    def _remove_unrecorded(self) -> None:
        """Delete the steps saved without a manifest (a save interrupted before it was written)."""
        for step in self._manager.all_steps():
            if not (self.folder / str(step) / MANIFEST).is_file():
                logger.warning("%s: step %d was saved without its manifest (interrupted): removed", self.folder, step)
                self._manager.delete(step)

    def latest_step(self) -> int | None:
        """Find the newest complete step.

        Returns:
          The step, or None when there is none.
        """
        steps = self.steps()
        return steps[-1] if steps else None

    def resolve(self, step: int | None) -> int:
        """The complete step meant by ``step`` (None: the newest).

        Args:
          step: a step, or None.

        Returns:
          The step.

        Raises:
          CheckpointError: if there is no complete checkpoint, or not that step.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"{self.folder}: no complete checkpoint in this folder")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"{self.folder}: no checkpoint at step {step}; the steps are {steps}")
        return step

    # -- save --------------------------------------------------------------------------------------------------
    def save(self, state: Any, meta: dict, *, step: int | None = None, keep: Iterable[int] = ()) -> int:
        """Save a training state with its JSON record, synchronously and atomically, then delete the steps past the
        newest ``max_to_keep`` that ``keep`` does not name.

        The record gets the format, the jaxrec version, the step and the time of the save added. Saving a step
        that exists is a no-op (but for the deletions).

        Args:
          state: a pytree, e.g. a MetaTrainState.
          meta: the JSON record saved beside it.
          step: the step (default ``state.step``).
          keep: steps kept whatever their age.

        Returns:
          The step.

        Raises:
          OSError: if the OS refuses a write (no space left, ...), also when tensorstore reports it.
        """
        ocp = _ocp()
        step = int(state.step) if step is None else int(step)
        if step in self.steps():
            self._prune(keep)
            return step
        self._remove_unrecorded()
        record = {
            "format": CHECKPOINT_FORMAT,
            "jaxrec_version": _version(),
            "step": step,
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **meta,
        }
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record))
        try:
            self._manager.save(step, args=args, force=True)
            self._manager.wait_until_finished()
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - tensorstore reports a refused write as a ValueError with its errno
            code = re.search(r"os_error_code='(\d+)'", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from e
        _write_manifest(self.folder / str(step))
        logger.info("saved checkpoint step %d to %s", step, self.folder)
        self._prune(keep)
        return step

    def _prune(self, keep: Iterable[int]) -> None:
        if self.max_to_keep is None:  # every step kept
            return
        steps = self.steps()
        kept = set(steps[-self.max_to_keep :]) | {int(s) for s in keep}
        for old in steps:
            if old not in kept:
                self._manager.delete(old)
                self._verified.discard(old)

    def served_step(self) -> int:
        """The step a run folder serves when none is asked for: the state its newest record chose on the validation
        users (``tuned["epoch"]["chosen_step"]``, :mod:`jaxrec.experiment.selection`) when the newest step is one of
        the candidates scored (a run stopped at an epoch's end), else the newest (a run stopped between epochs).

        Raises:
          CheckpointError: if there is no complete checkpoint, or the chosen step's is missing.
        """
        newest = self.resolve(None)
        record = (self.read_meta(newest).get("tuned") or {}).get("epoch") or {}
        chosen = kept_step(record.get("chosen_step"), (int(s) for s, _ in record.get("scores", ())), newest)
        if chosen != newest and chosen not in self.steps():
            raise CheckpointError(
                f"{self.folder}: the run chose step {chosen} on its validation users and that checkpoint is gone "
                f"(the steps are {self.steps()}); jaxrec evaluate --step names another"
            )
        return chosen

    # -- restore -----------------------------------------------------------------------------------------------
    def read_meta(self, step: int | None = None) -> dict:
        """Read the JSON record of a step, checked for format.

        Args:
          step: the step (default: the newest complete one).

        Returns:
          The record.

        Raises:
          CheckpointError: if there is no such complete step, its record is unreadable, or it is of another
            format (one written by jaxrec 0.1 included).
        """
        ocp = _ocp()
        step = self.resolve(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(restored["meta"])
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{self.folder}: step {step} has an unreadable record (corrupt?): {e}") from e
        if meta.get("format") == "jaxrec.checkpoint/1":
            raise CheckpointError(
                f"{self.folder}: step {step} was written by jaxrec 0.1, whose run records this version no longer "
                "reads; train again with this version"
            )
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{self.folder}: step {step} is not a jaxrec checkpoint of a known format "
                f"(format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
            )
        return meta

    def verify(self, step: int | None = None) -> int:
        """Check a step's files against its manifest (:func:`verify`), once per store.

        Args:
          step: the step (default: the newest complete one).

        Returns:
          The step.

        Raises:
          CheckpointError: naming the step and the first damaged file.
        """
        step = self.resolve(step)
        if step not in self._verified:
            verify(self.folder, step)
            self._verified.add(step)
        return step

    def restore(self, template: Any = None, step: int | None = None) -> Checkpoint:
        """Restore a step.

        Args:
          template: a state of the expected structure (e.g. ``Experiment.init_state()``); the arrays are restored
            with its shapes, dtypes and shardings. Without it, the state comes back as nested dicts of numpy
            arrays.
          step: the step (default: the newest complete one).

        Returns:
          The :class:`Checkpoint`.

        Raises:
          CheckpointError: if there is no such complete step, it is unreadable (corrupt or incomplete), or it does
            not match ``template``.
        """
        ocp = _ocp()
        step = self.resolve(step)
        self.verify(step)  # a damaged file is named here, before orbax reads it
        meta = self.read_meta(step)
        if template is None:
            state_args = ocp.args.StandardRestore()
        else:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
            state_args = ocp.args.StandardRestore(abstract)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=state_args))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(_restore_message(self.folder, step, meta, e, template is not None)) from e
        state = restored["state"]
        if template is not None:
            _check_shapes(self.folder, step, template, state)
        return Checkpoint(folder=self.folder, step=step, state=state, meta=meta)

    def close(self) -> None:
        """Close the orbax manager."""
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _restore_message(folder: Path, step: int, meta: dict, error: Exception, templated: bool) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = " ".join(lines[:2])[:400] if lines else type(error).__name__
    if templated and isinstance(error, ValueError | KeyError | TypeError):
        config = meta.get("config", {})
        model, meta_config = config.get("model"), config.get("meta")
        model = model.get("name") if isinstance(model, dict) else model  # an ExperimentConfig record, or any record
        algorithm = meta_config.get("algorithm") if isinstance(meta_config, dict) else config.get("algorithm")
        return (
            f"{folder}: step {step} does not match the model it is restored into (incompatible checkpoint: saved "
            f"with model={model!r}, algorithm={algorithm!r}): {first}"
        )
    return f"{folder}: cannot read the state of step {step} (corrupt or incomplete checkpoint?): {first}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, hex, read in chunks (a large file is never held whole)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_kept_file(record: Path, path: Path, sha256: str, what: str) -> None:
    """Check a file a run folder's record keeps beside it: present, and the content its recorded SHA-256 names.

    Args:
      record: the record that names the file (for messages).
      path: the file.
      sha256: its SHA-256 when it was written.
      what: the file in words (``"the hybrid's interactions"``), plural.

    Raises:
      CheckpointError: naming ``record``, ``what`` and ``path``, if the file is missing or has changed.
    """
    if not path.is_file():
        raise CheckpointError(f"{record}: {what} {path} are missing")
    if file_sha256(path) != sha256:
        raise CheckpointError(f"{record}: {what} {path} have changed since training")


def write_json(path: Path, document: Any) -> None:
    """Write a JSON document (indented, a newline at the end) atomically: a temporary file beside it, then a rename,
    so that a reader never finds half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)


def _write_manifest(step_folder: Path) -> None:
    """Record the size and SHA-256 of every file of a saved step (atomically: a temporary file, then a rename)."""
    files = sorted(p for p in step_folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(step_folder)): [p.stat().st_size, file_sha256(p)] for p in files}
    tmp = step_folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    os.replace(tmp, step_folder / MANIFEST)


def verify(folder: str | os.PathLike, step: int) -> None:
    """Check a saved step's files against its manifest (sizes and SHA-256).

    A step saved without a manifest (one interrupted between the save and the manifest) cannot be checked, and is
    refused as incomplete.

    Args:
      folder: the checkpoint folder.
      step: the step.

    Raises:
      CheckpointError: naming the step and the first file that is missing, of another size or changed.
    """
    step_folder = Path(folder) / str(step)
    if not step_folder.is_dir():
        raise CheckpointError(f"{folder}: step {step} is gone (removed by a newer run's clean-up?)")
    path = step_folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: step {step} is incomplete: its save was interrupted before its manifest {path} was written"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: step {step} is corrupt: its manifest {path} is unreadable ({e})") from e
    try:
        entries = sorted((str(name), int(size), str(digest)) for name, (size, digest) in manifest.items())
    except (AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: step {step} is corrupt: its manifest {path} is malformed ({e})") from e
    for name, size, digest in entries:
        file = step_folder / name
        if step_folder.resolve() not in file.resolve().parents:
            raise CheckpointError(f"{folder}: step {step} is corrupt: its manifest names {name!r}, outside the step")
        if not file.is_file():
            raise CheckpointError(f"{folder}: step {step} is corrupt: {file} is missing")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(f"{folder}: step {step} is corrupt: {file} has {actual} bytes, {size} were saved")
        if file_sha256(file) != digest:
            raise CheckpointError(f"{folder}: step {step} is corrupt: {file} has changed since it was saved")


def _check_shapes(folder: Path, step: int, template: Any, state: Any) -> None:
    """Orbax may restore into a template of another shape; refuse it."""
    want = jax.tree.leaves(jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), template))
    got = jax.tree.leaves(jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), state))
    if len(want) != len(got) or want != got:
        bad = next(((w, g) for w, g in zip(want, got, strict=False) if w != g), (len(want), len(got)))
        raise CheckpointError(
            f"{folder}: step {step} does not match the model it is restored into (incompatible checkpoint): "
            f"expected {bad[0]}, found {bad[1]}"
        )


# ----------------------------------------------------------------------------------------------------------------
# one-call helpers


def save_checkpoint(folder: str | os.PathLike, state: Any, meta: dict, *, max_to_keep: int = 3) -> int:
    """Save one step into a checkpoint folder (see :meth:`CheckpointStore.save`).

    Args:
      folder: the checkpoint folder (created if needed).
      state: the training state; its ``step`` is the step saved.
      meta: the JSON record saved beside it.
      max_to_keep: how many of the newest steps are kept.

    Returns:
      The step.
    """
    with CheckpointStore(folder, max_to_keep=max_to_keep) as store:
        return store.save(state, meta)


def read_metadata(path: str | os.PathLike, step: int | None = None) -> dict:
    """Read the JSON record of a checkpoint under a run or checkpoint folder.

    Args:
      path: a run folder or its checkpoint folder.
      step: the step (default: the newest complete one).

    Returns:
      The record.

    Raises:
      CheckpointError: if the folder or step is missing, or the record is unreadable or of another format.
    """
    folder = checkpoint_folder(path)
    with CheckpointStore(folder, create=False) as store:
        return store.read_meta(step)


def load_checkpoint(path: str | os.PathLike, template: Any = None, *, step: int | None = None) -> Checkpoint:
    """Restore a checkpoint under a run or checkpoint folder (see :meth:`CheckpointStore.restore`).

    Args:
      path: a run folder or its checkpoint folder.
      template: a state of the expected structure, or None for nested dicts of numpy arrays.
      step: the step (default: the newest complete one).

    Returns:
      The :class:`Checkpoint`.

    Raises:
      CheckpointError: if it is missing, corrupt or does not match ``template``.
    """
    folder = checkpoint_folder(path)
    with CheckpointStore(folder, create=False) as store:
        return store.restore(template, step)
