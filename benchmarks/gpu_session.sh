#!/usr/bin/env bash
# The GPU figures of issues 3 and 4, prepared so that no device time goes to writing commands.
# From the repository root of a checkout on the GPU machine, in two calls of the device tool
# (each at most 8 minutes by its steps' limits, under the 10 a call may run):
#
#     source .device/setup.sh && bash benchmarks/gpu_session.sh env bench memory search
#     source .device/setup.sh && bash benchmarks/gpu_session.sh workers accuracy
#
# and `compile` alone in a third, if device time is left.
#
# Each step runs under its own time limit, so a slow one cannot eat the rest; what it prints
# lands in $OUT/<step>.out (one JSON object per command where the command has --json), its
# messages and exit code in $OUT/log.txt. Copy the figures into benchmarks/RESULTS.md with the
# commands from log.txt. DATA_DIR (default /tmp/cifar10) must hold cifar-10-batches-py; on the
# shared JPEG copy every accuracy is a JPEG-copy figure, not a CIFAR-10 result.
set -uo pipefail
OUT=${OUT:-gpu-out}
DATA_DIR=${DATA_DIR:-/tmp/cifar10}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
ON_DATA=(--data cifar10 --data-dir "$DATA_DIR")

step() {  # step NAME LIMIT_S COMMAND...: output appended to $OUT/NAME.out
    local name=$1 limit=$2
    shift 2
    echo "== $name $(date -u +%FT%TZ) limit ${limit}s: $*" >> "$OUT/log.txt"
    local start=$SECONDS
    timeout "$limit" "$@" >> "$OUT/$name.out" 2>> "$OUT/log.txt"
    echo "== $name exit $? after $((SECONDS - start))s" >> "$OUT/log.txt"
}

run_env() {
    step env 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    step env 30 "$PY" -c "import sys, torch, optuna; print(sys.version.split()[0], torch.__version__, torch.version.cuda, optuna.__version__)"
}

run_bench() {  # issue 3: >= 15x the course loop, >= 35% MFU (ResNet-24, batch 128)
    step bench 150 "$PY" -m cerberus bench --device "$DEVICE" "${ON_DATA[@]}" --steps 50 --baseline --json
    step bench 60 "$PY" -m cerberus bench --device "$DEVICE" "${ON_DATA[@]}" --steps 50 --batch-size 512 --json
}

run_memory() {  # issues 3 and 5: memory after trial 20 equals memory after trial 1
    step memory 60 "$PY" benchmarks/cuda_memory.py --device "$DEVICE" --trials 20 --json
}

run_search() {  # issue 3: <= 5% of a search's wall time outside training steps; issue 4: epochs
    local db="$OUT/search.db"
    step search 150 "$PY" -m cerberus run --space search/default.toml --epochs 3 --trials 6 --seed 0 \
        --no-enqueue-seed --device "$DEVICE" "${ON_DATA[@]}" --storage "sqlite:///$db"
    step search 30 "$PY" benchmarks/overhead.py --storage "sqlite:///$db" --json
}

run_workers() {  # issue 3: trials per hour with K workers on one GPU
    step workers 200 "$PY" benchmarks/gpu_workers.py --data-dir "$DATA_DIR" --trials 6 --epochs 2 \
        --workers 1,2,4 --json
}

run_accuracy() {  # issue 3: time to 94% / 95% validation accuracy, fast recipe against the seed's
    step accuracy 200 "$PY" benchmarks/time_to_accuracy.py --device "$DEVICE" --data-dir "$DATA_DIR" \
        --fast-epochs 30 --seed-minutes 1 --json
}

run_compile() {  # issue 3: does torch.compile repay its compile time within a trial?
    step compile 180 "$PY" -m cerberus bench --device "$DEVICE" "${ON_DATA[@]}" --steps 200 --compile --json
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && { echo "name the steps: env bench memory search workers accuracy compile" >&2; exit 2; }
for s in "${steps[@]}"; do
    case $s in
        env|bench|memory|search|workers|accuracy|compile) "run_$s" ;;
        *) echo "unknown step '$s'; allowed: env bench memory search workers accuracy compile" >&2; exit 2 ;;
    esac
done
echo "done: $OUT/log.txt"
