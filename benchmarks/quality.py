"""Cold-start quality of the meta-learners against the baselines, every scenario, with bootstrap intervals.

    python benchmarks/quality.py                                   # ml-latest-small (bundled), splits 0 1 2
    python benchmarks/quality.py --dataset ml-100k --data-dir ../shared/data
    python benchmarks/quality.py --methods maml --epochs 5 --seeds 0   # quicker
    python benchmarks/quality.py --methods default groups3 item_dropout --validation --set '{"val_frac": 0.25}'

Writes ``benchmarks/results/quality_<dataset>.json`` (the metrics documents) and ``.md`` (tables). The default
configuration is ``ExperimentConfig()``: MeLU with an item bias, meta-training started at the classical bias model,
Meta-SGD whose inner step is one Newton step on the output layer (:mod:`jaxrec.core.newton`: the exact ridge
fold-in of the user towards the meta-learned layer, the prior variances meta-learned), item-id dropout 0.25. The
other configurations change only what names them, each a file of config fields in ``benchmarks/configs/``
(``jaxrec train --config benchmarks/configs/<name>.json`` runs the same configuration):

* run by default: ``default``; ``newton_maml``: the default with one shared prior variance (MAML instead of
  Meta-SGD); ``sgd_head``: the previous default's inner loop (Meta-SGD, 5 gradient steps on every decision layer,
  no item dropout) and, on that inner loop, ``maml``: second-order MAML with one inner rate (MeLU's local update of
  the decision layers), ``maml_all``: every parameter adapts, ``fomaml``: first-order MAML, ``reptile``;
* variants tried on validation users, on the gradient-step inner loop: ``pretrained``: an older default (MeLU
  without item bias, meta-training from the supervised model with the fine-tuning rate, 30 epochs);
  ``pretrained_item_bias``: the same with the additive item bias; ``maml_old``: MAML with an untuned inner rate 0.1
  and meta_lr 1e-4; ``groups3``: task grouping with three initialisations (:mod:`jaxrec.contrib.grouping`);
  ``item_dropout``: a quarter of the training rows' item ids hidden (DropoutNet, :mod:`jaxrec.data.augment`; the
  supervised baseline is trained with it too); ``no_item_ids``: MeLU's network over features only (the item
  identity only in the additive item bias); ``epochs120``: twice the meta-training; and on the Newton inner step
  (without item dropout unless named): ``newton_output``, ``newton_output_maml`` (one prior variance),
  ``newton_wide`` (hidden layers of 64), ``newton_epochs120``, ``newton_rate_lr`` (rate_lr 3e-3),
  ``newton_item_dropout`` (the default); ``mixed`` (``inner_solver="mixed"``: 5 inner steps, each solving the
  output layer by a Newton step and taking a gradient step on the other decision layers; with item dropout) and
  ``mixed_no_dropout``; on the default: ``projection`` (MeLU with a linear map before the output layer, so that
  the Newton step has a meta-learned full-covariance prior), ``projection_pretrained`` and ``newton_pretrained``
  (meta-training from the supervised model), ``task_dropout`` (a quarter of the meta-train
  tasks with every item id hidden, the shape of a new-item task), ``item_dropout_half`` (half the rows' item ids),
  ``user_ids`` (MeLU's network also over a user id embedding). With ``--set '{"val_item_frac": 0.2}'`` the
  validation also scores ``validation_new_item``: the newest fifth of the meta-train items held out of training.

TaNP variants tried on validation users: ``tanp_lr1e-3_epochs100`` and ``tanp_item_ids_lr1e-3_epochs100`` (the
item id as a field). The cross-domain comparison (``--set '{"scheme":
"cross-domain", "target_genres": ["Drama"]}'``) adds ``cross_domain_target`` (the default trained on the target
domain alone), ``mf`` and ``mf_target``.

Item cold start (each new item a task, adapted on a few of its ratings by existing users; scenario ``new_item``
only): ``--methods lwa nlba lwa_lr1e-3_epochs100 nlba_lr1e-3_epochs100 item_tasks``, LWA and NLBA as published
and tuned (Adam 1e-3, 100 epochs, chosen on ml-100k's validation items), and ``item_tasks``, the default on item
tasks (the output layer folded in per item by the Newton step, over user and item ids). Item-task
configurations pair only with each other, never with user-task ones.

The methods of :mod:`jaxrec.methods` run by name too (``--methods tanp melu-1 melu-5``: TaNP and MeLU as
published). Every configuration named faces, on the same users, every other one's meta method (rows
``meta[<name>]``) and fine-tuning (``finetune[<name>]``), so one run compares the methods pairwise.

In every table the meta method's row is named ``maml`` whatever the algorithm. Several split seeds are pooled
user-wise; the bootstrap draws users (a user new in several splits is drawn with all their rows). Baselines are fitted
once per model, item dropout, adapted set and inner loop, and shared by every method with those. ``--validation``
scores on the validation users (meta-train users held out of all training; ``--set '{"val_frac": 0.25}'`` for a larger
slice) instead of the test scenarios: the table to select a configuration on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from common import library_versions

from jaxrec.evaluation.compare import compare_stats, concat_stats
from jaxrec.experiment import Experiment, ExperimentConfig
from jaxrec.methods import METHODS, recipe

CONFIGS = Path(__file__).resolve().parent / "configs"
# every configuration is a file of config fields beside the default's (empty: ExperimentConfig() itself)
VARIANTS = {path.stem: json.loads(path.read_text()) for path in sorted(CONFIGS.glob("*.json"))}
VARIANTS.update({name: recipe(name) for name in METHODS})  # the literature's methods (jaxrec.methods) by name
TEST_METHODS = ("default", "sgd_head", "newton_maml", "maml", "maml_all", "fomaml", "reptile")
RESULTS = Path(__file__).resolve().parent / "results"


def run(args) -> dict:
    out = {"dataset": args.dataset, "seeds": list(args.seeds), "methods": {}, "runs": {}}
    pooled_stats: dict = {}  # method -> scenario -> compared method -> [per-user stats of each seed]
    keys: dict = {}  # method -> the key of the baselines it used
    domains: dict = {}  # method -> the domain it trains on (cross-domain): validation users differ between domains
    sides: dict = {}  # method -> what its tasks are ("user" or "item"): only tasks of one kind pair
    for seed in args.seeds:
        base = ExperimentConfig.make(dataset=args.dataset, data_dir=args.data_dir, seed=seed, **json.loads(args.set))
        if args.epochs is not None:
            base = base.override(epochs=args.epochs)
        out.setdefault("config", base.to_dict())
        run_out = out["runs"][str(seed)] = {"methods": {}}
        fitted: dict = {}  # baselines by model and item dropout: a variant that changes either gets its own
        for name in args.methods:
            config = base.override(**VARIANTS[name])
            experiment = Experiment(config)
            config = experiment.config  # "auto" inner-loop settings made concrete
            # what the baselines depend on: the model and its training data, and (fine-tuning's rate is tuned with
            # the meta method's inner loop) the adapted set and the inner loop
            key = json.dumps(
                [
                    config.protocol.train_domain,
                    config.model.name,
                    config.model.kwargs,
                    config.meta.item_dropout,
                    config.meta.adapt,
                    config.meta.inner_solver,
                    config.meta.inner_steps,
                ],
                sort_keys=True,
            )
            if key not in fitted:
                start = time.perf_counter()
                fitted[key] = experiment.baselines()
                if len(fitted) == 1:
                    run_out["baseline_seconds"] = time.perf_counter() - start
                    run_out["finetune_lr"] = fitted[key].finetune_lr
                    run_out["finetune_validation"] = {str(k): v for k, v in fitted[key].finetune_validation.items()}
            experiment._baselines = fitted[key]
            start = time.perf_counter()
            state = experiment.train()
            seconds = time.perf_counter() - start
            if args.validation:
                results, stats = validation_scores(experiment, state.params)
            else:
                results, stats = experiment.evaluate(state.params, return_stats=True)
            keys[name] = key
            domains[name] = config.protocol.train_domain
            sides[name] = config.protocol.tasks_by
            run_out["methods"][name] = {
                "overrides": VARIANTS[name],
                "finetune_lr": fitted[key].finetune_lr,
                "train_seconds": seconds,
                "steps": int(state.step),
                "scenarios": results,
            }
            for scenario, per_method in stats.items():
                target = pooled_stats.setdefault(name, {}).setdefault(scenario, {})
                for method, s in per_method.items():
                    target.setdefault(method, []).append(s)
            print(f"seed {seed} {name}: {int(state.step)} steps in {seconds:.0f}s", flush=True)
            for scenario, methods in results.items():
                print(f"  {scenario}: " + ", ".join(f"{m}={r['mae']:.4f}" for m, r in methods.items()), flush=True)
    first = out["runs"][str(args.seeds[0])]
    out["finetune_lr"] = {seed: r["finetune_lr"] for seed, r in out["runs"].items()}
    out["baseline_seconds"] = first["baseline_seconds"]
    for name in args.methods:
        per_seed = [out["runs"][str(seed)]["methods"][name] for seed in args.seeds]
        scenarios = {}
        for scenario, per_method in pooled_stats[name].items():
            if len(per_method["maml"]) != len(args.seeds):
                continue  # a scenario that some split lacks is not pooled
            stats = {method: concat_stats(parts) for method, parts in per_method.items()}
            # every configuration also faces every other one's meta method and fine-tuning (another inner loop
            # or model: e.g. 5 gradient steps on the whole head), on the same users: the strongest fine-tuning
            # of the run, not only the one that shares its inner loop
            seen = {keys[name]}
            for other in [m for m in args.methods if m != name]:
                if sides[other] != sides[name]:
                    continue  # item tasks and user tasks are different units: nothing to pair
                if args.validation and domains[other] != domains[name]:
                    print(f"no paired rows of {other} on validation: it trains on another domain, whose "
                          "validation users are not these", flush=True)  # fmt: skip
                    continue
                parts = pooled_stats[other].get(scenario, {}).get("finetune")
                if keys[other] not in seen and parts and len(parts) == len(args.seeds):
                    seen.add(keys[other])
                    stats[f"finetune[{other}]"] = concat_stats(parts)
                # and every other configuration's meta method itself: the methods compared pairwise
                parts = pooled_stats[other].get(scenario, {}).get("maml")
                if parts and len(parts) == len(args.seeds):
                    stats[f"meta[{other}]"] = concat_stats(parts)
            scenarios[scenario] = compare_stats(
                stats, reference="maml", resamples=base.evaluation.bootstrap, seed=0, implicit=base.data.implicit
            )
        out["methods"][name] = {
            "overrides": VARIANTS[name],
            "finetune_lr": [m["finetune_lr"] for m in per_seed],
            "train_seconds": float(np.mean([m["train_seconds"] for m in per_seed])),
            "steps": per_seed[0]["steps"],
            "tasks_by": sides[name],
            "scenarios": scenarios,
        }
    return out


def validation_scores(experiment: Experiment, params) -> tuple[dict, dict]:
    """``({"validation": results}, {"validation": stats})``: the meta method and the baselines on the validation
    users (meta-train users held out of all training), the only place a configuration may be selected on; with
    ``val_item_frac`` also ``"validation_new_item"``: the remaining users' ratings of the held-out items."""
    results, stats = {}, {}
    results["validation"], stats["validation"] = experiment.validate(params, return_stats=True)
    # with val_item_frac: the held-out items (item tasks validate on held-out items already)
    if experiment.val_item_tasks is not None and experiment.config.protocol.tasks_by == "user":
        scored = experiment.validate(params, items=True, return_stats=True)
        results["validation_new_item"], stats["validation_new_item"] = scored
    return results, stats


