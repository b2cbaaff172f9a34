"""The ``jaxrec`` command: ``train``, ``evaluate``, ``recommend``, ``datasets``.

Only this module prints; the library logs. Every expected failure (bad data, bad checkpoint, bad flags, a
non-finite step under ``--nonfinite raise``) ends with one ``jaxrec: error: ...`` line on stderr and exit status 1;
``--debug`` (or ``JAXREC_DEBUG=1``) shows the traceback instead. SIGINT / SIGTERM during ``jaxrec train`` finish
the current meta-step, save a checkpoint and exit with status 130 / 143; ``--resume`` goes on from there.

Run folder written by ``jaxrec train --out DIR``::

    DIR/checkpoints/<step>/   orbax checkpoints (the newest few), see :mod:`jaxrec.checkpoint`
    DIR/metrics.jsonl         one JSON line per finished epoch (loss, grad_norm, skipped, ...)
    DIR/metrics.json          the evaluation document {"dataset", "config", "scenarios"}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "CLIError", "TrainingRun"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: flags whose change on ``--resume`` does not alter the meta-training trajectory
RESUME_OVERRIDABLE = ("epochs", "baselines", "bootstrap", "devices", "eval_batch_size")
TABLE_METRICS = ("mae", "rmse", "ndcg@3", "auc", "hr@10")


class CLIError(Exception):
    """A user-facing error of the command line (bad flag combination, unreadable ratings file, ...)."""


def _echo(*parts: Any, err: bool = False) -> None:
    print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# argument parsing


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="a known dataset (see `jaxrec datasets`); default ml-latest-small (bundled)")
    g.add_argument("--data", help="path of any user,item,rating[,timestamp] file (.gz allowed)")
    g.add_argument(
        "--columns", help="roles of the file's columns in order, e.g. user,item,rating,timestamp ('_' skips)"
    )
    g.add_argument("--sep", help="field separator of --data (default: sniffed among '::' , tab | ;)")
    g.add_argument("--data-dir", help="folder holding the MovieLens folders (default $JAXREC_DATA or ~/.cache/jaxrec)")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and meta-learning (defaults: jaxrec.experiment.ExperimentConfig)")
    g.add_argument("--model", help="melu | mf | linear | fm | neumf | gru")
    g.add_argument("--model-kwargs", type=json.loads, help="JSON keyword arguments of the model, e.g. '{\"embed\": 8}'")
    g.add_argument("--algorithm", choices=("maml", "reptile", "metasgd"))
    g.add_argument("--order", choices=("second", "first"))
    g.add_argument(
        "--adapt",
        help="which parameters adapt per user: head | head/output | all | default | a regex (default auto: the "
        "output layer by a Newton step where the model has one, else the model's default set by 5 gradient steps)",
    )
    g.add_argument("--inner-lr", type=float)
    g.add_argument("--inner-steps", type=int)
    g.add_argument(
        "--inner-solver",
        choices=("auto", "sgd", "newton", "mixed"),
        help="inner steps: sgd (gradient steps at --inner-lr) or newton (MAP under a Gaussian prior at the "
        "initialisation with variance --inner-lr; for a small adapted set, e.g. --adapt head/output) or mixed "
        "(the output layer solved by Newton steps, the other adapted parameters by gradient steps)",
    )
    g.add_argument("--meta-lr", type=float)
    g.add_argument("--batch-size", type=int, help="users (tasks) per meta-step")
    g.add_argument("--epochs", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--groups",
        type=int,
        help="task grouping: this many initialisations, each new user adapting from the one that fits their "
        "ratings best (default 1)",
    )
    g.add_argument(
        "--item-dropout",
        type=float,
        help="fraction of training rows whose item id is hidden (DropoutNet), so that new items are scored from "
        "their features",
    )
    g.add_argument("--min-ratings", type=int, help="users with fewer ratings are not tasks")
    g.add_argument("--max-ratings", type=int, help="users with more ratings are not tasks")
    g.add_argument("--query", type=int, help="query ratings per user task")
    g.add_argument(
        "--devices",
        help="train on N devices (or 'all' local devices; on a CPU-only host, N splits its cores into N devices); "
        "default one device",
    )
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--baselines", help="comma-separated baselines (finetune,no_adapt,global_mean,user_mean,...); 'none' for none"
    )
    e.add_argument("--bootstrap", type=int, help="bootstrap resamples for the 95%% intervals")
    e.add_argument("--eval-batch-size", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrec", description="Meta-learned cold-start recommendation in JAX.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train, evaluate every cold-start scenario, write DIR/metrics.json")
    _add_data_flags(t)
    _add_train_flags(t)
    t.add_argument("--out", default="runs/jaxrec", help="run folder (default runs/jaxrec)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--steps", type=int, help="stop after this many meta-steps in total (default: all epochs)")
    t.add_argument(
        "--nonfinite",
        choices=("skip", "raise"),
        default="skip",
        help="a NaN/inf meta-step: skip and count it (default), or stop with an error naming its users",
    )
    t.add_argument("--save-every", type=int, default=0, help="also checkpoint every N meta-steps (default: per epoch)")
    t.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    t.add_argument("--no-eval", action="store_true", help="train and checkpoint only; skip the evaluation")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on every cold-start scenario")
    ev.add_argument("--checkpoint", required=True, help="a run folder (or its checkpoints/ folder)")
    ev.add_argument("--step", type=int, help="which checkpoint step (default: the newest complete one)")
    ev.add_argument("--bootstrap", type=int)
    ev.add_argument("--baselines")
    ev.add_argument("--output", help="also write the metrics document to this JSON file")

    r = sub.add_parser("recommend", help="adapt to a new user's few ratings and print the top-k items")
    r.add_argument("--checkpoint", required=True, help="a run folder (or its checkpoints/ folder)")
    r.add_argument("--ratings", required=True, help="CSV of item,rating (raw item ids, header optional)")
    r.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    r.add_argument("--timing", action="store_true", help="print the adaptation latency (warm, jit-compiled)")

    d = sub.add_parser("datasets", help="list the known datasets and where they are cached")
    d.add_argument("--data-dir", help="folder holding the MovieLens folders")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# config


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ExperimentConfig fields given explicitly on the command line."""
    names = (
        "dataset",
        "data",
        "sep",
        "data_dir",
        "model",
        "model_kwargs",
        "algorithm",
        "order",
        "adapt",
        "inner_lr",
        "inner_steps",
        "inner_solver",
        "meta_lr",
        "batch_size",
        "epochs",
        "seed",
        "item_dropout",
        "groups",
        "min_ratings",
        "max_ratings",
        "query",
        "bootstrap",
        "eval_batch_size",
    )
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "columns", None):
        out["columns"] = [c.strip() for c in args.columns.split(",")]
    if getattr(args, "baselines", None) is not None:
        out["baselines"] = [] if args.baselines.strip().lower() == "none" else _split_list(args.baselines)
    if getattr(args, "devices", None) is not None:
        out["devices"] = args.devices if args.devices == "all" else _positive_int(args.devices, "--devices")
    if "data" in out:
        out.pop("dataset", None)
        if not Path(out["data"]).expanduser().exists():
            raise CLIError(f"--data {out['data']}: file not found")
    if out.get("bootstrap", 1) < 1:  # jaxrec.metrics.paired_differences needs at least one resample
        raise CLIError(f"--bootstrap must be >= 1, got {out['bootstrap']}")
    if not 0.0 <= out.get("item_dropout", 0.0) < 1.0:
        raise CLIError(f"--item-dropout must be in [0, 1), got {out['item_dropout']}")
    if out.get("groups", 1) < 1:
        raise CLIError(f"--groups must be >= 1, got {out['groups']}")
    for name in ("batch_size", "epochs", "inner_steps"):
        if name in out and out[name] < (0 if name == "inner_steps" else 1):
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {out[name]}")
    return out


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CLIError(f"{flag} expects a number or 'all', got {text!r}") from None
    if value < 1:
        raise CLIError(f"{flag} must be >= 1, got {value}")
    return value


