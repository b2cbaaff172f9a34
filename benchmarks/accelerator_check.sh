#!/usr/bin/env bash
# GPU check of jaxrec, prepared to run on a lent accelerator machine in one call (DEADLINE=540 s at most):
#
#   run(command="bash benchmarks/accelerator_check.sh", carry=[".whl"], timeout_s=600)
#
# 1. installs the carried wheels (.whl/: jax, jaxlib, the CUDA plugin and pjrt wheels, flax, optax, chex and their
#    pure-Python dependencies) into /tmp/site, without an index and without resolving dependencies;
# 2. records the devices; runs the meta-step sweep of benchmarks/meta_step.py with the reference flags at
#    T = 32..4096 tasks a batch, and benchmarks/scaling.py --sweep (tasks/s on all local devices, the task axis
#    sharded when several);
# 3. runs the cost study (benchmarks/sweep.py --grid study), the top-N speed benchmark (benchmarks/topn_speed.py) and the serving load benchmark (benchmarks/serve.py: latency at 1, 8, 64 clients beside the bare compiled call);
# 4. runs the GPU-relevant tests (precision in real bf16, the meta-gradient, core and service suites).
# Everything is written under $OUT (default ./accelerator_out): devices.json, tests.log, tests.xml,
# meta_step.jsonl, scaling.json, topn_speed_V*.json, serve.json, summary.json. Each stage has its own timeout; a failed stage does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/accelerator_out}"
mkdir -p "$OUT"
declare -A STATUS

DEADLINE="${DEADLINE:-540}"  # seconds for the whole script: stages are cut to what is left, then skipped

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout (capped by the deadline), record the exit status
  local name="$1" seconds="$2"
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "== $name skipped: deadline" >&2
    STATUS[$name]="\"skipped\" 0"
    return
  fi
  [ "$seconds" -gt "$left" ] && seconds=$left
  echo "== $name (timeout ${seconds}s)" >&2
  local start=$SECONDS
  timeout --kill-after=10 "$seconds" "$@"
  STATUS[$name]="$? $((SECONDS - start))"
}

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/ folder: using the installed environment" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY=python3
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes in turn; do not grab 75% of the memory each

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
stage devices 120 $PY -c '
import json, jax
d = jax.devices()
print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(), "devices": [str(x) for x in d],
                  "kind": d[0].device_kind}))' > "$OUT/devices.json"

# the GPU tests first: the stages' timeouts add up to more than the deadline, and what is left when it comes is
# skipped, so correctness is checked before any figure is timed
stage tests 150 $PY -m pytest -q -x -p no:cacheprovider --junitxml="$OUT/tests.xml" \
  tests/test_precision.py tests/test_meta_gradients.py tests/test_core.py tests/test_serve.py > "$OUT/tests.log" 2>&1

: > "$OUT/meta_step.jsonl"
if [ -f benchmarks/meta_step.py ]; then
  for T in 32 64 128 256 512 1024 2048 4096; do
    peak=0
    [ "$T" = 32 ] && peak=2048
    stage "meta_step_T$T" 45 $PY benchmarks/meta_step.py --order second --adapt all --local-embeddings on \
      --matmul-peak "$peak" --tasks "$T" --steps 5 --warmup 1 >> "$OUT/meta_step.jsonl" 2>> "$OUT/meta_step.err"
  done
else
  echo "benchmarks/meta_step.py missing: sweep skipped" >&2
fi

stage scaling 120 $PY benchmarks/scaling.py --sweep 32 256 4096 --steps 3 --output "$OUT/scaling.json" \
  > "$OUT/scaling.log" 2>&1

# the cost study of docs/results.md on the accelerator (K = 1..20, T, V, remat, algorithms; figures as PNG + SVG)
stage cost_study 150 $PY benchmarks/sweep.py --grid study --rounds 3 --steps 5 --min-round-s 0.05 --out cost_study_gpu \
  > "$OUT/cost_study.log" 2>&1
cp benchmarks/results/cost_study_gpu* "$OUT/" 2> /dev/null

# new users' adapt + full-catalogue top-100 at V = 1e4, 1e5, 1e6 items beside NumPy and the matmul floor (issue 17)
# (one stage a size: the benchmark writes its JSON when it ends, so a size cut short loses only its own figures)
for V in 10000 100000 1000000; do
  stage "topn_speed_V$V" 60 $PY benchmarks/topn_speed.py --sizes "$V" --rounds 3 --out "$OUT/topn_speed_V$V.json" \
    >> "$OUT/topn_speed.log" 2>&1
done

# the serving path: the load benchmark against the bare compiled call (it trains a 1-epoch default model first); the
# carried wheels must include fastapi, uvicorn and their deps (the service's tests above need them too)
stage serve 150 $PY benchmarks/serve.py --devices default --requests 300 --seconds 8 --out "$OUT/serve.json" \
  > "$OUT/serve.log" 2>&1


{
  echo "{"
  first=1
  for name in "${!STATUS[@]}"; do
    read -r rc secs <<< "${STATUS[$name]}"
    [ $first = 1 ] || echo ","
    first=0
    printf '  "%s": {"rc": %s, "seconds": %s}' "$name" "$rc" "$secs"
  done
  echo ""
  echo "}"
} > "$OUT/summary.json"
cat "$OUT/summary.json"
