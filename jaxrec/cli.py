"""The ``jaxrec`` command: ``train``, ``choose``, ``evaluate``, ``recommend``, ``serve``, ``export``, ``datasets``.

Only this module prints; the library logs. Every expected failure (bad data, bad checkpoint, bad flags, a
non-finite step under ``--nonfinite raise``) ends with one ``jaxrec: error: ...`` line on stderr and exit status 1;
``--debug`` (or ``JAXREC_DEBUG=1``) shows the traceback instead. SIGINT / SIGTERM in the training loop finish
the current meta-step, save a checkpoint and exit with status 130 / 143 (``--resume`` goes on from there); anywhere
else they stop the command at once with the same status and one line.

Run folder written by ``jaxrec train --out DIR``::

    DIR/checkpoints/<step>/   orbax checkpoints (the newest few and the state chosen on the validation users, each
                              with a manifest of its files' SHA-256)
    DIR/items.csv.gz          the catalogue (raw item ids, titles), checksummed in the checkpoints' record
    DIR/metrics.jsonl         one JSON line per finished epoch (loss, grad_norm, skipped, validation figure, ...)
    DIR/metrics.json          the evaluation document {"dataset", "config", "tuned", "scenarios"}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxrec.core.errors import JaxrecError
from jaxrec.data import DATASETS, DataError, UnnamedColumnsError, default_data_root, read_side_table
from jaxrec.data.movielens import locate
from jaxrec.experiment.checkpoint import read_metadata
from jaxrec.experiment.choose import GridError, choose, selection_metric
from jaxrec.experiment.config import EVALUATION_FIELDS, ExperimentConfig, add_flags, as_flags, flag_values
from jaxrec.experiment.export import export_arrays, save_export
from jaxrec.experiment.hybrid_record import HYBRID_FILE
from jaxrec.experiment.predictions import metrics_and_predictions
from jaxrec.experiment.recommend import read_item_list, read_ratings_for, recommender_for
from jaxrec.experiment.reranker_record import RERANKER_FILE, served_otherwise
from jaxrec.experiment.run import (
    RESUME_OVERRIDABLE,
    FolderLock,
    Interrupted,
    RunError,
    TrainingRun,
    atomic_write_text,
    build_experiment,
    check_fresh_out,
    complete_steps,
    make_config,
    never_saved,
    os_reason,
    resolved_fields,
    restore_run,
    resume_config,
)
from jaxrec.experiment.trained import RECENCY_FILE, load_trained
from jaxrec.methods import METHODS, grid, recipe
from jaxrec.scale.host_devices import use_every_core
from jaxrec.scale.host_memory import keep_freed_host_memory
from jaxrec.serve import ServingModel, create_app, missing_extra, run_server
from jaxrec.serve.batch import read_users, recommend_users

__all__ = ["main", "CLIError"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: the printed table's columns: a metric, or a family of cut-offs ``(name, k)`` shown at ``k`` or, when the run
#: has other cut-offs (``--ks``, ``--topn-ks``), at its largest below ``k`` (else its smallest)
RATING_TABLE = ("mae", "rmse", ("ndcg", 3), "auc", ("hr", 10))
TOPN_TABLE = (("hr", 10), ("recall", 20), ("ndcg", 20), ("mrr", 20), ("coverage", 20), ("sampled_hr", 10))
SAMPLED_NOTE = (
    "sampled_hr@k: each positive against sampled negatives (--sampled-negatives), biased (Krichene and Rendle, "
    "KDD 2020); compare methods on the full-catalogue columns"
)


#: a user-facing error of the command line (bad flag combination, unreadable ratings file, ...): the run engine's
#: error type, under the name the command's callers know
CLIError = RunError


def _echo(*parts: Any, err: bool = False) -> None:
    print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# argument parsing


#: the help of --save-predictions (train and evaluate)
_SAVE_PREDICTIONS_HELP = (
    "also write each scenario's split and every method's predictions (top-N: top-k lists; with "
    "--sampled-negatives, each positive's negatives and every method's scores of them) to DIR; rating "
    "predictions as each method gives them (nDCG ranks these), which MAE and RMSE clip to metrics.json's "
    "rating_scale first; an earlier evaluation's prediction files there are replaced (users are named, not their "
    "side features: a model that reads them ranked each user with theirs)"
)


def _add_rerank_flags(command: argparse.ArgumentParser) -> None:
    """``--rerank`` and ``--no-rerank`` on a command that lists a run's recommendations."""
    which = command.add_mutually_exclusive_group()
    which.add_argument(
        "--rerank",
        action="store_true",
        help="a run trained with --rerank: list the meta-learner's top --rerank-candidates re-ranked, as the run's "
        "method 'rerank' lists (default: as the run's validation users chose)",
    )
    which.add_argument(
        "--no-rerank",
        action="store_true",
        help="a run trained with --rerank: list by the meta-learner or its hybrid, not re-ranked (default: as the "
        "run's validation users chose)",
    )
    which.add_argument(
        "--model-alone",
        action="store_true",
        help="a top-N run: list by the adapted meta-learner alone, neither its hybrid (--hybrid) nor re-ranked: the "
        "run's method 'maml', which `jaxrec export --model-alone` writes as arrays",
    )


