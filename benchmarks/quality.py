"""Cold-start quality of the meta-learners against the baselines, every scenario, with bootstrap intervals.

    python benchmarks/quality.py                                   # ml-latest-small (bundled), all methods
    python benchmarks/quality.py --dataset ml-100k --data-dir ../shared/data
    python benchmarks/quality.py --methods maml --epochs 5         # quicker
    python benchmarks/quality.py --methods default --seeds 0 1 2  # three random splits, pooled user-wise

Writes ``benchmarks/results/quality_<dataset>.json`` (the metrics documents) and ``.md`` (tables). The default
configuration is ``ExperimentConfig()`` (Meta-SGD on the head, inner rates starting at the validation-tuned
fine-tuning rate); the other meta methods change only what names them, everything else (tuned inner rate, meta_lr,
epochs) stays at the default:

* ``default``: ``ExperimentConfig()``; ``maml``: second-order MAML with one (tuned) inner rate, MeLU's local update
  of the decision layers (``adapt="head"``); ``maml_all``: every parameter adapts; ``fomaml``: first-order MAML;
  ``reptile``; ``maml_old``: the previous default (MAML, inner rate 0.1 untuned, meta_lr 1e-4).

In every table the meta method's row is named ``maml`` whatever the algorithm.
Baselines are fitted once (on the default configuration) and shared by every method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from jaxrec.evaluate import compare_stats, concat_stats
from jaxrec.experiment import Experiment, ExperimentConfig

VARIANTS = {
    "default": {},
    "maml": {"algorithm": "maml"},
    "maml_all": {"algorithm": "maml", "adapt": "all"},
    "fomaml": {"algorithm": "maml", "order": "first"},
    "reptile": {"algorithm": "reptile"},
    "maml_old": {"algorithm": "maml", "tune_inner_lr": False, "inner_lr": 0.1, "meta_lr": 1e-4},
}
RESULTS = Path(__file__).resolve().parent / "results"


def run(args) -> dict:
    out = {"dataset": args.dataset, "seeds": list(args.seeds), "methods": {}, "runs": {}}
    pooled_stats: dict = {}  # method -> scenario -> compared method -> [per-user stats of each seed]
    for seed in args.seeds:
        base = ExperimentConfig(dataset=args.dataset, data_dir=args.data_dir, seed=seed, **json.loads(args.set))
        if args.epochs is not None:
            base = dataclasses.replace(base, epochs=args.epochs)
        out.setdefault("config", base.to_dict())
        run_out = out["runs"][str(seed)] = {"methods": {}}
        shared = None
        for name in args.methods:
            config = dataclasses.replace(base, **VARIANTS[name])
            experiment = Experiment(config)
            if shared is None:
                start = time.perf_counter()
                shared = experiment.baselines()
                run_out["baseline_seconds"] = time.perf_counter() - start
                run_out["finetune_lr"] = shared.finetune_lr
                run_out["finetune_validation"] = {str(k): v for k, v in shared.finetune_validation.items()}
            experiment._baselines = shared
            start = time.perf_counter()
            state = experiment.train()
            seconds = time.perf_counter() - start
            results, stats = experiment.evaluate(state.params, return_stats=True)
            run_out["methods"][name] = {
                "overrides": VARIANTS[name],
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
            scenarios[scenario] = compare_stats(
                stats, reference="maml", resamples=base.bootstrap, seed=0, implicit=base.implicit
            )
        out["methods"][name] = {
            "overrides": VARIANTS[name],
            "train_seconds": float(np.mean([m["train_seconds"] for m in per_seed])),
            "steps": per_seed[0]["steps"],
            "scenarios": scenarios,
        }
    return out


def fmt_ci(r: dict, metric: str) -> str:
    lo, hi = r.get("ci95", {}).get(metric, (float("nan"), float("nan")))
    return f"{r[metric]:.4f} [{lo:.3f}, {hi:.3f}]"


def markdown(out: dict) -> str:
    lines = [
        f"# Cold-start quality on {out['dataset']}",
        "",
        "Command: `python benchmarks/quality.py " + out.get("command", "") + "`",
        "",
        "MAE/RMSE pooled over query ratings (MeLU protocol: users with 13..100 ratings, 10 query ratings, the "
        "rest support); nDCG@k mean over users; [95% bootstrap interval over users]. `paired d` = MAE(meta) - "
        "MAE(baseline) with its paired-bootstrap 95% interval (negative favours the meta method).",
        "",
        f"Splits (seeds of the cold-start split, the validation slice and training): {out['seeds']}. With several, "
        "every table pools the (split, user) pairs of all splits, and the paired intervals resample those pairs.",
        "",
        f"Fine-tuning learning rate per split (tuned on validation meta-train users): {out.get('finetune_lr')}; the "
        "default meta-learner's inner rate starts there too (`tune_inner_lr`).",
        "",
    ]
    for name, m in out["methods"].items():
        lines += [f"## {name} ({m['steps']} steps, {m['train_seconds']:.0f}s training per split)", ""]
        for scenario, methods in m["scenarios"].items():
            lines += [
                f"### {scenario} ({methods['maml']['users']} users)",
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
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="split seeds; several are pooled user-wise (default 0)"
    )
    parser.add_argument("--set", default="{}", help="JSON of ExperimentConfig overrides")
    parser.add_argument("--out", default=None, help="file stem (default results/quality_<dataset>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = run(args)
    import sys

    out["command"] = " ".join(sys.argv[1:])
    stem = Path(args.out) if args.out else RESULTS / f"quality_{args.dataset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
