#!/usr/bin/env bash
# One command for a lent GPU, run from the repository root:
#
#     bash scripts/gpu_session.sh            # through the device tool: carry .whl and .session, timeout_s ~420
#
# Hard internal budget CONVLAB_SESSION_BUDGET seconds (default 360), every phase under `timeout`,
# phases in priority order, each given what is left of the budget minus a reserve for the ones after:
#   a  environment      nvidia-smi, python / torch / CUDA / cuDNN / triton / torchvision, commit -> env.txt
#      (wheels)         .whl/*.whl installed with pip --no-index into a temporary site, when present
#   b  tests            kernel / op / factory tests compiled on CUDA (pytest-xdist, per-test timeout) -> tests.log,
#                       while warm-up processes compile the benchmark cases into a shared Triton cache
#   c  benchmark        python -m benchmarks.bench --preset session (priority order), resumed from earlier
#                       results files, written after every case -> bench.json, bench.csv
#   d  training         python -m benchmarks.train_compare: ResNet-20 standard / deformable / depthwise-separable,
#                       triton vs reference, fixed steps -> train.json, train.log; then, when hydra and
#                       omegaconf import, a Hydra smoke run of train.py on the GPU (appended to train.log)
# An exit trap renders bench.md from whatever bench.json exists and appends a summary to session.log.
# Output: at most 8 flat files in $OUT (when set) or benchmarks/results/session-<date>/:
#   env.txt session.log tests.log bench.json bench.csv bench.md train.json train.log
#
# CONVLAB_SESSION_REHEARSAL=1 runs the same phases on the CPU through Triton's interpreter with tiny
# sizes and a fake device name (tests/tools/test_gpu_session.py), so the script cannot rot between GPU
# sessions. Other knobs: CONVLAB_SESSION_BUDGET, CONVLAB_SESSION_TESTS (pytest arguments, or "skip"),
# CONVLAB_SESSION_WORKERS, CONVLAB_SESSION_WARM (warm-up processes), CONVLAB_SESSION_WHEELS (wheel
# folder, "skip" for none), CONVLAB_SESSION_DATA (training data: archive, folder or "synthetic"),
# CONVLAB_RESUME (extra results files to resume from), CONVLAB_FAKE_DEVICE, PYTHON.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
START=$(date +%s)
REHEARSAL=${CONVLAB_SESSION_REHEARSAL:-0}
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then O=$OUT; else O=$ROOT/benchmarks/results/session-$(date -u +%Y%m%d-%H%M%S); fi
mkdir -p "$O" || exit 2
LOG=$O/session.log
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/convlab-triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
TMP=$(mktemp -d /tmp/convlab-session.XXXXXX)

if [ "$REHEARSAL" = 1 ]; then
    BUDGET=${CONVLAB_SESSION_BUDGET:-240}  # caps below sum to 180 s; the rest is slack for a loaded CI machine
    export TRITON_INTERPRET=1 CONVLAB_FAKE_DEVICE=${CONVLAB_FAKE_DEVICE:-rehearsal-fake-gpu}
    DEVICE=cpu
    TESTS=${CONVLAB_SESSION_TESTS:-tests/ops/test_factory.py::test_registry_has_every_variant tests/ops/test_factory.py::test_unknown_variant_lists_valid_names}
    WORKERS=${CONVLAB_SESSION_WORKERS:-0}
    WARM=${CONVLAB_SESSION_WARM:-1}
    WHEELS=${CONVLAB_SESSION_WHEELS:-skip}
    BENCH_ARGS=(--preset rehearsal --device cpu --warmup 0 --rep 0)
    TRAIN_ARGS=(--device cpu --depth 8 --width 2 --batch 2 --image-size 8 --steps 1 --warmup-steps 0
                --runs standard:reference depthwise_separable:reference deformable:reference standard:triton)
    HYDRA_ARGS=(experiment=smoke backend=reference)
    CAP_ENV=30 CAP_TESTS=40 CAP_BENCH=40 CAP_TRAIN=40 CAP_HYDRA=30
    RES_TESTS=80 RES_BENCH=40 RES_TRAIN=10   # seconds kept for the phases after
else
    BUDGET=${CONVLAB_SESSION_BUDGET:-360}
    unset TRITON_INTERPRET
    DEVICE=cuda
    TESTS=${CONVLAB_SESSION_TESTS:-tests/ops/test_conv2d.py tests/ops/test_tma.py tests/ops/test_deform.py tests/ops/test_roi.py tests/ops/test_gather.py tests/ops/test_factory.py tests/ops/test_tf32.py tests/ops/test_index64.py}
    WORKERS=${CONVLAB_SESSION_WORKERS:-8}
    WARM=${CONVLAB_SESSION_WARM:-4}
    WHEELS=${CONVLAB_SESSION_WHEELS:-.whl}
    BENCH_ARGS=(--preset session --warmup 10 --rep 40)
    TRAIN_ARGS=(--device cuda --steps 30 --warmup-steps 5 --batch 128)
    HYDRA_ARGS=(experiment=smoke backend=triton conv=deformable_v2 trainer.accelerator=gpu trainer.devices=1)
    CAP_ENV=30 CAP_TESTS=110 CAP_BENCH=150 CAP_TRAIN=60 CAP_HYDRA=30
    RES_TESTS=200 RES_BENCH=80 RES_TRAIN=15  # seconds kept for the phases after
