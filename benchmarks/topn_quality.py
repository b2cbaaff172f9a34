"""Top-N quality from implicit feedback: the meta-learner against the retrieval baselines, new users, the whole
catalogue, paired intervals over users.

    python benchmarks/topn_quality.py --dataset ml-100k --data-dir ../shared/data --variants twotower twotower_pool
    python benchmarks/topn_quality.py --variants twotower_pool --test        # test figures of the chosen variant
    python benchmarks/topn_quality.py --variants twotower_pool --seeds 0     # one split (default: 0 1 2 pooled)
    python benchmarks/topn_quality.py --methods melu-5 --test --out ...      # a jaxrec.methods recipe as a ranker
    python benchmarks/topn_quality.py --variants twotower_als_exact --test --set '{"hybrid": "itemknn"}' \
        --reference maml+itemknn                                            # hybrids, paired with maml+itemknn
    python benchmarks/topn_quality.py --variants twotower_als_exact --test --train-seeds 0 1 2
                                            # the meta-learner trained 3 times per split, its figures averaged
    python benchmarks/topn_quality.py --methods twotower-als --no-baselines --set '{"data": "clicks.csv",
        "columns": "user,item,weight,timestamp", "positive_threshold": null, "als_confidence": 1}'
                                            # a choice made on the validation users of one's own log

Each variant is a file of config fields in ``benchmarks/configs/topn/`` (``jaxrec train --config
benchmarks/configs/topn/<name>.json`` runs the same configuration). Without ``--test`` every variant is scored on
the validation users only (held out of all training; the baselines' hyper-parameters and the fine-tuning rate
are chosen there too): the table to choose a variant on. With ``--test`` the new-user scenario is scored as well.
Writes ``benchmarks/results/topn_<dataset or log>[_validation].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from common import library_versions

from jaxrec.evaluation.compare import compare_stats, concat_stats
from jaxrec.experiment import ExperimentConfig
from jaxrec.experiment.topn import TopNExperiment
from jaxrec.methods import METHODS, recipe

CONFIGS = Path(__file__).resolve().parent / "configs" / "topn"
VARIANTS = {path.stem: path for path in sorted(CONFIGS.glob("*.json"))}
#: what makes a rated recipe of jaxrec.methods a top-N run (the variants' own choice of interactions)
IMPLICIT = {"feedback": "implicit", "positive_threshold": 4.0}
METRICS = ("recall@20", "ndcg@20", "hr@10", "mrr@20", "recall@50", "coverage@20", "pop@20")


def table(title: str, summaries: dict, references: tuple = ("maml",)) -> str:
    """A markdown table of one evaluation, the paired Recall@20 difference to each of ``references`` beside each
    other method."""
    header = "".join(f" {ref} - method, Recall@20 [95% CI] |" for ref in references)
    lines = [f"### {title}", "", "| method | users | " + " | ".join(METRICS) + " |" + header]
    lines.append("|" + "---|" * (len(METRICS) + 2 + len(references)))
    for name, s in summaries.items():
        cells = [f"{s[m]:.4f}" if m in s else "-" for m in METRICS]
        diffs = []
        for ref in references:
            paired = s.get("paired_to", {}).get(ref, {}).get("recall@20")
            diffs.append(
                f"{paired['diff']:+.4f} [{paired['ci95'][0]:+.4f}, {paired['ci95'][1]:+.4f}]" if paired else ""
            )
        lines.append(f"| {name} | {s['users']} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    return "\n".join(lines) + "\n"


def recall_at_20(summaries: dict) -> dict:
    """One split's ``{method: summary}`` as its run record keeps it, ``{method: Recall@20}``: the pooled summaries
    beside it hold every metric and interval, and a record per split of all of them made result files of megabytes."""
    return {method: summary["recall@20"] for method, summary in summaries.items()}


def average_training_runs(parts: dict, offsets: list, fields: dict, args, seed: int, log: dict) -> dict:
    """``parts`` (``{part: (summaries, per-user statistics)}`` of the first training run) with the meta method's
    per-user statistics averaged over that run and one more per offset (``train_seed = seed + 1000 offset``): each
    user's expected figure over training runs, so that the paired intervals compare methods and not one draw of
    the meta-learner's training. The baselines are deterministic given the split: fitted once. Each run's
    validation Recall@20 is kept in ``log``."""
    runs = {name: {m: [s] for m, s in per_method.items()} for name, (_, per_method) in parts.items()}
    for offset in offsets:
        config = ExperimentConfig.make(
            **fields, dataset=args.dataset, data_dir=args.data_dir, seed=seed, train_seed=seed + 1000 * offset
        )
        experiment = TopNExperiment(config)
        params = experiment.train().params
        summaries, stats = experiment.validate(params, baselines=False, return_stats=True)
        log[str(offset)] = recall_at_20(summaries)
        found = {"validation": stats}
        if experiment.val_new_item_tasks is not None:
            found["validation_new_item"] = experiment.validate(
                params, baselines=False, return_stats=True, new_items=True
            )[1]
        if args.test:
            _, detail = experiment.evaluate(params, baselines=False)
            found.update({scenario: per_method for scenario, (per_method, *_) in detail.items()})
        for name, per_method in found.items():
            for method, s in per_method.items():
                runs[name][method].append(s)
    out = {}
    for name, (summaries, per_method) in parts.items():
        averaged = dict(per_method)
        for method, each in runs[name].items():
            if len(each) > 1:  # trained again: the mean over the runs, user by user
                averaged[method] = {k: np.mean([np.asarray(s[k]) for s in each], axis=0) for k in each[0]}
        out[name] = (summaries, averaged)
    return out


def pool(stats: dict, summaries: dict, references: tuple = ("maml",)) -> dict:
    """Summaries of one part over every split: the per-user statistics concatenated, the intervals resampling users
    (a user new in several splits drawn with all their rows); coverage, a property of a split's lists, averaged over
    the splits.

    Args:
      stats: ``{method: [per-user statistics of each split]}``.
      summaries: ``{method: [summary of each split]}``.
      references: the methods the others are paired with: ``"paired"`` holds the difference to the first,
        ``"paired_to"`` to each.
    """
    pooled = {m: concat_stats(parts) for m, parts in stats.items()}
    out = None
    for reference in references:
        if reference not in stats:  # warned, not raised: the run's figures are still written
            logging.warning(
                "--reference %r is not among the methods run (%s): no paired column", reference, ", ".join(stats)
            )
        compared = compare_stats(pooled, reference=reference, resamples=1000, implicit=True)
        out = compared if out is None else out
        for method, summary in compared.items():
            if "paired" in summary:
                out[method].setdefault("paired_to", {})[reference] = summary["paired"]
    for method, summary in out.items():
        for key in summaries[method][0]:
            if key.startswith("coverage@"):
                summary[key] = float(np.mean([split[key] for split in summaries[method]]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir")
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[],
        choices=sorted(METHODS),
        help="jaxrec.methods recipes run as rankers on the same implicit feedback (a recipe that cannot rank is "
        "refused by its config check, and reported so)",
    )
    parser.add_argument("--test", action="store_true", help="also score the test scenario (new users)")
    parser.add_argument("--no-baselines", action="store_true", help="score maml only")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds, pooled user-wise (default 0 1 2)"
    )
    parser.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training runs of the meta-learner per split: offset t trains with train_seed = split seed + 1000 t "
        "(0: the split's own seed, as without this flag); the meta method's per-user figures (and its hybrid's) "
        "are averaged over them, the baselines fitted once",
    )
    parser.add_argument("--set", default="{}", help="config fields over every variant's, as JSON: '{\"epochs\": 1}'")
    parser.add_argument(
        "--reference",
        nargs="+",
        default=["maml"],
        help="the methods the paired intervals compare with (e.g. maml maml+itemknn; the first is 'paired')",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--stem", help="file name without suffix (default topn_<dataset>[_methods][_validation])")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = json.loads(args.set)
    source = overrides.get("data") or args.dataset  # a log of one's own, given as --set '{"data": FILE, ...}'
    threshold = overrides.get("positive_threshold", IMPLICIT["positive_threshold"])
    liked = "every row is an interaction" if threshold is None else f"ratings >= {threshold:g} are interactions"
    results: dict = {"dataset": source, "seeds": list(args.seeds), "variants": {}}
    markdown = [
        f"# Top-N on {source} (implicit: {liked})\n",
        f"Split seeds {list(args.seeds)}, pooled user-wise: the bootstrap draws users, a user new in several splits "
        "with all their rows.\n",
    ]
    variants = args.variants if args.variants is not None else ([] if args.methods else sorted(VARIANTS))
    for name in variants + args.methods:
        base = json.loads(VARIANTS[name].read_text()) if name in VARIANTS else {**recipe(name), **IMPLICIT}
        fields = {**base, **overrides}
        runs: dict = {}
        # part ("validation" or a scenario) -> method -> [per-user statistics, or the summary, of each split]
        stats: dict = {}
        summaries: dict = {}
        for seed in args.seeds:
            began = time.perf_counter()
            try:
                config = ExperimentConfig.make(**fields, dataset=args.dataset, data_dir=args.data_dir, seed=seed)
                experiment = TopNExperiment(config)
            except ValueError as refusal:  # a recipe that cannot rank implicit feedback says why
                if name in VARIANTS:
                    raise
                runs["refused"] = str(refusal)
                break
            state = experiment.train()
            record = {"config": experiment.config.to_dict(), "split": experiment.split.stats}
            record["train_seconds"] = time.perf_counter() - began
            record["validation"], part = experiment.validate(
                state.params, baselines=not args.no_baselines, return_stats=True
            )
            parts = {"validation": (record["validation"], part)}
            if experiment.val_new_item_tasks is not None:  # the choices about new items are made here
                new_item_summaries, new_item_stats = experiment.validate(
                    state.params, baselines=not args.no_baselines, return_stats=True, new_items=True
                )
                parts["validation_new_item"] = (new_item_summaries, new_item_stats)
                record["validation_new_item"] = recall_at_20(new_item_summaries)
            if args.test:
                record["scenarios"], detail = experiment.evaluate(state.params)
                parts.update({sc: (record["scenarios"][sc], per_method) for sc, (per_method, *_) in detail.items()})
            extra = [t for t in args.train_seeds if t != 0]
            if extra:
                record["train_seeds"] = {"0": recall_at_20(record["validation"])}
                parts = average_training_runs(parts, extra, fields, args, seed, record["train_seeds"])
            for part_name, (part_summaries, per_method) in parts.items():
                for method, s in per_method.items():
                    stats.setdefault(part_name, {}).setdefault(method, []).append(s)
                    summaries.setdefault(part_name, {}).setdefault(method, []).append(part_summaries[method])
            record["validation"] = recall_at_20(record["validation"])
            if args.test:
                record["scenarios"] = {sc: recall_at_20(per_method) for sc, per_method in record["scenarios"].items()}
            record["tuned"] = experiment.tuned
            record["seconds"] = time.perf_counter() - began
            runs[str(seed)] = record
            print(json.dumps({name: {seed: record["validation"]}}), flush=True)
        if "refused" in runs:
            results["variants"][name] = {"refused": runs["refused"]}
            markdown.append(f"### {name}: refused\n\n{runs['refused']}\n")
            continue
        pooled = {part_name: pool(stats[part_name], summaries[part_name], tuple(args.reference)) for part_name in stats}
        validation = pooled.pop("validation")
        validation_new_item = pooled.pop("validation_new_item", None)
        results["variants"][name] = {"validation": validation, "scenarios": pooled, "runs": runs}
        markdown.append(table(f"{name}: validation users", validation, tuple(args.reference)))
        if validation_new_item is not None:
            results["variants"][name]["validation_new_item"] = validation_new_item
            markdown.append(
                table(f"{name}: validation new items (among them only)", validation_new_item, tuple(args.reference))
            )
        for scenario, per_method in pooled.items():
            markdown.append(table(f"{name}: {scenario} (test)", per_method, tuple(args.reference)))
    stem = args.stem or (
        f"topn_{Path(source).name.split('.')[0]}"
        + ("_methods" if args.methods else "")
        + ("" if args.test else "_validation")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["versions"] = library_versions()
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text("\n".join(markdown))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