def _add_new_items_flag(command: argparse.ArgumentParser, what: str) -> None:
    """``--new-items FILE`` on a command that loads a run folder (:func:`_load_trained`)."""
    command.add_argument(
        "--new-items",
        metavar="FILE",
        help="a table of items added since training (text or Parquet, id column first or named item), its columns "
        f"named as train's --item-features: {what}",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the ``jaxrec`` command and its subcommands.

    Returns:
      The ``argparse`` parser; the config flags of ``train`` (and some of ``evaluate``) come from
      :func:`jaxrec.experiment.config.add_flags`.
    """
    parser = argparse.ArgumentParser(prog="jaxrec", description="Meta-learned cold-start recommendation in JAX.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train, evaluate every cold-start scenario, write DIR/metrics.json")
    t.add_argument("--config", help="a JSON file of config fields (flags override it), e.g. benchmarks/configs/*.json")
    t.add_argument(
        "--method",
        choices=sorted(METHODS),
        help="a named recipe (jaxrec.methods; flags override it): a method of the literature as its paper configures "
        "it, or twotower-als, the top-N recipe for implicit feedback",
    )
    add_flags(t)
    t.add_argument("--out", default="runs/jaxrec", help="run folder (default runs/jaxrec)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument(
        "--overwrite", action="store_true", help="replace the run files (checkpoints, metrics) that --out holds"
    )
    t.add_argument("--steps", type=int, help="stop after this many meta-steps in total (default: all epochs)")
    t.add_argument(
        "--nonfinite",
        choices=("skip", "raise"),
        default="skip",
        help="a NaN/inf meta-step: skip and count it (default), or stop with an error naming its users",
    )
    t.add_argument("--save-every", type=int, default=0, help="also checkpoint every N meta-steps (default: per epoch)")
    t.add_argument(
        "--keep",
        type=int,
        default=3,
        help="the newest checkpoints to keep (default 3), besides the state chosen on validation users",
    )
    t.add_argument("--no-eval", action="store_true", help="train and checkpoint only; skip the evaluation")
    t.add_argument(
        "--no-progress", action="store_true", help="no progress bars (the meta-training, the baselines' tuning)"
    )
    t.add_argument(
        "--save-predictions",
        metavar="DIR",
        help=_SAVE_PREDICTIONS_HELP,
    )

    ch = sub.add_parser(
        "choose",
        help="meta-train every point of a grid of config fields, choose one on the validation users, write "
        "DIR/config.json for jaxrec train --config",
    )
    ch.add_argument("--config", help="the base config: a JSON file of config fields (flags override it)")
    ch.add_argument("--method", choices=sorted(METHODS), help="the base config: a named recipe (flags override it)")
    add_flags(ch)
    ch.add_argument(
        "--grid",
        help="the grid, as JSON or a JSON file: {field name: [values]}, every combination trained, e.g. "
        "'{\"als_confidence\": [1, 10]}' (default: the --method's own grid, where it has one)",
    )
    ch.add_argument(
        "--trainings",
        type=int,
        default=2,
        help="trainings per point, compared by their mean (default 2: on a few dozen validation users one training "
        "a point often picks the wrong one of two close points)",
    )
    ch.add_argument("--out", default="runs/choice", help="folder for config.json and choice.json (default runs/choice)")
    ch.add_argument("--overwrite", action="store_true", help="replace the config.json and choice.json --out holds")

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on every cold-start scenario")
    ev.add_argument("--checkpoint", required=True, help="a run folder (or its checkpoints/ folder)")
    ev.add_argument(
        "--step",
        type=int,
        help="which checkpoint step (default: the one the run chose on its validation users, else the newest)",
    )
    add_flags(ev, names=tuple(sorted(EVALUATION_FIELDS)))
    ev.add_argument("--output", help="also write the metrics document to this JSON file")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar over the baselines' tuning")
    ev.add_argument(
        "--save-predictions",
        metavar="DIR",
        help=_SAVE_PREDICTIONS_HELP,
    )

    r = sub.add_parser("recommend", help="adapt to a new user's few ratings (or a file of users') and print the top-k")
    r.add_argument("--checkpoint", required=True, help="a run folder (or its checkpoints/ folder)")
    given = r.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--ratings",
        help="CSV of item,rating (raw item ids, header optional); for a top-N run also a list of item ids, oldest "
        "first (a run with --support-recency weighs the newest most)",
    )
    given.add_argument(
        "--users",
        metavar="FILE",
        help="many new users at once: a table (text, JSON lines or Parquet) of user and item columns, optionally a "
        "rating or weight and a timestamp (each user's rows oldest first), found as train finds a log's (or "
        "--columns); writes user,rank,item,score rows (--out, else standard output), ranked as the service ranks them",
    )
    r.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    r.add_argument(
        "--exclude",
        metavar="FILE",
        help="a file of item ids, one per line, never to recommend (out of stock, withdrawn); unknown ids are counted",
    )
    r.add_argument(
        "--features",
        metavar="COLUMN=VALUE,...",
        help="with --ratings: the new user's side features, for a run trained with them (demographics, "
        "--user-features), e.g. age=25,gender=F; without them each is read as unknown",
    )
    r.add_argument(
        "--user-features",
        metavar="FILE",
        help="with --users: a table of the users' side features (id column first or named user; text or Parquet), "
        "as train's --user-features",
    )
    r.add_argument("--out", help="with --users: the CSV file to write the lists to (default: standard output)")
    r.add_argument("--sep", help="with --users: the text file's field separator (default: sniffed)")
    r.add_argument(
        "--encoding",
        default="utf-8",
        help="the text encoding of --ratings, --users, --user-features, --exclude and --new-items (default utf-8)",
    )
    r.add_argument(
        "--columns",
        help="with --users: the file's columns as train's --columns reads them (user,item,weight,timestamp in file "
        "order, _ to skip one, or user=visitor,item=venue); default: a header's common names",
    )
    _add_new_items_flag(r, "each is ranked from its features alone, as the new-item scenario measured")
    _add_rerank_flags(r)
    r.add_argument("--timing", action="store_true", help="print the adaptation latency (warm, jit-compiled)")

    s = sub.add_parser("serve", help="serve a trained model over HTTP: /recommend, /predict, /items, the demo page")
    s.add_argument("--checkpoint", required=True, help="a run folder (or its checkpoints/ folder)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--batch-sizes", default="1,8,64", help="users per compiled call, the shape buckets (default 1,8,64)"
    )
    s.add_argument(
        "--support-sizes",
        default="16,64,256",
        help="items per user, the shape buckets; the largest is the most a request may send (default 16,64,256)",
    )
    s.add_argument("--max-k", type=int, default=100, help="the most recommendations a request may ask for")
    s.add_argument(
        "--exclude",
        metavar="FILE",
        help="a file of item ids, one per line, never to recommend (out of stock, withdrawn); a request may exclude "
        "more of its own ('exclude')",
    )
    s.add_argument("--encoding", default="utf-8", help="the text encoding of --exclude and --new-items (default utf-8)")
    s.add_argument(
        "--batch-wait-ms", type=float, default=2.0, help="how long a request waits to share a call (default 2)"
    )
    s.add_argument("--max-body-kb", type=int, default=256, help="the largest request body, KiB (default 256)")
    s.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="how long the next part of a request's body may take to arrive before a 408 (default 30)",
    )
    _add_new_items_flag(s, "each is ranked from its features alone, as the new-item scenario measured")
    _add_rerank_flags(s)
    add_flags(s, names=("devices",))

    x = sub.add_parser(
        "export",
        help="write a top-N run's item vectors and new-user fold-in as arrays (.npz) for an index outside jaxrec",
    )
    x.add_argument("--checkpoint", required=True, help="a run folder (or its checkpoints/ folder)")
    x.add_argument("--out", required=True, help="the .npz file to write")
    _add_new_items_flag(x, "their vectors are computed from their features alone")
    x.add_argument("--encoding", default="utf-8", help="the text encoding of --new-items (default utf-8)")
    x.add_argument(
        "--model-alone",
        action="store_true",
        help="export a run that ranks by a hybrid (--hybrid) or re-ranks (--rerank) anyway: the arrays rank by the "
        "adapted model alone, as `jaxrec recommend --model-alone` lists",
    )

    for command in (t, ch, ev, r, s, x):
        command.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import this Python module first (repeatable; from the current folder or the path): one that "
            "registers models of one's own with jaxrec.models.register, so that --model or a run folder names them",
        )

    d = sub.add_parser("datasets", help="list the known datasets and where they are cached")
    d.add_argument("--data-dir", help="folder holding the MovieLens folders")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# config


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given explicitly on the command line (:func:`jaxrec.experiment.config.flag_values`)."""
    try:
        out = flag_values(args)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if "data" in out:
        out.pop("dataset", None)
    for field in ("data", "item_features", "user_features"):
        if out.get(field) is not None:
            flag = "--" + field.replace("_", "-")
            if not Path(out[field]).expanduser().exists():
                raise CLIError(f"{flag} {out[field]}: file not found")
            out[field] = str(Path(out[field]).expanduser().resolve())  # the record works from any directory
    return out


def _base_config(args: argparse.Namespace) -> ExperimentConfig | None:
    """The configuration ``--method`` or ``--config`` names (one of them at most), or None for the defaults."""
    if args.config and args.method:
        raise CLIError("--config and --method each give a whole configuration: pass one (and flags over it)")
    if args.method:
        return ExperimentConfig.make(**recipe(args.method))
    if args.config:
        try:
            return ExperimentConfig.load(args.config)
        except ValueError as e:
            raise CLIError(f"--config {e}") from None
    return None


def _config(base, overrides: dict[str, Any]):
    """:func:`make_config` with the errors in the command line's words (a field's flag)."""
    try:
        return make_config(base, overrides)
    except RunError as e:
        raise CLIError(as_flags(str(e).removeprefix("invalid configuration: "))) from None


# ----------------------------------------------------------------------------------------------------------------
# training


def cmd_train(args: argparse.Namespace) -> int:
    """``jaxrec train``: meta-train (or resume), checkpoint, evaluate and write ``DIR/metrics.json``.

    Args:
      args: the parsed arguments.

    Returns:
      The exit status: 0, or ``128 + signal`` when a signal stopped the training.

    Raises:
      RunError: if the flags, the config file or the output folder are not usable.
    """
    out = Path(args.out).expanduser()
    overrides = _config_overrides(args)
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    base = _base_config(args)
    for flag, value, low in (
        ("--steps", args.steps, 0),
        ("--keep", args.keep, 1),
        ("--save-every", args.save_every, 0),
    ):
        if value is not None and value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    if not args.no_eval:
        _check_predictions_folder(args.save_predictions)
    if args.resume and not (out / "checkpoints").is_dir():
        raise CLIError(f"--resume: {out} holds no checkpoints to resume from")
    # a bad config leaves no folder behind; on resume, the run that --method or --config describes, if one is given
    config = None if args.resume and base is None else _config(base, overrides)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot write the run folder {out}: {os_reason(e)}") from None
    # held before the folder is read or cleared (--overwrite) and until the last file is written
    with FolderLock(out) as lock:
        return _train_in(args, out, base, overrides, lock, config)


def _train_in(args: argparse.Namespace, out: Path, base, overrides: dict, lock: FolderLock, config) -> int:
    """``jaxrec train`` in its run folder, which ``lock`` holds (``config``: a new run's; on resume, the run that
    ``--method`` or ``--config`` describes, or None)."""
    if args.resume:
        if never_saved(out):
            raise CLIError(
                f"--resume: {out} holds a run stopped before its first checkpoint: nothing to resume; start it again "
                "without --resume"
            )
        if not complete_steps(out):
            raise CLIError(
                f"--resume: {out} holds no complete checkpoint (a run stopped before its first, or its checkpoints "
                "lost): nothing to resume; --overwrite replaces the run's files"
            )
        described, changes = config, {}
        if described is not None:  # what it sets of the fields a resume may change counts as their flags do
            changes = _resume_changes(args, base, described, overrides, out)
        config = resume_config(out, {**{k: v for k, (v, _) in changes.items()}, **overrides})
        if described is not None:
            _check_describes_the_run(args, described, config, out)
        for k, (v, recorded) in changes.items():
            if k != "data" and not _same_value(v, recorded):
                shown = ",".join(map(str, v)) if isinstance(v, list | tuple) else v
                _echo(f"note: --resume: --{k.replace('_', '-')} {shown} as {_described_by(args)} gives", err=True)
    else:
        check_fresh_out(out, overwrite=args.overwrite)
        field_defaults = type(config.topn)()
        untuned = (config.topn.ranking_loss, config.topn.item_start) == (
            field_defaults.ranking_loss,
            field_defaults.item_start,
        )
        if base is None and config.data.feedback == "implicit" and untuned:
            _echo(
                f"note: top-N training of {config.model.name} from the field defaults (sampled softmax, a random "
                f"start, {config.meta.epochs} epoch{'s' * (config.meta.epochs != 1)} at {config.meta.meta_lr:g}); "
                "--method twotower-als is the configuration the results report",
                err=True,
            )
    experiment = build_experiment(config)
    if hasattr(experiment, "progress"):  # a top-N run: bars over the ALS start and the baselines' tuning
        experiment.progress = not args.no_progress
    report = getattr(experiment.dataset, "report", {})
    features = getattr(getattr(experiment, "featurizer", None), "features_read", None)
    for note in _log_notes(report) + _side_table_notes(report, features):
        _echo(f"note: {note}", err=True)
    train_tasks = getattr(experiment, "train_tasks", None)
    dropped = int(getattr(train_tasks, "stats", {}).get("users_dropped", 0))
    if dropped:
        reason = _LEFT_OUT["topn" if config.data.feedback == "implicit" else "rated meta-train"]
        _echo(f"note: train: {dropped} meta-train {train_tasks.by}(s) left out: {reason}", err=True)
    total = experiment.total_steps
    stop_step = total if args.steps is None else min(int(args.steps), total)
    run = TrainingRun(experiment, out, keep=args.keep, nonfinite=args.nonfinite, lock=lock)
    try:
        state = run.start(args.resume)
        start = int(state.step)
        if start >= stop_step and args.resume:
            _echo(
                f"note: the run is at step {start}, at or past the {stop_step} steps asked for "
                f"(--epochs {config.meta.epochs}{'' if args.steps is None else f', --steps {args.steps}'}): "
                "nothing to train",
                err=True,
            )
        _echo(
            f"{experiment.dataset.name}: {len(experiment.train_tasks)} meta-train {experiment.train_tasks.by}s, "
            f"{experiment.steps_per_epoch} steps/epoch; {config.meta.algorithm} ({config.meta.order} order) on "
            f"{config.model.name}; "
            f"steps {start} -> {stop_step} of {total}"
        )
        state, signum = run.train(state, stop_step, save_every=args.save_every, progress=not args.no_progress)
        kept = run.chosen_state(state) if signum is None else state
    finally:
        run.close()
    step = int(state.step)
    if signum is not None:
        name = signal.Signals(signum).name
        _echo(
            f"\n{name} received: saved checkpoint at step {step} in {out / 'checkpoints'}; "
            f"continue with: {shlex.join(_resume_command(out, config))}",
            err=True,
        )
        return 128 + signum
    skipped = int(state.skipped)
    why = " (--nonfinite raise stops at the first, naming its users)" if skipped and args.nonfinite == "skip" else ""
    _echo(f"meta-trained {step} steps ({skipped} non-finite step(s) skipped{why}); checkpoint in {out}")
    if run.selector is not None and step in run.selector.scores:
        _echo(_epoch_choice_line(run.selector, experiment.steps_per_epoch))
    state = kept
    # a signal from here on stops the evaluation of a saved training: the same command continues it
    _stopped_after[0] = (
        f"the training is saved in {out / 'checkpoints'}; evaluate it with: {shlex.join(_resume_command(out, config))}"
    )
    if not args.no_eval:
        document = _evaluate(experiment, state.params, args.save_predictions, progress=not args.no_progress)
        atomic_write_text(out / "metrics.json", json.dumps(document, indent=2) + "\n")
        _echo(format_table(document))
        for note in task_notes(document):
            _echo(note, err=True)
        _echo(f"wrote {out / 'metrics.json'}")
    records = run.keep_serving_records(state.params)
    who = "recommend and serve"
    if (reranker := records.get("reranker")) is not None:
        v = reranker["validation"]
        other = served_otherwise(v)
        re_ranked = f"the meta-learner's top {reranker['candidates']} re-ranked by {reranker['model']}"
        figures = _choice_figures(v)
        if v["lists"] == "rerank":
            _echo(
                f"wrote {out / RERANKER_FILE}: recommend and serve list {re_ranked} ({figures}; --no-rerank: {other})"
            )
            who = "with --no-rerank, recommend and serve"
        else:
            _echo(
                f"wrote {out / RERANKER_FILE}: recommend and serve list {other}, not {re_ranked} ({figures}; "
                "--rerank lists those)"
            )
    if records.get("hybrid") is not None:
        _echo(
            f"wrote {out / HYBRID_FILE}: {who} rank by {records['hybrid']['method']} (weight "
            f"{records['hybrid']['weight']:g}, chosen on the validation users)"
        )
    if records.get("support_recency") is not None:
        _echo(f"wrote {out / RECENCY_FILE}: {who} {_recency_said(records['support_recency']['maml'])}")
    return EXIT_OK


def _recency_said(strength: float) -> str:
    """How the run's lists weigh a new user's items by their order (its ``support_recency.json``)."""
    how = "by their order, oldest first" if strength else "alike, whatever their order"
    return f"weigh a user's items {how} (strength {strength:g}, chosen on validation users)"


def _epoch_choice_line(selector: Any, per_epoch: int) -> str:
    """What ``jaxrec train`` says of the state it kept (``--select-epoch``)."""
    scores, chosen = selector.scores, selector.chosen
    last = max(scores)
    where = f"step {chosen} (epoch {chosen / per_epoch:g})"
    figure = f"validation {selector.metric} {scores[chosen]:.4f}"
    if chosen == last:
        best = selector.best_step
        if best == last or scores[best] == scores[last]:
            return f"kept the last state, {where}: {figure}, the best of {len(scores)} candidates"
        return (
            f"kept the last state, {where}: {figure}; step {best}'s {scores[best]:.4f} is not a lead the validation "
            f"users support (+{selector.difference:.4f}, lower bound {selector.lower:+.4f}; --select-epoch best "
            "keeps it)"
        )
    return (
        f"kept {where}, chosen on the validation users: {figure} against the last state's {scores[last]:.4f} "
        f"(step {last}); evaluate, recommend and serve use it"
    )


def _check_predictions_folder(predictions: str | None) -> None:
    """``--save-predictions``' folder, made and checked before the slow part (a file of that name, a folder that
    cannot be made or written, once failed after the training)."""
    if predictions is None:
        return
    folder = Path(predictions).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--save-predictions {predictions}: a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--save-predictions {predictions}: cannot create it: {os_reason(e)}") from None
    if not os.access(folder, os.W_OK):
        raise CLIError(f"--save-predictions {predictions}: the folder is not writable")


def _evaluate(experiment: Any, params: Any, predictions: str | None, progress: bool) -> dict:
    """The metrics document of a run and, with ``predictions``, its split and predictions written there; with
    ``progress``, bars over the tuning and the evaluation (an experiment that has them: top-N)."""
    if hasattr(experiment, "progress"):
        experiment.progress = progress
    folder = None if predictions is None else Path(predictions).expanduser()
    try:
        document, files = metrics_and_predictions(experiment, params, folder)
    except OSError as e:
        raise CLIError(f"--save-predictions {folder}: {os_reason(e)}") from e
    if folder is not None:
        _echo(f"wrote {len(files)} prediction file(s) to {folder}")
    return document


# ----------------------------------------------------------------------------------------------------------------
# choose


CHOICE_FILES = ("config.json", "choice.json")


def cmd_choose(args: argparse.Namespace) -> int:
    """``jaxrec choose``: meta-train every point of a grid on one split, score each on the validation users, and write
    the chosen configuration (``DIR/config.json``, for ``jaxrec train --config``) and every point's figures
    (``DIR/choice.json``). The test users are never scored.

    Args:
      args: the parsed arguments.

    Returns:
      The exit status, 0.

    Raises:
      RunError: if the flags, the grid, the config file or the output folder are not usable.
    """
    out = Path(args.out).expanduser()
    if args.trainings < 1:
        raise CLIError(f"--trainings must be >= 1, got {args.trainings}")
    found = [name for name in CHOICE_FILES if (out / name).exists()]
    if found and not args.overwrite:
        raise CLIError(f"{out} already holds {', '.join(found)}: pass --overwrite to replace, or choose another --out")
    points = _grid(args)
    config = _config(_base_config(args), _config_overrides(args))

    metric = {"name": selection_metric(config)[0]}

    def build(point: ExperimentConfig):  # the metric a run chooses by: its catalogue may cap the cut-off
        experiment = build_experiment(point)
        metric["name"] = getattr(experiment, "select_metric", metric["name"])
        return experiment

    def report(fields: dict, t: int, figure: float, seconds: float) -> None:
        _echo(f"{_point_text(fields)}  training {t}: validation {metric['name']} {figure:.4f} ({seconds:.0f} s)")

    once = _SaidOnce()
    handlers = [h for h in logging.getLogger("jaxrec").handlers if getattr(h, "_jaxrec_cli", False)]
    for handler in handlers:
        handler.addFilter(once)
    try:  # choose checks every point before the first training
        choice = choose(config, points, trainings=args.trainings, build=build, on_score=report)
    except GridError as e:
        raise CLIError(f"--grid: {as_flags(str(e))}") from None
    finally:
        for handler in handlers:
            handler.removeFilter(once)
    if once.repeated:
        _echo(
            f"note: {len(once.said)} warning(s) about the data said once ({once.repeated} repeat(s) for later grid "
            "points and trainings left out)",
            err=True,
        )
    direction = "higher" if choice.higher_is_better else "lower"
    rows = [f"{choice.validation_tasks} validation tasks, {choice.metric} ({direction} is better):"]
    for i, c in enumerate(choice.candidates):
        mark = "  <- chosen" if i == choice.best else ""
        rows.append(f"  {_point_text(c.fields)}  {c.score:.4f}  ({c.seconds:.0f} s){mark}")
    if args.trainings == 1:
        rows.append("(one training a point: on a few dozen validation users close points differ by noise)")
    _echo("\n".join(rows))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(choice.config.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "choice.json", json.dumps(choice.to_dict(), indent=2) + "\n")
    _echo(
        f"wrote {out / 'config.json'} and {out / 'choice.json'}; train it: jaxrec train --config {out / 'config.json'}"
    )
    return EXIT_OK


class _SaidOnce(logging.Filter):
    """Lets each warning about the data (``jaxrec.data``'s: a column not read, rows left out) through the first
    time: ``choose`` reads the same data for every grid point and training. Others, such as a training's skipped
    steps, are each point's own and all pass."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()
        self.repeated = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("jaxrec.data") or record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if text in self.said:
            self.repeated += 1
            return False
        self.said.add(text)
        return True


def _grid(args: argparse.Namespace) -> dict:
    """The grid of ``--grid`` (JSON text or a JSON file), or the ``--method``'s own."""
    if args.grid is None:
        own = grid(args.method) if args.method else None
        if own is None:
            raise CLIError("--grid is needed (this configuration has no grid of its own): '{\"field\": [values]}'")
        return own
    text = args.grid
    if not text.lstrip().startswith(("{", "[")):
        try:
            text = Path(text).expanduser().read_text()
        except OSError as e:
            raise CLIError(f"--grid {args.grid}: neither JSON nor a readable file ({os_reason(e)})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(f"--grid: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise CLIError("--grid: give a JSON object {field name: [values]}")
    return value


def _point_text(fields: dict) -> str:
    return " ".join(f"{name}={json.dumps(value)}" for name, value in fields.items())


# ----------------------------------------------------------------------------------------------------------------
# evaluate / recommend


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``jaxrec evaluate``: evaluate a checkpoint on every cold-start scenario.

    Args:
      args: the parsed arguments.

    Returns:
      The exit status 0.
    """
    overrides = _config_overrides(args)
    _check_predictions_folder(args.save_predictions)
    experiment, checkpoint = restore_run(args.checkpoint, args.step, overrides)
    _echo(f"checkpoint {checkpoint.folder} step {checkpoint.step}")
    document = _evaluate(experiment, checkpoint.state.params, args.save_predictions, progress=not args.no_progress)
    _echo(format_table(document))
    for note in task_notes(document):
        _echo(note, err=True)
    if args.output:
        atomic_write_text(Path(args.output), json.dumps(document, indent=2) + "\n")
        _echo(f"wrote {args.output}")
    return EXIT_OK


def format_table(document: dict) -> str:
    """Format a metrics document as a plain-text table.

    Args:
      document: the metrics document (``{"scenarios": {scenario: {method: metrics}}}``).

    Returns:
      One row per (scenario, method), the users and the scalar metrics as columns.
    """
    scenarios = document.get("scenarios", {})
    keys = {key for methods in scenarios.values() for result in methods.values() for key in result}
    present = []
    for column in TOPN_TABLE if document.get("task") == "topn" else RATING_TABLE:
        key = column if isinstance(column, str) else _table_cutoff(keys, *column)
        if key in keys and key not in present:
            present.append(key)
    header = ["scenario", "method", f"{_task_unit(document)}s", *present]
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

    table = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    sampled = any(key.startswith("sampled_hr@") for key in present)
    return "\n".join(table + ([SAMPLED_NOTE] if sampled else []))


#: below this many users, a scenario's or the validation's figures are noise (a paired interval over 30 users is
#: about +-0.1 of Recall@20 or MAE on MovieLens)
FEW_USERS = 30
#: ``recommend``'s flags of a file of users (``--users``), by their argument's name
_USERS_ONLY = {"--out": "out", "--columns": "columns", "--sep": "sep", "--user-features": "user_features"}
#: why a user (or item) of a task set is left out, by the run's kind
_LEFT_OUT = {
    "topn": "too few interactions for a support and a query (--shots)",
    "rated": "too few or too many ratings for a task (--min-ratings, --max-ratings, --query)",
    # meta-training has no upper cap (a long history is subsampled): only too few ratings leave a user out
    "rated meta-train": "too few ratings for a task (--min-ratings, --query)",
}


def _task_unit(document: dict) -> str:
    """What a task of the run is: ``"item"`` for item tasks (``--tasks-by item``, rating runs only), else
    ``"user"``."""
    return "item" if document.get("config", {}).get("protocol", {}).get("tasks_by") == "item" else "user"


def task_notes(document: dict) -> list[str]:
    """What the table does not show: each evaluated task set's users left out (too few or too many ratings or
    interactions to be a task) and those with too few users to tell methods apart, the validation users that every
    choice of the run was made on included."""
    unit = _task_unit(document)
    reason = _LEFT_OUT["topn" if document.get("task") == "topn" else "rated"]
    notes = []
    for name, stats in document.get("tasks", {}).items():
        if name in ("train", "new_item_only"):  # new_item_only: new_item's users, ranked among the new items
            continue
        users, dropped = int(stats.get("tasks", 0)), int(stats.get("users_dropped", 0))
        parts = []
        if dropped:
            parts.append(f"{dropped} {unit}(s) left out: {reason}")
        if users < FEW_USERS:
            chosen = "; the run's choices (the state kept, tuned rates and settings) rest on them"
            parts.append(f"too few to tell methods apart{chosen if name == 'validation' else ''}")
        if parts:
            noun = f"{unit}s evaluated" if name != "validation" else f"validation {unit}s"
            notes.append(f"note: {name}: {users} {noun}; " + "; ".join(parts))
    methods = {method for scenario in document.get("scenarios", {}).values() for method in scenario}
    if unit == "item" and {"user_mean", "item_mean"} & methods:  # the baselines keep their user-task names
        notes.append(
            "note: a task is an item here: user_mean is each new item's mean support rating, and item_mean the "
            "global mean (a new item has no training rating)"
        )
    return notes


def _table_cutoff(keys: set[str], name: str, k: int) -> str | None:
    """``name@k`` if the results hold it, else the largest cut-off of ``name`` below ``k``, else its smallest."""
    cutoffs = sorted(
        int(key.split("@")[1]) for key in keys if key.startswith(f"{name}@") and key[len(name) + 1 :].isdigit()
    )
    if not cutoffs:
        return None
    below = [c for c in cutoffs if c <= k]
    return f"{name}@{below[-1] if below else cutoffs[0]}"


def cmd_recommend(args: argparse.Namespace) -> int:
    """``jaxrec recommend``: adapt to a new user's few ratings and print the top-k items.

    Args:
      args: the parsed arguments.

    Returns:
      The exit status 0.

    Raises:
      RunError: if ``-k`` is less than 1 or the ratings file is not usable.
    """
    if args.k < 1:
        raise CLIError(f"-k must be >= 1, got {args.k}")
    if args.users is not None:
        return _recommend_users(args)
    given = [flag for flag, value in _USERS_ONLY.items() if getattr(args, value) is not None]
    if given:
        raise CLIError(
            f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --users (one user's --ratings list is "
            "printed; their features: --features)"
        )
    features = _feature_pairs(args.features)
    if args.new_items is None:  # a bad file fails before the slow part (with new items: after their table)
        codes, ratings, notes, seen = read_ratings_for(args.checkpoint, args.ratings, args.encoding)
    trained = _load_trained(args, args.model_alone)  # the run folder alone: no training data is read
    if args.new_items is not None:  # the user may have met the new items: read against the grown catalogue
        codes, ratings, notes, seen = read_ratings_for(args.checkpoint, args.ratings, args.encoding, trained.item_ids)
    seen = np.union1d(seen, _excluded(args, trained)).astype(np.int64)
    for note in notes + _feature_notes(trained, features) + _ranked_by_notes(trained, args):
        _echo(f"note: {note}", err=True)
    recommender = recommender_for(trained)
    topn = trained.config.data.feedback == "implicit"  # how the lines read: interactions and scores
    started = time.perf_counter()
    try:
        best, scores = recommender.top_k(codes, ratings, args.k, exclude=seen, user_features=features)
    except ValueError as e:  # the file's values overflow the model's arithmetic
        raise RunError(f"--ratings {args.ratings}: {e}") from None
    cold = time.perf_counter() - started
    titles, raw = trained.titles, trained.item_ids
    what = "interaction(s)" if topn else "rating(s)"
    hybrid, reranker = getattr(recommender, "hybrid", None), getattr(recommender, "reranker", None)
    by = "" if hybrid is None else f", ranked by {hybrid.name} (weight {hybrid.weight:g})"
    if reranker is not None:
        by = f", the meta-learner's top {recommender.rerank_candidates} re-ranked by {reranker.name}"
    _echo(f"top {len(best)} of {len(raw)} items for a new user with {len(codes)} {what}{by}:")
    for rank, (code, score) in enumerate(zip(best, scores, strict=True), 1):
        label = titles[code] if titles is not None else str(raw[code])
        _echo(f"{rank:>3}. {label}  (item {raw[code]}, {'score' if topn else 'predicted'} {score:.2f})")
    if args.timing:
        warm = []
        for _ in range(20):
            t = time.perf_counter()
            recommender.top_k(codes, ratings, args.k, exclude=seen, user_features=features)
            warm.append(time.perf_counter() - t)
        warm.sort()
        what = f"adapt + score {len(raw)} items"
        if reranker is not None:
            what += f", adapt the re-ranker + re-score {recommender.rerank_candidates}"
        _echo(f"{what}: first call {cold * 1e3:.1f} ms (compiles), warm median {warm[len(warm) // 2] * 1e3:.2f} ms")
    return EXIT_OK


def _recommend_users(args: argparse.Namespace) -> int:
    """``jaxrec recommend --users FILE``: every user's top-k as CSV rows, the counts of what was left out on stderr."""
    if args.timing or args.features is not None:
        raise CLIError(
            "--timing and --features go with --ratings (one user): time a file of users with the shell's time, give "
            "their features as a table (--user-features)"
        )
    out = None if args.out is None else Path(args.out).expanduser()
    if out is not None:  # checked before the slow part
        if out.is_dir():
            raise CLIError(f"--out {args.out} is a folder: name the CSV file to write")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"--out {args.out}: cannot create its folder: {e.strerror or e}") from None
        if not os.access(out.parent, os.W_OK):
            raise CLIError(f"--out {args.out}: its folder is not writable")
    # a bad file fails before the model is loaded
    users = _read_users_as_trained(args)
    table = None if args.user_features is None else read_side_table(args.user_features, "user", encoding=args.encoding)
    table_where = f"--user-features {args.user_features}"
    trained = _load_trained(args, args.model_alone)
    excluded = _excluded(args, trained)
    for note in (_feature_notes(trained, None) if table is None else []) + _ranked_by_notes(trained, args):
        _echo(f"note: {note}", err=True)
    try:
        lists, report = recommend_users(
            trained,
            users,
            args.k,
            where=f"--users {args.users}",
            exclude=excluded,
            user_features=table,
            features_where=table_where,
        )
    except ValueError as e:
        raise RunError(str(e)) from None
    dropped = f"{report['unknown']} unknown item(s) ignored, {report['duplicates']} duplicate(s) merged"
    if report["below_threshold"]:
        dropped += f", {report['below_threshold']} rating(s) below the positive threshold (left out of the lists)"
    _echo(
        f"note: read {report['rows']} row(s) of {report['users']} user(s); {dropped}; lists for {report['listed']} "
        f"user(s), {len(lists)} row(s)",
        err=True,
    )
    notes = [
        (report["ignored_columns"], f"column(s) not read: {', '.join(report['ignored_columns'])}"),
        (
            report["values_ignored"],
            f"the run read its log's ratings as interactions (no --positive-threshold): the {report['values_ignored']} "
            "column is ignored, each row one interaction"
            if report.get("ratings_as_interactions")
            else f"the model was trained on interactions without weights: the {report['values_ignored']} column is "
            "ignored, each item counts once",
        ),
        (
            report["without_items"],
            f"{report['without_items']} user(s) with no item the model knows: the model's list before adaptation, "
            "as the service answers them",
        ),
        (
            report["without_positives"],
            f"{report['without_positives']} user(s) with every rating below the threshold: the model's list before "
            "adaptation, their items left out",
        ),
        (report["empty_lists"], f"{report['empty_lists']} user(s) already have every item: an empty list"),
    ]
    for shown, note in notes:
        if shown:
            _echo(f"note: {note}", err=True)
    if table is not None:
        _echo(
            f"note: --user-features: {report['with_features']} user(s) with a row, {report['without_features']} "
            f"without (read as unknown); {report['features_not_given']} with a feature left blank or not in the "
            f"table (read as unknown); {report['unknown_feature_values']} value(s) no training user had"
            + (
                f"; column(s) the model does not read: {', '.join(report['feature_columns_ignored'])}"
                if report["feature_columns_ignored"]
                else ""
            ),
            err=True,
        )
    if report["unadapted"]:
        _echo(f"note: users given the list before adaptation, e.g. {', '.join(report['unadapted'])}", err=True)
    if out is None:
        lists.to_csv(sys.stdout, index=False)
    else:
        lists.to_csv(out, index=False)
        _echo(f"wrote {args.out}", err=True)
    return EXIT_OK