fi
DATA=${CONVLAB_SESSION_DATA:-}
if [ -z "$DATA" ]; then
    if [ -f .session/cifar10-jpeg.tar.gz ]; then DATA=.session/cifar10-jpeg.tar.gz; else DATA=synthetic; fi
fi

exec 3>&1  # the script's own stdout, whatever a phase's output is redirected to
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&3; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
STATUS=""
WARM_PIDS=()
CUR=""

# limit CAP RESERVE: min(CAP, seconds left - RESERVE)
limit() { local t=$(( $(left) - $2 )); [ "$t" -gt "$1" ] && t=$1; echo "$t"; }
# phase NAME CAP RESERVE FILE CMD...: run CMD under `timeout` for `limit CAP RESERVE` seconds (skipped
# under 5), stdout and stderr to FILE (+FILE: appended).
phase() {
    local name=$1 cap=$2 reserve=$3 file=$4; shift 4
    local l t t0 rc
    l=$(left); t=$(limit "$cap" "$reserve")
    if [ "$t" -lt 5 ]; then
        log "phase $name: skipped (${l}s of the budget left)"; STATUS+=" $name=skipped"; return 0
    fi
    log "phase $name: start (limit ${t}s)"
    t0=$(date +%s)
    # in the background + wait, so that a TERM reaches the trap at once (bash defers traps while a
    # foreground command runs); finish() then stops the phase
    if [ "${file#+}" != "$file" ]; then
        timeout -k 5 "$t" "$@" >>"${file#+}" 2>&1 &
    else
        timeout -k 5 "$t" "$@" >"$file" 2>&1 &
    fi
    CUR=$!; wait "$CUR"; rc=$?; CUR=""
    local how=""; { [ $rc = 124 ] || [ $rc = 137 ]; } && how=" (timed out)"
    log "phase $name: exit $rc$how after $(( $(date +%s) - t0 ))s"
    STATUS+=" $name=$rc"
    return 0
}

stop_warmups() {
    local p
    for p in "${WARM_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${WARM_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    WARM_PIDS=()
    local f
    for f in "$TMP"/warm*.log; do
        [ -f "$f" ] || continue
        echo "--- $(basename "$f") (last lines)" >>"$LOG"; tail -n 15 "$f" >>"$LOG"; rm -f "$f"
    done
}

