#!/usr/bin/env bash
# The GPU check of issue 11, as one prepared script (<= 8 minutes on one H100, counted once .venv exists): run it on
# a GPU node, read the last line (one JSON object).
#
#   benchmarks/gpu_check.sh              # on a CUDA machine
#   benchmarks/gpu_check.sh --cpu-smoke  # every step that can run without a GPU (the script itself, end to end)
#
# Steps (each bounded by `timeout`; logs kept under $GPU_CHECK_OUT, default a fresh temp dir):
#   gpu_tests       pytest -m gpu: pinned buffers + events, bf16-weights with fp32 norms, meta load onto the GPU,
#                   CUDA vs CPU extract (CPU smoke: the same files, skipped cleanly)
#   dead_peer       2 gloo ranks, one SIGKILLed: the other exits 2 with one line within EMBEDKIT_DIST_TIMEOUT
#                   (CPU only: runs alongside gpu_tests)
#   sigkill_resume  an extract SIGKILLed after 2 units on CUDA, then re-run: identical to an uninterrupted run
#   two_ranks       torchrun, 2 ranks sharing GPU 0 (gloo barriers): identical to one process
#   bench_extract   bench_extract.py --device cuda: ViT-B/16 and a random ViT-7B/16 at 512 px in bf16-weights,
#                   img/s + MFU against the card's dense bf16 peak, and fp32 vs bf16-weights feature parity
#   bench_finetune  bench_finetune.py --device cuda: ViT-B/16 and ConvNeXt-B at 512 px, bf16 autocast: training
#                   img/s (the finetune loop and bare forward/backward/step) and MFU
# Time: the sequential steps' limits add up to 460 s and the whole run stops at GPU_CHECK_BUDGET seconds (470;
# the summary takes ~1 s): a step may use what the steps before it left unused, never what the steps after it are
# promised. A step that cannot start in time is recorded with rc 124 and "skipped".
# The virtualenv is .venv when present, else created the README's way (pip install -e ".[dev]").
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
case "${1:-}" in
  --cpu-smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: benchmarks/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=.venv/bin/python
if [[ ! -x $PY ]]; then
  echo "[gpu_check] creating .venv (pip install -e .[dev])" >&2
  python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" || { echo '{"check": "gpu", "error": "venv"}'; exit 1; }
fi
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t embedkit-gpu-check.XXXXXX)}
mkdir -p "$OUT"
: > "$OUT/steps"
T0=$(date +%s)

if (( SMOKE )); then  # a shared 2-core box: sequential, generous limits (the 8-minute budget is the GPU run's)
  LIMITS=(gpu_tests=120 dead_peer=120 sigkill_resume=240 two_ranks=240 bench_extract=240 bench_finetune=300)
  BUDGET=${GPU_CHECK_BUDGET:-1500}
else
  LIMITS=(gpu_tests=100 dead_peer=60 sigkill_resume=50 two_ranks=60 bench_extract=130 bench_finetune=120)
  BUDGET=${GPU_CHECK_BUDGET:-470}