def _make_config(base: dict[str, Any] | None, overrides: dict[str, Any]):
    from jaxrec.experiment import ExperimentConfig

    # a saved record older than a field is read as it ran (ExperimentConfig.from_dict), not with today's default
    merged = dict(ExperimentConfig().to_dict() if base is None else base)
    if overrides.get("model", merged["model"]) != merged["model"] and "model_kwargs" not in overrides:
        merged["model_kwargs"] = {}  # the defaults' kwargs belong to the default model
    if "data" in overrides:
        merged["dataset"] = None
    merged.update(overrides)
    if merged.get("data") is None and not merged.get("dataset"):
        merged["dataset"] = ExperimentConfig.dataset
    try:
        return ExperimentConfig.from_dict(merged)
    except (TypeError, ValueError) as e:
        raise CLIError(f"invalid configuration: {e}") from e


def _build_experiment(config):
    from jaxrec.experiment import Experiment

    try:
        return Experiment(config)
    except (ValueError, TypeError, KeyError) as e:
        from jaxrec.datasets import DataError

        if isinstance(e, DataError):
            raise
        raise CLIError(f"cannot set up the experiment: {e}") from e


# ----------------------------------------------------------------------------------------------------------------
# training


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _StopRequest:
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

    def __enter__(self) -> _StopRequest:
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
        from jaxrec.checkpoint import CheckpointStore

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
        _atomic_write_text(self.log_path, "".join(k + "\n" for k in kept))

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
        from jaxrec.train import NonFiniteError

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
        from tqdm.auto import tqdm

        start, per_epoch = int(state.step), self.exp.steps_per_epoch
        began = time.perf_counter()
        bar = tqdm(total=stop_step, initial=start, disable=not progress, unit="step", desc="meta-train", leave=True)
        with _StopRequest() as stop, contextlib.closing(bar):
            batches: Iterator = self.exp.batches(start)
            for step in range(start, stop_step):
                batch = next(batches)
                state, metrics = self.exp.train_step(state, batch)
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
    import numpy as np

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
    from jaxrec.checkpoint import CheckpointError

    saved = meta.get("featurizer")
    if saved is None:
        raise CheckpointError(f"{folder}: the checkpoint has no featurizer record (not written by `jaxrec train`?)")
    if _jsonable(experiment.featurizer.to_dict()) != saved:
        raise CheckpointError(
            f"{folder}: the data no longer matches the checkpoint (users, items or their features changed since "
            f"it was written from {meta.get('config', {}).get('data') or meta.get('dataset')!r}); "
            "train again on the current data"
        )


