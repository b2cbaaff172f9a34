#!/usr/bin/env bash
# The meta-learner's fold-in strengths chosen on validation users, as the baselines' are: the ridge l2 of the exact
# ALS fold-in (inner_lr = 1 / (2 l2)) and its confidence c (als_confidence), each pair trained twice on each of three
# splits (topn_quality.py --train-seeds 0 1, no baselines, validation users only). Writes one result file per pair
# under $OUT and benchmarks/results/topn_fold_in_grid_<dataset>.json: the validation Recall@20 of each split and
# training, and the mean of the six.
#
#   bash benchmarks/topn_fold_in_grid.sh ml-100k "10 10" "10 1" "1 1"      # DATA_DIR=../shared/data by default
#   OUT=/tmp/grid bash benchmarks/topn_fold_in_grid.sh ml-latest-small "10 10" "10 1"
set -euo pipefail
dataset=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-${TMPDIR:-/tmp}/jaxrec_fold_in_grid} # each pair's full result file
mkdir -p "$out"
for pair in "$@"; do
  read -r l2 c <<< "$pair"
  lr=$(python -c "print(1 / (2 * $l2))")
  stem=${dataset}_l2${l2}_c${c}
  [ -f "$out/$stem.json" ] && continue # a pair already run is kept
  python "$here/topn_quality.py" --dataset "$dataset" --data-dir "${DATA_DIR:-$here/../../shared/data}" \
    --variants twotower_als_exact --seeds 0 1 2 --train-seeds 0 1 --no-baselines \
    --set "{\"inner_lr\": $lr, \"als_confidence\": $c}" --out "$out" --stem "$stem"
done
python - "$dataset" "$out" "$here/results/topn_fold_in_grid_$dataset.json" "$@" << 'EOF'
import json, sys
from pathlib import Path

dataset, out, target, pairs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
table = {}
for pair in pairs:
    l2, c = pair.split()
    runs = json.loads((out / f"{dataset}_l2{l2}_c{c}.json").read_text())["variants"]["twotower_als_exact"]["runs"]
    splits = {seed: {t: r["maml"] for t, r in run["train_seeds"].items()} for seed, run in runs.items()}
    every = [x for s in splits.values() for x in s.values()]
    table[f"l2={l2} c={c}"] = {"validation_recall@20": splits, "mean": sum(every) / len(every)}
best = max(table, key=lambda k: table[k]["mean"])
Path(target).write_text(json.dumps({"dataset": dataset, "best": best, "pairs": table}, indent=1) + "\n")
print(f"{dataset}: best {best} ({table[best]['mean']:.4f}); wrote {target}")
EOF