def significant(value, digits: int = 6):
    """``value`` (any JSON-able structure) with every float rounded to ``digits`` significant digits, and a
    non-finite one (a diverged validation figure) as None: strict JSON has no Infinity or NaN."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: significant(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [significant(v, digits) for v in value]
    return value


def fmt_ci(r: dict, metric: str) -> str:
    if r.get(metric) is None:  # no user defines it (AUC without a user of both classes)
        return "-"
    lo, hi = r.get("ci95", {}).get(metric, (float("nan"), float("nan")))
    return f"{r[metric]:.4f} [{lo:.3f}, {hi:.3f}]"


def markdown(out: dict) -> str:
    lines = [
        f"# Cold-start quality on {out['dataset']}",
        "",
        "Command: `python benchmarks/quality.py " + out.get("command", "") + "`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in out.get("versions", {}).items()),
        "",
        "MAE/RMSE pooled over query ratings (MeLU protocol: users with 13..100 ratings, 10 query ratings, the "
        "rest support); nDCG@k mean over users; [95% bootstrap interval over users]. `paired d` = MAE(meta) - "
        "MAE(baseline) with its paired-bootstrap 95% interval (negative favours the meta method).",
        "",
        f"Splits (seeds of the cold-start split, the validation slice and training): {out['seeds']}. With several, "
        "every table pools the (split, user) pairs of all splits, and the intervals resample users: a user new in "
        "several splits is drawn with all their rows.",
        "",
        "Rows `finetune[<configuration>]` in a configuration's tables are the fine-tuning baseline of that "
        "other configuration (another inner loop or model), on the same users: each configuration faces every "
        "fine-tuning of the run. Rows `meta[<configuration>]` are that configuration's meta method, on the same "
        "users: the configurations compared pairwise.",
        "",
        f"Fine-tuning learning rate per split of the first configuration (tuned on validation meta-train users): "
        f"{out.get('finetune_lr')}; a "
        "meta-learner started from the supervised model starts its inner rate there too (`tune_inner_lr`), one "
        "started at the bias model (the default) uses `inner_lr`.",
        "",
    ]
    lines += ["| configuration | meta-training s per split | steps |", "|---|---|---|"]
    lines += [f"| {name} | {m['train_seconds']:.1f} | {m['steps']} |" for name, m in out["methods"].items()]
    lines.append("")
    for name, m in out["methods"].items():
        lines += [
            f"## {name} ({m['steps']} steps, {m['train_seconds']:.0f}s training per split; fine-tuning rate or prior "
            f"variance per split {m.get('finetune_lr')})",
            "",
        ]
        for scenario, methods in m["scenarios"].items():
            lines += [
                f"### {scenario} ({methods['maml']['users']} {m.get('tasks_by', 'user')}s)",
                "",
                "| method | MAE | RMSE | nDCG@1 | nDCG@3 | nDCG@10 | paired d MAE |",
                "|---|---|---|---|---|---|---|",
            ]
            for method, r in methods.items():
                paired = r.get("paired", {}).get("mae")
                p = f"{paired['diff']:+.4f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]" if paired else ""
                lines.append(
                    f"| {method} | {fmt_ci(r, 'mae')} | {fmt_ci(r, 'rmse')} | {r['ndcg@1']:.4f} | "
                    f"{r['ndcg@3']:.4f} | {r['ndcg@10']:.4f} | {p} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(TEST_METHODS),
        choices=list(VARIANTS),
        help=f"configurations to run (default: the meta methods {' '.join(TEST_METHODS)}); the others are the "
        "variants tried on validation users",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds, pooled user-wise (default 0 1 2)"
    )
    parser.add_argument("--set", default="{}", help="JSON of ExperimentConfig overrides")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="score on the validation users (and with val_item_frac the validation items) only, for selecting a "
        "configuration, not on the test scenarios",
    )
    parser.add_argument("--out", default=None, help="file stem (default results/quality_<dataset>)")
    args = parser.parse_args()
    if json.loads(args.set).get("val_item_frac") and not args.validation:
        parser.error("val_item_frac holds items out of training: use it with --validation, not for test figures")
    logging.basicConfig(level=logging.WARNING)
    out = run(args)
    import sys

    out["command"] = " ".join(sys.argv[1:])
    out["versions"] = library_versions()
    stem = Path(args.out) if args.out else RESULTS / f"quality_{args.dataset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    # compact, to 6 significant digits (the figures' precision is 4 decimals): a summary, not a dump
    stem.with_suffix(".json").write_text(json.dumps(significant(out), separators=(",", ":")) + "\n")
    stem.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