def _check_fresh_out(out: Path) -> None:
    from jaxrec.checkpoint import CheckpointStore

    folder = out / "checkpoints"
    if folder.is_dir():
        with CheckpointStore(folder, create=False) as store:
            if store.steps():
                raise CLIError(
                    f"{out} already holds a run (checkpoints at steps {store.steps()}); pass --resume to continue it "
                    "or choose another --out"
                )


def _resume_config(out: Path, overrides: dict[str, Any]):
    from jaxrec.checkpoint import read_metadata

    meta = read_metadata(out / "checkpoints")
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise CLIError(f"{out}: the checkpoint has no config record")
    from jaxrec.experiment import ExperimentConfig

    # the record as it ran (ExperimentConfig.from_dict fills the fields it predates with their values of the time)
    try:
        ran = ExperimentConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError) as e:
        raise CLIError(f"{out}: the checkpoint's config record cannot be read: {e}") from e
    changed = [
        k
        for k, v in overrides.items()
        # "auto" resolves to what the run recorded, so it asks for no change
        if k not in RESUME_OVERRIDABLE and v != "auto" and _jsonable(v) != ran.get(k)
    ]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise CLIError(
            f"cannot change {flags} on --resume (the run would not be the same); only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change"
        )
    return _make_config(saved, {k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE})


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    overrides = _config_overrides(args)
    if args.resume:
        if not (out / "checkpoints").is_dir():
            raise CLIError(f"--resume: {out} holds no checkpoints to resume from")
        config = _resume_config(out, overrides)
    else:
        _check_fresh_out(out)
        config = _make_config(None, overrides)
    experiment = _build_experiment(config)
    total = experiment.total_steps
    stop_step = total if args.steps is None else min(int(args.steps), total)
    run = TrainingRun(experiment, out, keep=args.keep, nonfinite=args.nonfinite)
    try:
        state = run.start(args.resume)
        start = int(state.step)
        _echo(
            f"{experiment.dataset.name}: {len(experiment.train_tasks)} meta-train users, "
            f"{experiment.steps_per_epoch} steps/epoch; {config.algorithm} ({config.order} order) on {config.model}; "
            f"steps {start} -> {stop_step} of {total}"
        )
        state, signum = run.train(state, stop_step, save_every=args.save_every, progress=not args.no_progress)
    finally:
        run.close()
    step = int(state.step)
    if signum is not None:
        name = signal.Signals(signum).name
        _echo(
            f"\n{name} received: saved checkpoint at step {step} in {out / 'checkpoints'}; "
            f"continue with: jaxrec train --out {out} --resume",
            err=True,
        )
        return 128 + signum
    _echo(f"meta-trained {step} steps ({int(state.skipped)} non-finite step(s) skipped); checkpoint in {out}")
    if args.no_eval:
        return EXIT_OK
    document = experiment.metrics_document(state.params)
    _atomic_write_text(out / "metrics.json", json.dumps(document, indent=2) + "\n")
    _echo(format_table(document))
    _echo(f"wrote {out / 'metrics.json'}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# evaluate / recommend


def restore_run(path: str | os.PathLike, step: int | None = None, overrides: dict | None = None):
    """``(experiment, checkpoint)`` of a run folder: the experiment rebuilt from the saved config, the state
    restored into its structure; :class:`~jaxrec.checkpoint.CheckpointError` when missing, corrupt or
    incompatible."""
    from jaxrec.checkpoint import CheckpointError, CheckpointStore, checkpoint_folder

    folder = checkpoint_folder(path)
    with CheckpointStore(folder, create=False) as store:
        meta = store.read_meta(step)
        saved = meta.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{folder}: the checkpoint has no config record")
        try:
            config = _make_config(saved, overrides or {})
        except CLIError as e:
            raise CheckpointError(f"{folder}: incompatible checkpoint: {e}") from e
        experiment = _build_experiment(config)
        _check_same_data(meta, experiment, folder)
        checkpoint = store.restore(experiment.init_state(), meta["step"])
    return experiment, checkpoint


def cmd_evaluate(args: argparse.Namespace) -> int:
    overrides = _config_overrides(args)
    experiment, checkpoint = restore_run(args.checkpoint, args.step, overrides)
    _echo(f"checkpoint {checkpoint.folder} step {checkpoint.step}")
    document = experiment.metrics_document(checkpoint.state.params)
    _echo(format_table(document))
    if args.output:
        _atomic_write_text(Path(args.output), json.dumps(document, indent=2) + "\n")
        _echo(f"wrote {args.output}")
    return EXIT_OK


def format_table(document: dict) -> str:
    """A plain-text table: one row per (scenario, method), the scalar metrics as columns."""
    scenarios = document.get("scenarios", {})
    present = [m for m in TABLE_METRICS if any(m in r for s in scenarios.values() for r in s.values())]
    header = ["scenario", "method", "users", *present]
    rows = []
    for scenario, methods in scenarios.items():
        for method, result in methods.items():
            values = [f"{result[m]:.4f}" if isinstance(result.get(m), int | float) else "-" for m in present]
            rows.append([scenario, method, str(result.get("users", "-")), *values])
    if not rows:
        return "(no scenario could be evaluated)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


_ITEM_NAMES = ("item", "itemid", "item_id", "movieid", "movie_id", "iid", "id")
_RATING_NAMES = ("rating", "ratings", "score", "stars")


def read_user_ratings(path: str | os.PathLike, item_ids, rating_range: tuple[float, float] | None):
    """A new user's ``(item codes, ratings, notes)`` from a small ``item,rating`` file of raw item ids.

    Header optional (``item``/``movieId``/... and ``rating`` columns, else the first two columns). Unknown item ids
    are ignored and duplicates keep the last rating, each with a note; a file with no usable rating, a rating that
    is not a number or one outside ``rating_range`` is a :class:`CLIError`.
    """
    import numpy as np
    import pandas as pd

    from jaxrec.datasets import DataError, sniff_separator

    path = Path(path).expanduser()
    if not path.is_file():
        raise CLIError(f"--ratings {path}: file not found")
    try:
        sep = sniff_separator(path)
        frame = pd.read_csv(
            path,
            sep=sep,
            header=None,
            dtype=str,
            skip_blank_lines=True,
            keep_default_na=False,
            engine="python" if len(sep) > 1 else "c",
            on_bad_lines="error",
        )
    except DataError as e:
        raise CLIError(f"--ratings: {e} (expected lines of item,rating)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise CLIError(f"--ratings {path}: cannot parse as item,rating lines: {str(e).strip()[:200]}") from None
    if frame.shape[1] < 2:
        raise CLIError(f"--ratings {path}: expected two columns item,rating, found {frame.shape[1]}")
    first = [str(v).strip().strip('"').lower() for v in frame.iloc[0]]
    header = not _is_number(first[-1]) or not _is_number(first[1])
    item_col, rating_col = 0, 1
    if header:
        item_col = next((i for i, name in enumerate(first) if name in _ITEM_NAMES), 0)
        rating_col = next((i for i, name in enumerate(first) if name in _RATING_NAMES), 1)
        frame = frame.iloc[1:]
    if len(frame) == 0:
        raise CLIError(f"--ratings {path}: no ratings (only a header)")
    line_of = np.arange(len(frame)) + (2 if header else 1)
    raw_items = frame.iloc[:, item_col].str.strip().to_numpy()
    values = pd.to_numeric(frame.iloc[:, rating_col].str.strip(), errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CLIError(f"--ratings {path}: line {line_of[i]}: rating {frame.iloc[i, rating_col]!r} is not a number")
    if rating_range is not None:
        lo, hi = rating_range
        out = (values < lo) | (values > hi)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise CLIError(
                f"--ratings {path}: line {line_of[i]}: rating {values[i]:g} is outside the model's "
                f"rating scale [{lo:g}, {hi:g}]"
            )
    codes = _item_codes(raw_items, np.asarray(item_ids))
    notes = []
    unknown = codes < 0
    if unknown.any():
        shown = ", ".join(map(str, raw_items[unknown][:5])) + (" ..." if unknown.sum() > 5 else "")
        notes.append(f"ignored {int(unknown.sum())} rating(s) of unknown item id(s): {shown}")
    codes, values = codes[~unknown], values[~unknown]
    if len(codes) == 0:
        raise CLIError(f"--ratings {path}: none of the rated items is known to the model's dataset")
    last = len(codes) - 1 - np.unique(codes[::-1], return_index=True)[1]  # last occurrence of each item
    if len(last) < len(codes):
        notes.append(f"{len(codes) - len(last)} duplicate rating(s): kept the last rating of each item")
    keep = np.sort(last)
    return codes[keep].astype(np.int32), values[keep].astype(np.float32), notes


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _item_codes(raw_items, item_ids):
    """Dataset codes of raw item id strings (-1 when unknown); ids compare as integers when the dataset's are."""
    import numpy as np
    import pandas as pd

    if item_ids.dtype.kind in "iu":
        numeric = pd.to_numeric(pd.Series(raw_items), errors="coerce").to_numpy(np.float64)
        whole = np.isfinite(numeric) & (numeric == np.round(numeric)) & (np.abs(numeric) < 2**62)
        query = np.where(whole, numeric, -(2**62)).astype(np.int64)
    else:
        query, whole = np.asarray(raw_items).astype(str), np.ones(len(raw_items), bool)
        item_ids = item_ids.astype(str)
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, query), 0, max(len(sorted_ids) - 1, 0))
    found = whole & (len(sorted_ids) > 0) & (sorted_ids[pos] == query)
    return np.where(found, order[pos], -1)


class Recommender:
    """Adapts the meta-learned model to one new user's ratings and scores every item, jit-compiled once per
    support size bucket (powers of two), so warm calls take milliseconds."""

    def __init__(self, experiment, params):
        import jax
        import numpy as np

        from jaxrec.adapt import adapt, zero_padding
        from jaxrec.evaluate import _split_meta_params
        from jaxrec.grouping import select_group

        self.exp = experiment
        self.featurizer = experiment.featurizer
        self.state = _split_meta_params(params, experiment.config.inner_lr)
        n_items = self.featurizer.n_items
        self.candidates = jax.device_put(self.featurizer.rows(np.full(n_items, -1), np.arange(n_items)))

        def scores(state, support, mask, candidates):
            init, inner_lr = select_group(*state, support, mask, experiment.loss_fn)  # grouped: the user's group
            phi = adapt(
                init, zero_padding(support, mask), mask, inner_lr=inner_lr, order="first", **experiment.inner_loop
            )
            return experiment.apply_fn(phi, candidates)

        self._scores = jax.jit(scores)

    def support(self, item_codes, ratings):
        import numpy as np

        size = max(8, 1 << int(np.ceil(np.log2(max(len(item_codes), 1)))))
        items = np.full(size, -1, np.int64)
        items[: len(item_codes)] = item_codes
        values = np.zeros(size, np.float32)
        values[: len(ratings)] = ratings
        mask = np.arange(size) < len(item_codes)
        rows = self.featurizer.rows(np.full(size, -1), items, values)
        return rows, mask

    def scores(self, item_codes, ratings):
        """Predicted score of every item (dataset codes) after adapting to the user's ratings."""
        import numpy as np

        rows, mask = self.support(item_codes, ratings)
        return np.array(self._scores(self.state, rows, mask, self.candidates))

    def top_k(self, item_codes, ratings, k: int):
        """``(codes, scores)`` of the ``k`` best items the user has not rated, best first."""
        import numpy as np

        scores = self.scores(item_codes, ratings)
        scores[np.asarray(item_codes)] = -np.inf
        k = min(k, len(scores) - len(item_codes))
        best = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
        best = best[np.argsort(-scores[best], kind="stable")]
        return best, scores[best]


def _read_ratings_for(checkpoint: str, ratings: str):
    """:func:`read_user_ratings` against the item ids and rating scale recorded in the checkpoint."""
    import numpy as np

    from jaxrec.checkpoint import CheckpointError, read_metadata
    from jaxrec.datasets import DataError, Featurizer

    meta = read_metadata(checkpoint)
    try:
        featurizer = Featurizer.from_dict(meta["featurizer"])
    except (KeyError, TypeError, ValueError, DataError) as e:
        raise CheckpointError(f"{checkpoint}: the checkpoint's featurizer record is unreadable: {e}") from e
    if featurizer.item_raw_ids is None:
        raise CheckpointError(f"{checkpoint}: the checkpoint does not record raw item ids")
    return read_user_ratings(ratings, np.asarray(featurizer.item_raw_ids), featurizer.spec.rating_range)


def cmd_recommend(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise CLIError(f"-k must be >= 1, got {args.k}")
    codes, ratings, notes = _read_ratings_for(args.checkpoint, args.ratings)  # bad files fail before the slow part
    experiment, checkpoint = restore_run(args.checkpoint)
    items = experiment.dataset.items
    for note in notes:
        _echo(f"note: {note}", err=True)
    recommender = Recommender(experiment, checkpoint.state.params)
    started = time.perf_counter()
    best, scores = recommender.top_k(codes, ratings, args.k)
    cold = time.perf_counter() - started
    titles = items["title"].astype(str).to_numpy() if "title" in items else None
    raw = experiment.dataset.item_ids
    _echo(f"top {len(best)} of {len(raw)} items for a new user with {len(codes)} rating(s):")
    for rank, (code, score) in enumerate(zip(best, scores, strict=True), 1):
        label = titles[code] if titles is not None else str(raw[code])
        _echo(f"{rank:>3}. {label}  (item {raw[code]}, predicted {score:.2f})")
    if args.timing:
        warm = []
        for _ in range(20):
            t = time.perf_counter()
            recommender.top_k(codes, ratings, args.k)
            warm.append(time.perf_counter() - t)
        warm.sort()
        _echo(
            f"adapt + score {len(raw)} items: first call {cold * 1e3:.1f} ms (compiles), warm median "
            f"{warm[len(warm) // 2] * 1e3:.2f} ms"
        )
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    from jaxrec.datasets import DATASETS, default_data_root
    from jaxrec.datasets.movielens import _locate

    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_root()
    _echo(f"data folder: {root} (set JAXREC_DATA or --data-dir to change it)")
    for name in DATASETS:
        if name == "ml-latest-small":
            where = "bundled with jaxrec (offline)"
        else:
            folder, _ = _locate(name, args.data_dir)
            where = (
                f"cached at {folder}" if folder else f"not downloaded (would go to {root / name}; JAXREC_DOWNLOAD=1)"
            )
        _echo(f"  {name:<16} {where}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# entry point

COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "recommend": cmd_recommend, "datasets": cmd_datasets}


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the first
    call: a caller that swaps stderr (a test's capture, a notebook) and closes the old one breaks nothing."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the live sys.stderr is always used
        pass


def _configure_logging(debug: bool) -> None:
    """Library logs go to stderr (warnings only unless --debug); orbax/absl chatter is silenced."""
    logging.getLogger("absl").setLevel(logging.DEBUG if debug else logging.ERROR)
    jaxrec_logger = logging.getLogger("jaxrec")
    jaxrec_logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not any(getattr(h, "_jaxrec_cli", False) for h in jaxrec_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("jaxrec: %(levelname)s: %(message)s"))
        handler._jaxrec_cli = True  # type: ignore[attr-defined]
        jaxrec_logger.addHandler(handler)
        jaxrec_logger.propagate = False


def _expected_errors() -> tuple[type[BaseException], ...]:
    from jaxrec.checkpoint import CheckpointError
    from jaxrec.datasets import DataError, DownloadError
    from jaxrec.train import NonFiniteError

    return (CLIError, CheckpointError, DataError, DownloadError, NonFiniteError)


def _host_devices(devices) -> None:
    """``--devices N`` (N > 1): let a CPU-only host show its cores as ``N`` XLA devices, so that the task axis is
    sharded over them as over accelerators (``jax_num_cpu_devices``; GPU and TPU backends ignore it). It only
    takes effect before JAX starts its backends; afterwards the mesh reports how many devices there are."""
    try:
        n = int(devices)
    except (TypeError, ValueError):
        return  # None, "all", or a bad value that the config check reports
    if n > 1:
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError as err:  # the backends already started (jaxrec.cli.main called inside a process)
            logger.debug("--devices %d: host CPU device count unchanged (%s)", n, err)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxrec`` command; returns the exit status (0 ok, 1 error, 2 usage, 128+signal interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse already printed
        return int(e.code or 0)
    debug = args.debug or os.environ.get("JAXREC_DEBUG") == "1"
    _configure_logging(debug)
    _host_devices(getattr(args, "devices", None))
    # the command owns its process: reuse freed host memory so that XLA CPU's per-step buffers are not
    # page-faulted in again every step (jaxrec.host_memory)
    from jaxrec.host_memory import keep_freed_host_memory

    keep_freed_host_memory()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _echo("jaxrec: interrupted", err=True)
        return 128 + signal.SIGINT
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if debug:
            raise
        expected = isinstance(e, _expected_errors())
        kind = "error" if expected else f"unexpected error ({type(e).__name__}; rerun with --debug for details)"
        _echo(f"jaxrec: {kind}: {e}", err=True)
        return EXIT_ERROR