def _described_by(args: argparse.Namespace) -> str:
    return f"--method {args.method}" if args.method else f"--config {args.config}"


def _resume_changes(args: argparse.Namespace, base, described, overrides: dict, out: Path) -> dict[str, tuple]:
    """The fields a resume may change (``RESUME_OVERRIDABLE``: the epochs, the files to read again, ...) that a
    ``--method`` or ``--config`` given on resume sets, as ``{field: (its value, the recorded run's)}``: a recipe's or
    file's own (those it sets apart from the defaults; a flag given wins and is no change of theirs), its paths
    made absolute and checked as ``--data``'s are."""
    try:
        recorded = ExperimentConfig.from_dict(read_metadata(out / "checkpoints")["config"]).flat()
    except (KeyError, TypeError, ValueError, JaxrecError):
        return {}  # resume_config says what is wrong with the record
    defaults, own, wanted = ExperimentConfig().flat(), base.flat(), described.flat()
    changes = {}
    for k in RESUME_OVERRIDABLE:
        if k in overrides or wanted[k] in ("auto", None) or _same_value(own[k], defaults[k]):
            continue
        value = wanted[k]
        if k in ("data", "item_features", "user_features"):  # read as the flag's: from here, and it must exist
            path = Path(value).expanduser()
            if not path.exists():
                raise CLIError(f"--{k.replace('_', '-')} {value} (of {_described_by(args)}): file not found")
            value = str(path.resolve())
        changes[k] = (value, recorded.get(k))
    return changes