finish() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$CUR" ]; then kill -TERM "$CUR" 2>/dev/null; wait "$CUR" 2>/dev/null; fi
    stop_warmups
    rm -f "$O"/*.tmp* 2>/dev/null
    if [ -f "$O/bench.json" ]; then
        timeout 30 "$PY" -m benchmarks.report "$O/bench.json" --no-plots >>"$LOG" 2>&1 \
            || log "report failed (see above)"
    fi
    log "summary: budget ${BUDGET}s, used $(( $(date +%s) - START ))s, phases:${STATUS:- none}"
    log "files in $O: $(cd "$O" && ls | tr '\n' ' ')"
    if [ -f "$O/bench.json" ]; then
        "$PY" - "$O/bench.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
d = json.load(open(sys.argv[1])); e = d["environment"]
print(f"bench: {e.get('cases_measured')} measured + {e.get('cases_resumed')} resumed of {e.get('cases_selected')} "
      f"selected on {e.get('device')} (code {str(e.get('code_commit'))[:12]})")
from benchmarks.report import summarize
for fam, g in sorted(summarize(d["results"])["family"].items()):
    print(f"  {fam:<10} " + "  ".join(f"{m} {g[m]:.2f}x" if g.get(m) else f"{m} -" for m in ("fwd", "bwd", "fwd_bwd")))
EOF
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap finish EXIT
trap 'log "interrupted"; exit 130' INT TERM

log "convlab GPU session: rehearsal=$REHEARSAL device=$DEVICE budget=${BUDGET}s out=$O"

# --- a. environment --------------------------------------------------------------------------------
SITE=""
if [ "$WHEELS" != skip ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE=$TMP/site
    phase wheels 60 0 "+$LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"  # after the repo and the image's own packages' path entries
    log "installed from $WHEELS: $(ls "$SITE" 2>/dev/null | grep -v -e '\.dist-info$' -e '^bin$' | tr '\n' ' ')"
else
    log "no wheels installed ($WHEELS: none found or skipped)"
fi

env_info() {
    echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%S)"
    echo "host: $(hostname 2>/dev/null)  rehearsal: $REHEARSAL  fake device: ${CONVLAB_FAKE_DEVICE:-none}"
    echo "--- commit"
    # the order of benchmarks.bench.source_version: environment, git, stamp
    if [ -n "${CONVLAB_COMMIT:-}" ]; then echo "$CONVLAB_COMMIT (from CONVLAB_COMMIT)"
    elif git rev-parse HEAD 2>/dev/null; then git status --porcelain --untracked-files=no 2>/dev/null | head -20
    elif [ -f .session/commit.json ]; then echo "no git here; stamp .session/commit.json:"; cat .session/commit.json
    else echo "unknown (no git, no stamp)"; fi
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || true
    echo "--- python"
    "$PY" - <<'EOF' 2>&1
import importlib, os, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print("cuda available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "",
      torch.cuda.get_device_capability() if torch.cuda.is_available() else "")
print("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET"), "TRITON_CACHE_DIR", os.environ.get("TRITON_CACHE_DIR"))
for name in ("triton", "torchvision", "numpy", "lightning", "torchmetrics", "hydra", "omegaconf", "pycocotools",
             "wandb", "pytest", "xdist", "pytest_timeout", "PIL"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')} ({os.path.dirname(m.__file__ or '')})")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__})")
EOF
    echo "--- cpu"
    nproc; free -g 2>/dev/null | head -2
}
phase env "$CAP_ENV" 0 "$O/env.txt" bash -c "$(declare -f env_info); PY='$PY' REHEARSAL='$REHEARSAL' env_info"

# --- b. tests, with warm-up processes filling the Triton cache ---------------------------------------
TIMEOUT_ARGS=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_ARGS=(--timeout 60); else log "pytest-timeout missing: no per-test timeout"; fi
XDIST_ARGS=()
if "$PY" -c "import xdist" 2>/dev/null; then XDIST_ARGS=(-n "$WORKERS"); fi
WARM_LIMIT=$(limit "$CAP_TESTS" "$RES_TESTS")  # the warm-ups end with the tests (stop_warmups below) at the latest
if [ "$WARM" -gt 0 ] && [ "$WARM_LIMIT" -ge 5 ]; then
    for i in $(seq 0 $(( WARM - 1 ))); do
        timeout -k 5 "$WARM_LIMIT" "$PY" -m benchmarks.bench "${BENCH_ARGS[@]}" --warm-only --shard "$i/$WARM" \
            >"$TMP/warm$i.log" 2>&1 &
        WARM_PIDS+=($!)
    done
    log "started $WARM warm-up processes (limit ${WARM_LIMIT}s)"
fi
if [ "$TESTS" = skip ]; then
    log "phase tests: skipped (CONVLAB_SESSION_TESTS=skip)"; STATUS+=" tests=skipped"
else
    # shellcheck disable=SC2086  # TESTS is a list of pytest arguments
    phase tests "$CAP_TESTS" "$RES_TESTS" "$O/tests.log" "$PY" -m pytest $TESTS -v -p no:cacheprovider \
        ${XDIST_ARGS[@]+"${XDIST_ARGS[@]}"} ${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"} -rfE --durations=15
    log "tests: $(grep -E '^=+ .*(passed|failed|error).* =+$' "$O/tests.log" | tail -1 || true)"
fi
stop_warmups

# --- c. benchmark subset, priority order, resumed, written after every case ---------------------------
RESUME=()
for f in benchmarks/results/*.json benchmarks/results/*/bench.json ${CONVLAB_RESUME:-}; do
    [ -f "$f" ] && RESUME+=("$f")
done
# the benchmark stops starting cases 15 s before its phase limit (one case rarely takes longer)
LIM=$(limit "$CAP_BENCH" "$RES_BENCH")
phase bench "$CAP_BENCH" "$RES_BENCH" "$TMP/bench.log" "$PY" -m benchmarks.bench "${BENCH_ARGS[@]}" \
    --time-budget $(( LIM > 20 ? LIM - 15 : 5 )) --out "$O/bench" ${RESUME[@]+--resume "${RESUME[@]}"}
cat "$TMP/bench.log" >>"$LOG"
grep -E '^\[|budget|wrote|error|Error' "$TMP/bench.log" | tail -n 60 || true

# --- d. short training comparison; then a Hydra smoke run when hydra imports --------------------------
LIM=$(limit "$CAP_TRAIN" "$RES_TRAIN")
phase train "$CAP_TRAIN" "$RES_TRAIN" "$O/train.log" "$PY" -m benchmarks.train_compare "${TRAIN_ARGS[@]}" \
    --data "$DATA" --time-budget $(( LIM > 25 ? LIM - 20 : 5 )) --out "$O/train.json"
grep -E '^\[|^data|budget' "$O/train.log" || true
if "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    {
        echo "=== hydra smoke: python train.py ${HYDRA_ARGS[*]}"
    } >>"$O/train.log"
    phase hydra "$CAP_HYDRA" 0 "+$O/train.log" "$PY" train.py "${HYDRA_ARGS[@]}" hydra.run.dir="$TMP/hydra"
    if [ -f "$TMP/hydra/summary.json" ]; then
        { echo "=== hydra smoke summary.json"; cat "$TMP/hydra/summary.json"; echo; } >>"$O/train.log"
    fi
else
    log "hydra / omegaconf not importable: Hydra smoke run skipped (carry the wheels: scripts/prepare_gpu_session.sh)"
    STATUS+=" hydra=missing"
fi
exit 0