fi
DEADLINE=$(( T0 + BUDGET ))
declare -A LIMIT
for kv in "${LIMITS[@]}"; do LIMIT[${kv%%=*}]=${kv#*=}; done
# Seconds promised to the sequential steps not run yet (dead_peer runs alongside on a GPU node).
RESERVE=0
for name in "${!LIMIT[@]}"; do [[ $name == dead_peer && $SMOKE == 0 ]] || RESERVE=$(( RESERVE + LIMIT[$name] )); done

run_step() {  # run_step NAME LIMIT CMD...: run with a time limit, log to $OUT/NAME.log, record "NAME rc seconds"
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  if (( limit < 5 )); then
    echo "skipped: no time left in the ${BUDGET} s budget" > "$OUT/$name.log"
    echo "$name 124 0" >> "$OUT/steps"
    echo "[gpu_check] $name: skipped (no time left)" >&2
    return
  fi
  timeout --signal=KILL "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - start ))" >> "$OUT/steps"
  echo "[gpu_check] $name: rc=$rc in $(( $(date +%s) - start )) s of $limit (log $OUT/$name.log)" >&2
}

step() {  # step NAME CMD...: its own limit plus what earlier steps left unused, within the deadline
  local name=$1 avail
  shift
  RESERVE=$(( RESERVE - LIMIT[$name] ))
  avail=$(( DEADLINE - $(date +%s) - RESERVE ))
  run_step "$name" "$avail" "$@"
}

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
if (( SMOKE )); then
  step gpu_tests "${PYTEST[@]}" tests/embedkit/extract/test_gpu.py
  step dead_peer "${PYTEST[@]}" tests/embedkit/extract/test_dist_env.py -k dead_peer
  step sigkill_resume "${PYTEST[@]}" tests/embedkit/extract/test_resume_dist.py -k sigkill
  step two_ranks "${PYTEST[@]}" tests/embedkit/extract/test_resume_dist.py -k torchrun_two_ranks_equals
  step bench_extract "$PY" benchmarks/bench_extract.py --gpu-smoke
  step bench_finetune "$PY" benchmarks/bench_finetune.py --gpu-smoke
else
  # CPU only (gloo), so it shares the node with gpu_tests instead of taking a minute of the budget.
  run_step dead_peer "${LIMIT[dead_peer]}" "${PYTEST[@]}" tests/embedkit/extract/test_dist_env.py -k dead_peer &
  PEER=$!
  step gpu_tests "${PYTEST[@]}" -m gpu tests/ -k "not sigkill and not two_ranks"
  wait "$PEER"
  step sigkill_resume "${PYTEST[@]}" -m gpu tests/embedkit/extract/test_gpu.py -k sigkill
  step two_ranks "${PYTEST[@]}" -m gpu tests/embedkit/extract/test_gpu.py -k two_ranks
  step bench_extract "$PY" benchmarks/bench_extract.py --device cuda --res 512 --gpu-models vitb16,vit7b16
  step bench_finetune "$PY" benchmarks/bench_finetune.py --device cuda --res 512 --gpu-models vitb16,convnextb \
    --workers 8
fi

"$PY" - "$OUT" "$SMOKE" "$(( $(date +%s) - T0 ))" "$BUDGET" <<'EOF'
import json, re, sys
from pathlib import Path

out, smoke, seconds, budget = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
summary = {"check": "gpu", "mode": "cpu-smoke" if smoke else "cuda", "seconds": seconds, "budget_s": budget,
           "logs": str(out)}
ok = True
for line in (out / "steps").read_text().split("\n"):
    if not line.strip():
        continue
    name, rc, secs = line.split()
    log = (out / f"{name}.log").read_text(errors="replace").splitlines()
    entry = {"rc": int(rc), "seconds": int(secs)}
    if int(rc) in (124, 137):  # 137: killed by `timeout --signal=KILL`; 124: no time left to start it
        entry["timed_out"] = True
    if name.startswith("bench"):
        last = next((l for l in reversed(log) if l.startswith("{")), None)
        entry["result"] = json.loads(last) if last else None
        entry["tail"] = None if last else log[-3:]
    else:
        counts = next((l for l in reversed(log) if re.search(r"\d+ (passed|failed|skipped|error)", l)), "")
        entry.update({k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", counts)})
        if int(rc):
            entry["tail"] = log[-5:]
    ok &= int(rc) == 0
    summary[name] = entry
summary["ok"] = ok


def strict(v):  # strict JSON: NaN/inf become null
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return None
    if isinstance(v, dict):
        return {k: strict(x) for k, x in v.items()}
    return [strict(x) for x in v] if isinstance(v, list) else v


print(json.dumps(strict(summary), allow_nan=False, default=str))
sys.exit(0 if ok else 1)
EOF