def _same_value(a: Any, b: Any) -> bool:
    """Equal as recorded: through JSON (tuples as lists), numbers by value (a grid's ``1`` is the flag's ``1.0``)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _check_describes_the_run(args: argparse.Namespace, described, recorded, out: Path) -> None:
    """On resume, a ``--method`` or ``--config`` (the original command repeated) must describe the recorded run:
    every field outside those a resume may change (``RESUME_OVERRIDABLE``) the same (``"auto"`` and None, which the
    run resolved when it started, ask for what it recorded)."""
    wanted, ran = resolved_fields(described), recorded.flat()
    unset = ("auto", None)
    differ = [
        k
        for k, v in wanted.items()
        if k not in RESUME_OVERRIDABLE
        and v not in unset
        and not (k == "dataset" and wanted.get("data"))  # a log file's run names no dataset
        and not _same_value(v, ran[k])
    ]
    if differ:
        flag = _described_by(args)
        raise CLIError(
            f"--resume: {flag} describes another run than the one in {out} (it differs in "
            f"{', '.join('--' + k.replace('_', '-') for k in differ)}); resume without it to continue the recorded "
            "run, or start a new run in another --out"
        )


def _resume_command(out: Path, config: ExperimentConfig) -> list[str]:
    """The command that continues the run in ``out``: what it read named again (a recorded path is never opened:
    the log, the MovieLens folder, the side tables) and its device count (a CPU host is split into devices before
    JAX starts, by the flag only)."""
    again = ["jaxrec", "train", "--out", str(out), "--resume"]
    for flag, path in (
        ("--data", config.data.path),
        ("--data-dir", config.data.data_dir),
        ("--item-features", config.data.item_features),
        ("--user-features", config.data.user_features),
    ):
        if path is not None:
            again += [flag, str(path)]
    if config.devices not in (None, 1):
        again += ["--devices", str(config.devices)]
    return again


def _log_notes(report: dict) -> list[str]:
    """What reading the log merged or left out (:attr:`jaxrec.data.Dataset.report`) and no warning said, counted:
    nothing is dropped in silence (metrics.json's ``data_report`` holds the same counts)."""
    parts = []
    if report.get("blank_lines_skipped"):
        parts.append(f"{report['blank_lines_skipped']} blank line(s) skipped")
    if report.get("duplicates_merged"):
        merged = report["duplicates_merged"]
        if report.get("repeats_as_weights"):
            parts.append(
                f"{merged} duplicate (user, item) row(s) merged away (one interaction a pair; with no weight column, "
                "its number of rows is its weight, a confidence, and a new user's repeated items count alike)"
            )
        else:
            parts.append(f"{merged} duplicate (user, item) row(s) merged away (one interaction a pair, weights summed)")
    if report.get("below_threshold_dropped"):
        parts.append(f"{report['below_threshold_dropped']} rating(s) below the positive threshold left out")
    if report.get("ratings_below_min_dropped"):
        parts.append(f"{report['ratings_below_min_dropped']} rating(s) of users below the minimum count left out")
    gone = [f"{report[f'{role}s_dropped']} {role}(s)" for role in ("user", "item") if report.get(f"{role}s_dropped")]
    if gone:
        parts.append(f"{' and '.join(gone)} left with no row")
    return [f"the log: {'; '.join(parts)}"] if parts else []


def _side_table_notes(report: dict, features: dict | None = None) -> list[str]:
    """How the side tables (``--user-features``, ``--item-features``) met the log: ids with and without a row, the
    table's rows of ids the log does not hold, and (with ``features``, the featurizer's
    :attr:`~jaxrec.data.Featurizer.features_read`) which columns the model reads, and how."""
    notes = []
    for role in ("user", "item"):
        counts = report.get(f"{role}_features")
        if counts:
            columns = f"columns {', '.join(counts['columns'])}"
            if features is not None:
                read = features.get(role, {})
                columns = f"read as features: {', '.join(f'{c} {kind}' for c, kind in read.items()) or 'none'}"
                others = [
                    f"{c} (each {role}'s name)" if c == "title" else c for c in counts["columns"] if c not in read
                ]
                if others:
                    columns += f"; not features: {', '.join(others)}"
            notes.append(
                f"--{role}-features: {counts['with_features']} {role}(s) of the log with a row, "
                f"{counts['without_features']} without (their features unknown); {counts['rows_not_in_log']} row(s) "
                f"of {role}s not in the log; {columns}"
            )
    return notes


def _feature_pairs(text: str | None) -> dict[str, str] | None:
    """``--features age=25,gender=F`` as ``{column: value}`` (values as text, read as the side table's were)."""
    if text is None:
        return None
    pairs = [p for p in text.split(",") if p.strip()]
    if not pairs or any("=" not in p or not p.split("=", 1)[0].strip() for p in pairs):
        raise CLIError(f"--features expects COLUMN=VALUE pairs separated by commas, e.g. age=25,gender=F; got {text!r}")
    features = {}
    for pair in pairs:
        name, value = (x.strip() for x in pair.split("=", 1))
        if name in features:
            raise CLIError(f"--features: {name!r} is given twice")
        features[name] = value
    return features


def _feature_notes(trained, features: dict | None) -> list[str]:
    """What the new user's side features are read as: the model's that were not given, those whose values no
    training user had (both read as unknown)."""
    names = trained.featurizer.user_features_read
    if not names:
        if features:
            raise CLIError("--features: the model was trained without user features")
        return []
    if not features:
        return [
            f"the model reads user features ({', '.join(names)}): none given (--features, --user-features), so the "
            "new user takes the unknown value of each"
        ]
    try:
        _, unknown = trained.featurizer.encode_user_features(features)
    except JaxrecError as e:
        raise CLIError(f"--features: {e}") from None
    notes = [f"feature {name}={features[name]!r}: not a value the model knows, read as unknown" for name in unknown]
    missing = trained.featurizer.user_features_not_given(features)
    if missing:
        notes.append(f"features not given, read as unknown: {', '.join(missing)}")
    return notes


def _ranked_by_notes(trained, args: argparse.Namespace) -> list[str]:
    """Which lists a re-ranking run's command or service gives: re-ranked (the validation users' choice, or
    ``--rerank``) or the meta-learner's own or its hybrid's (their choice, ``--no-rerank``, or a run folder that
    keeps no re-ranker), with the validation figures the choice was made on."""
    rerank = getattr(trained.config.topn, "rerank", None) if trained.config.data.feedback == "implicit" else None
    if not rerank:
        return []
    candidates = trained.config.topn.rerank_candidates
    other = trained.hybrid.name if trained.hybrid is not None else "maml"
    served = trained.reranker
    figures = "" if served is None else _choice_figures(served.validation)
    re_ranked = f"the meta-learner's top {candidates} re-ranked by {rerank}"
    if served is not None and served.lists:
        chosen = "--rerank" if getattr(args, "rerank", False) else f"the validation users' choice: {figures}"
        capped = f"; each at most {candidates} items long" if (getattr(args, "k", None) or 0) > candidates else ""
        return [
            f"these lists are {re_ranked}, as the run's method 'rerank' lists ({chosen}){capped}; --no-rerank: "
            f"{other}'s"
        ]
    if served is not None:
        return [
            f"these lists are {other}'s, not {re_ranked} (the validation users' choice: {figures}); --rerank lists "
            "those"
        ]
    if getattr(args, "no_rerank", False) or getattr(args, "model_alone", False):
        why = "--no-rerank" if getattr(args, "no_rerank", False) else "--model-alone"
    elif (trained.folder.parent / RERANKER_FILE).is_file():
        why = f"the run's {_STALE_RERANKER}"
    else:
        why = "the run folder keeps no re-ranker (a run trained before they were kept: train it again to serve them)"
    return [f"the run also evaluated 'rerank' ({re_ranked}); these lists are {other}'s: {why}"]


def _read_users_as_trained(args: argparse.Namespace):
    """``--users``' rows: by ``--columns``, else by a header's common names, else (a header of none of them) by the
    columns the run's own log was read with (``train --columns``), as a file in the log's layout is."""
    try:
        return read_users(args.users, args.columns, args.sep, encoding=args.encoding)
    except UnnamedColumnsError as unnamed:
        if args.columns is not None:
            raise
        recorded = ((read_metadata(args.checkpoint).get("config") or {}).get("data") or {}).get("columns")
        if not recorded:
            raise
        shown = recorded if isinstance(recorded, str) else ",".join(map(str, recorded))
        why = {
            "no header": "it has no header",
            "keys": "its records' keys are not the common names",
        }.get(unnamed.named_by, "its header has no common names")
        try:
            users = read_users(args.users, recorded, args.sep, encoding=args.encoding)
        except DataError as misfit:  # say why the run's layout does not fit either, not only the common names
            if re.search(r"\bline \d+", str(misfit)):  # the layout fits, a line's value does not: that is the error
                raise DataError(f"{misfit} (the file read by the run's --columns {shown}: {why})") from None
            why = str(misfit).removeprefix(f"{Path(args.users).expanduser()}: ")
            raise DataError(
                f"{unnamed.lacking}, and the run's own --columns {shown} do not fit it ({why}): name the file's "
                "columns with --columns (e.g. --columns user=<name>,item=<name>)"
            ) from None
    _echo(f"note: --users {args.users} read by the run's --columns {shown} ({why})", err=True)
    return users


def _choice_figures(validation: dict) -> str:
    """The validation figures a re-ranking run chose its lists by (its ``reranker.json``'s ``validation``)."""
    other = served_otherwise(validation)
    return (
        f"{validation['users']} validation users' {validation['metric']} {validation['rerank']:.4f} re-ranked "
        f"against {validation[other]:.4f} for {other}"
    )


_STALE_RERANKER = (
    "kept re-ranker was trained for another config of the run (a resumed run stopped before its end: resume it "
    "to its end to keep its own)"
)


def _without_hybrid(trained):
    """``trained`` without its hybrid, for ``--model-alone``'s lists: the adapted meta-learner's own (its re-ranker
    is left unread by :func:`_load_trained`)."""
    if trained.hybrid is None:
        if not getattr(trained.config.topn, "rerank", None):  # nothing to leave out: said, not silently taken
            _echo("note: --model-alone changes nothing here: the run has no hybrid and no re-ranker", err=True)
        return trained
    _echo(f"note: these lists are maml's (--model-alone), not the run's {trained.hybrid.name}", err=True)
    return dataclasses.replace(trained, hybrid=None)


def _with_reranker(args: argparse.Namespace, trained):
    """``trained``, refused for ``--rerank`` when its run keeps no re-ranker."""
    if getattr(args, "rerank", False) and trained.reranker is None:
        if (trained.folder.parent / RERANKER_FILE).is_file():
            raise CLIError(f"--rerank: the run {args.checkpoint}'s {_STALE_RERANKER}")
        what = "--rerank MODEL" if not getattr(trained.config.topn, "rerank", None) else "--rerank MODEL again"
        raise CLIError(f"--rerank: the run {args.checkpoint} keeps no re-ranker (train it with {what})")
    return trained


def _load_trained(args: argparse.Namespace, lists_alone: bool = False):
    """The run folder's model (:func:`~jaxrec.experiment.trained.load_trained`), with ``--new-items``' items added
    to its catalogue (:meth:`~jaxrec.experiment.trained.TrainedModel.with_items`) and what was read noted;
    ``lists_alone``: without its hybrid (``recommend`` and ``serve --model-alone``; ``export --model-alone`` keeps it,
    to name what its arrays leave out)."""
    # --no-rerank, and an export of the model alone, leave the re-ranker's files unread; --rerank lists by it
    rerank = True if getattr(args, "rerank", False) else None
    if getattr(args, "no_rerank", False) or getattr(args, "model_alone", False):
        rerank = False
    table = where = None
    if getattr(args, "new_items", None) is not None:
        where = f"--new-items {args.new_items}"
        table = read_side_table(args.new_items, "item", encoding=args.encoding, flag="--new-items")  # before loading
    # the hybrid left out before the catalogue grows, which fits its partner again over the new items
    trained = _with_reranker(args, load_trained(args.checkpoint, rerank=rerank))
    if getattr(args, "no_rerank", False) and not getattr(trained.config.topn, "rerank", None):
        _echo("note: --no-rerank changes nothing here: the run has no re-ranker", err=True)
    if lists_alone:
        trained = _without_hybrid(trained)
    if table is None:
        return trained
    trained, report = trained.with_items(table, where)
    parts = [f"{report['added']} item(s) added, ranked from their features"]
    if report["already_in_catalogue"]:
        parts.append(f"{report['already_in_catalogue']} already in the catalogue (left as trained)")
    if report["unknown_values"]:
        shown = ", ".join(f"{column} {count}" for column, count in report["unknown_values"].items())
        parts.append(f"values no training item had, read as unknown: {shown}")
    if report["missing_values"]:
        shown = ", ".join(f"{column} {count}" for column, count in report["missing_values"].items())
        parts.append(f"item(s) with no value, read as unknown: {shown}")
    if report["without_features"]:
        parts.append(f"{report['without_features']} item(s) with no feature value at all (scored as any such item)")
    if report["features_not_given"]:
        parts.append(f"feature column(s) not given, read as unknown: {', '.join(report['features_not_given'])}")
    if report["columns_not_read"]:
        parts.append(f"column(s) not the model's features, not read: {', '.join(report['columns_not_read'])}")
    if not report["features_in_params"]:
        parts.append(
            f"the model ({trained.config.model.name}) has no parameters for the item features: it likely reads none, "
            "and then scores every new item alike (train a model that reads them, e.g. --model twotower)"
        )
    if not report["id_dropout"]:
        how = "--new-item-frac and --item-dropout" if trained.config.data.feedback == "implicit" else "--item-dropout"
        parts.append(
            "no item id was dropped in training, so the model never scored an item without its id: new items may "
            f"rank below the known ones, and rank among themselves by their features (train with {how} to learn it)"
        )
    _echo(f"note: {where}: {'; '.join(parts)}", err=True)
    return trained


def _excluded(args: argparse.Namespace, trained) -> np.ndarray:
    """The codes never to recommend: ``--exclude``'s items (its unknown ids noted) and, for a cross-domain run, every
    item outside its target domain (noted)."""
    codes = np.zeros(0, np.int64)
    if args.exclude is not None:
        codes, unknown = read_item_list(args.exclude, trained.item_ids, encoding=args.encoding)
        shown = f" ({', '.join(map(str, unknown[:5]))}{' ...' if len(unknown) > 5 else ''})" if unknown else ""
        _echo(
            f"note: --exclude: {len(codes)} item(s) never recommended; {len(unknown)} id(s) not in the catalogue"
            f"{shown}",
            err=True,
        )
    outside = trained.outside_domain()
    target = ",".join(trained.config.protocol.target_genres)
    if outside is None:
        _echo(
            f"note: a cross-domain run (target genres {target}) whose folder keeps no item genres: every item is "
            "ranked, the source domain's too",
            err=True,
        )
    elif len(outside):
        _echo(
            f"note: a cross-domain run: only its {len(trained.item_ids) - len(outside)} target-domain items (genres "
            f"{target}) are recommended",
            err=True,
        )
        codes = np.union1d(codes, outside).astype(np.int64)
    return codes


def _sizes(flag: str, text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise CLIError(f"{flag} expects comma-separated sizes >= 1, e.g. 1,8,64; got {text!r}")
    return sizes


def _bind(host: str, port: int) -> socket.socket:
    """The service's socket, bound and listening before the slow start-up (an address in use, or not this
    machine's, fails at once) and held through it, so that nothing takes the port meanwhile (a socket bound but not
    listening lets another with ``SO_REUSEADDR`` bind the port too); a connection made during the start-up waits in
    the backlog until the server answers it."""
    if not 0 < port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog
    except OSError as e:
        sock.close()
        raise CLIError(f"--host {host} --port {port}: cannot listen there ({os_reason(e)})") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    """``jaxrec serve``: load a run folder, compile every shape bucket, then answer HTTP until SIGINT / SIGTERM.

    Args:
      args: the parsed arguments.

    Returns:
      The exit status 0 when the server stops by itself; SIGINT / SIGTERM end the process once the requests in
      flight are answered, with the status 130 / 143 (a service manager should count 143 as a normal stop).

    Raises:
      RunError: if the serve extra is missing, a flag is not usable or the address cannot be bound.
    """
    missing = missing_extra()
    if missing:
        raise CLIError(f"jaxrec serve needs {', '.join(missing)}: pip install 'jaxrec[serve]'")
    batch_sizes = _sizes("--batch-sizes", args.batch_sizes)
    support_sizes = _sizes("--support-sizes", args.support_sizes)
    for flag, value, low in (("--max-k", args.max_k, 1), ("--max-body-kb", args.max_body_kb, 1)):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    if not args.batch_wait_ms >= 0:
        raise CLIError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    if not args.body_timeout_s > 0 or args.body_timeout_s == float("inf"):
        raise CLIError(f"--body-timeout-s must be a positive number of seconds, got {args.body_timeout_s}")
    sock = _bind(args.host, args.port)
    with sock:
        return _serve_on(args, sock, batch_sizes, support_sizes)


def _serve_on(args: argparse.Namespace, sock: socket.socket, batch_sizes, support_sizes) -> int:
    """``jaxrec serve`` once its socket is bound: load, compile, then serve on it."""
    trained = _load_trained(args, args.model_alone)
    devices = None if args.devices in (None, "all") else int(args.devices)
    try:
        model = ServingModel(
            trained, batch_sizes, support_sizes, max_k=args.max_k, devices=devices, exclude=_excluded(args, trained)
        )
    except ValueError as e:
        raise CLIError(as_flags(str(e))) from None
    seconds = model.warm_up()
    app = create_app(
        model,
        max_wait=args.batch_wait_ms / 1e3,
        max_body_bytes=args.max_body_kb * 1024,
        body_timeout=args.body_timeout_s,
    )
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    _echo(
        f"{trained.config.meta.algorithm} on {trained.config.model.name}, {model.n_items} items "
        f"({trained.config.data.feedback or 'explicit'}): {len(model.buckets)} shape bucket(s) compiled in "
        f"{seconds:.1f} s on {1 if model.mesh is None else model.mesh.size} device(s)"
    )
    for note in _ranked_by_notes(trained, args):
        _echo(f"note: {note}", err=True)
    _echo(f"serving on {where} (demo page at /, API description at /docs); Ctrl-C stops")
    # the server answers the requests in flight, then hands the signal on (it writes no file to speak of)
    _stopped_after[0] = "the service answered its requests in flight"
    run_server(app, args.host, args.port, sock=sock)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """``jaxrec export``: a top-N run's item side and new-user fold-in as plain arrays
    (:mod:`jaxrec.experiment.export`).

    Args:
      args: the parsed arguments.

    Returns:
      The exit status 0.

    Raises:
      RunError: if the run is not one the arrays describe (:func:`~jaxrec.experiment.export.export_arrays`).
    """
    trained = _load_trained(args)
    arrays = export_arrays(trained, model_alone=args.model_alone)
    path = save_export(arrays, args.out)
    items, width = arrays["item_vectors"].shape
    _echo(
        f"wrote {path}: {items} item vectors of {width - 1} + 1 (the bias), the fold-in's Gram matrix, prior and "
        "ridge; a user's scores: item_vectors @ jaxrec.experiment.export.fold_in(arrays, their item positions)"
    )
    notes = []
    if trained.config.topn.rerank:  # --model-alone leaves it unread; without it, a run that re-ranks is refused
        notes.append(f"the run's re-ranker ({trained.config.topn.rerank}) is not in the arrays")
    if trained.hybrid is not None:
        notes.append(f"the run ranks by {trained.hybrid.name}; these arrays rank by the adapted model alone")
    names = trained.featurizer.user_features_read
    if names:
        notes.append(
            f"the model reads user features ({', '.join(names)}); the arrays' prior is a new user's without them "
            "(the unknown value of each), as recommend without --features ranks"
        )
    for note in notes:
        _echo(f"note: {note}", err=True)
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    """``jaxrec datasets``: list the known datasets and where they are cached.

    Args:
      args: the parsed arguments.

    Returns:
      The exit status 0.
    """
    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_root()
    _echo(f"data folder: {root} (set JAXREC_DATA or --data-dir to change it)")
    for name in DATASETS:
        if name == "ml-latest-small":
            where = "bundled with jaxrec (offline)"
        else:
            folder, _ = locate(name, args.data_dir)
            where = (
                f"cached at {folder}" if folder else f"not downloaded (would go to {root / name}; JAXREC_DOWNLOAD=1)"
            )
        _echo(f"  {name:<16} {where}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# entry point

COMMANDS = {
    "train": cmd_train,
    "choose": cmd_choose,
    "evaluate": cmd_evaluate,
    "recommend": cmd_recommend,
    "serve": cmd_serve,
    "export": cmd_export,
    "datasets": cmd_datasets,
}


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
    # orbax logs a refused write with its traceback before raising it; the command says it in one line
    logging.getLogger("absl").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    jaxrec_logger = logging.getLogger("jaxrec")
    jaxrec_logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not any(getattr(h, "_jaxrec_cli", False) for h in jaxrec_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("jaxrec: %(levelname)s: %(message)s"))
        handler._jaxrec_cli = True  # type: ignore[attr-defined]
        jaxrec_logger.addHandler(handler)
        jaxrec_logger.propagate = False


def _expected_errors() -> tuple[type[BaseException], ...]:
    return (JaxrecError,)


def _host_devices(devices) -> None:
    """``--devices N`` (N > 1, or ``all``: one per core): let a CPU-only host show its cores as XLA devices, so that
    the task axis (a service's batch) is sharded over them as over accelerators (:func:`jaxrec.use_every_core`; GPU
    and TPU backends ignore it). Without the flag a command runs on one device: measured end to end on the 2-core
    reference host, the default configuration trained faster so and served as fast (docs/results.md, "One device or
    one per core").
    It only takes effect before JAX starts its backends; afterwards the mesh reports how many devices there are."""
    if devices is None:
        return
    try:
        count = None if devices == "all" else int(devices)
    except (TypeError, ValueError):
        return  # a bad value: the config check reports it
    if count == 1:
        return
    try:
        use_every_core(count)
    except (RuntimeError, ValueError) as err:  # the backends already started (jaxrec.cli.main called in a process)
        logger.debug("--devices %s: host CPU device count unchanged (%s)", devices, err)


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run the ``jaxrec`` command.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).
      own_process: the command owns its process (the ``jaxrec`` launcher): a signal then ends it at once from the
        handler, which cannot be lost (an exception raised by a handler that runs inside a garbage-collection
        callback is swallowed). Called inside another program (a test, a notebook), a signal raises
        :class:`~jaxrec.experiment.run.Interrupted` and the command returns ``128 + signal`` instead.

    Returns:
      The exit status: 0 ok, 1 error, 2 usage, 128 + signal number when interrupted.
    """
    # from here to the return a signal stops the command at once with one line (there is nothing to save), except in
    # the training loop, which defers the first to the end of its meta-step and saves; the caller's handlers come
    # back at the end
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: signals stay the caller's business
            previous[sig] = signal.signal(sig, exit_at_once if own_process else _raise_interrupted)
    try:
        return _run(argv)
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        _echo(f"jaxrec: interrupted by {name}; {_stopped_after[0]}", err=True)
        return 128 + e.signum
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(sig, handler)


def _import_modules(names: Sequence[str]) -> None:
    """Import the ``--import`` modules, the current folder first on the path as ``python -m`` has it (the
    ``jaxrec`` launcher's own folder is the path's first entry otherwise).

    Raises:
      CLIError: naming the module and why it could not be imported (an error inside it included).
    """
    added = bool(names) and os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as e:
                if e.name is not None and name != e.name and not name.startswith(f"{e.name}."):
                    raise CLIError(f"--import {name}: the module imports what is not installed: {e}") from e
                raise CLIError(f"--import {name}: {e}") from e
            except Exception as e:  # the module ran and failed: say where, in one line
                raise CLIError(f"--import {name}: the module failed: {type(e).__name__}: {e}") from e
    finally:  # a command run inside another program leaves its path as it was
        if added:
            sys.path.remove(os.getcwd())


def _unrecognized(parser: argparse.ArgumentParser, command: str, unknown: Sequence[str]) -> str:
    """argparse's usage error for arguments no option of ``command`` takes, saying, for a command that loads a run
    folder, which of them are training settings (``--feedback``, ``--epochs``: the run fixed them) and which are
    another such command's options (``recommend --bootstrap``: ``evaluate``'s)."""
    message = f"unrecognized arguments: {' '.join(unknown)}"
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if command not in _RUN_FOLDER_COMMANDS:
        return message
    settings = argparse.ArgumentParser(add_help=False)
    add_flags(settings)
    fixed = {
        name for name in settings._option_string_actions if name not in commands["evaluate"]._option_string_actions
    }
    fixed |= {"--config", "--method"}
    hints = {}
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name in hints:
            continue
        prefixed = [flag for flag in fixed if flag.startswith(name)]  # argparse takes a flag's unique prefix
        if name in fixed or len(prefixed) == 1:
            flag = name if name in fixed else prefixed[0]
            hints[name] = f"{flag}: a training setting, fixed by the run that `jaxrec train` made"
            continue
        takers = [
            f"`jaxrec {c}`" for c in ("train", *_RUN_FOLDER_COMMANDS) if name in commands[c]._option_string_actions
        ]
        if takers:
            hints[name] = f"{name}: an option of {' and '.join(takers)}"
    if not hints:
        return message
    return f"{message} ({'; '.join(hints.values())})"


#: the commands that load a run folder (--checkpoint): a training setting given to one is the run's already
_RUN_FOLDER_COMMANDS = ("evaluate", "recommend", "serve", "export")


#: what the line of a signal says of the command it stopped (one command a process; ``_run`` sets it)
_stopped_after = ["every file written is complete"]


def _raise_interrupted(signum: int, frame: Any) -> None:
    """In a caller's process (a test, a notebook), a signal stops the command with :class:`Interrupted`."""
    raise Interrupted(signum)


def exit_at_once(signum: int, frame: Any) -> None:
    """End the process now with one line on stderr and the status ``128 + signum``.

    Every file the command writes is complete or not written (atomic renames), so leaving without the interpreter's
    teardown loses nothing, and avoids the threads of XLA and orbax that can crash a teardown.
    """
    name = signal.Signals(signum).name
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os.write(2, f"jaxrec: interrupted by {name}; {_stopped_after[0]}\n".encode())
    os._exit(128 + signum)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            parser.error(_unrecognized(parser, args.command, unknown))
    except SystemExit as e:  # --help or a usage error: argparse already printed
        return int(e.code or 0)
    debug = args.debug or os.environ.get("JAXREC_DEBUG") == "1"
    _stopped_after[0] = "every file written is complete"
    _configure_logging(debug)
    _host_devices(getattr(args, "devices", None))
    # the command owns its process: reuse freed host memory so that XLA CPU's per-step buffers are not
    # page-faulted in again every step (jaxrec.scale.host_memory)
    keep_freed_host_memory()
    try:
        _import_modules(getattr(args, "imports", []))
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader of the output left (`jaxrec recommend ... | head -3`): nothing to say
        with contextlib.suppress(OSError):  # nor anything to flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as e:  # the OS refused something the run needed: a full disk, a missing or read-only place
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _echo(f"jaxrec: error: {os_reason(e)}{where}", err=True)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if debug:
            raise
        expected = isinstance(e, _expected_errors())
        kind = "error" if expected else f"unexpected error ({type(e).__name__}; rerun with --debug for details)"
        _echo(f"jaxrec: {kind}: {e}", err=True)
        return EXIT_ERROR
