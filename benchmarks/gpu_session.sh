#!/usr/bin/env bash
# The GPU figures, prepared so that no device time goes to writing commands. A lent machine gives
# a session 15 minutes of device time in all, its start-up included, so this is two calls of at
# most 5 minutes each (setup included), the most important figures first. From the repository
# root of a checkout on the GPU machine, `.device` in the call's carry (filled as the developers'
# guide says: about 60 MiB of the 64 a call may carry, so keep the checkout itself small):
#
#     source .device/setup.sh && bash benchmarks/gpu_session.sh env frontier bench   # ~4.5 min
#     source .device/setup.sh && bash benchmarks/gpu_session.sh search accuracy memory  # ~4.5 min
#
# and `workers` or `compile` in a third call only if device time is left.
#
# Each step runs under its own time limit, so a slow one cannot eat the rest. Python runs
# unbuffered and every benchmark prints each row as it finishes, so a step stopped by its limit
# leaves the rows it finished in $OUT/<step>.out (one JSON object per command where the command
# has --json); messages and exit codes go to $OUT/log.txt. Databases and checkpoints live in
# $SCRATCH, outside $OUT: a killed trial leaves a checkpoint of 40 to 60 MB, over the 16 MiB a
# file may be to come back; the search's SQLite file (small) is copied to $OUT after its step.
# DATA_DIR (default /tmp/cifar10) must hold cifar-10-batches-py; on the shared JPEG copy every
# accuracy is a JPEG-copy figure, not a CIFAR-10 result. DEVICE=cpu DATA=synthetic runs the same
# steps here, to check the script before device time is spent on it.
set -uo pipefail
OUT=${OUT:-gpu-out}
SCRATCH=${SCRATCH:-/tmp/cerberus-gpu}
DATA_DIR=${DATA_DIR:-/tmp/cifar10}
DATA=${DATA:-cifar10}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$SCRATCH"
ON_DATA=(--data "$DATA" --data-dir "$DATA_DIR")

step() {  # step NAME LIMIT_S COMMAND...: output appended to $OUT/NAME.out
    local name=$1 limit=$2
    shift 2
    echo "== $name $(date -u +%FT%TZ) limit ${limit}s: $*" >> "$OUT/log.txt"
    local start=$SECONDS
    timeout "$limit" "$@" >> "$OUT/$name.out" 2>> "$OUT/log.txt"
    echo "== $name exit $? after $((SECONDS - start))s" >> "$OUT/log.txt"
}

run_env() {
    step env 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    step env 20 "$PY" -c "import sys, torch, optuna, cerberus; print(sys.version.split()[0], torch.__version__, torch.version.cuda, optuna.__version__, cerberus.__version__)"
}

run_frontier() {  # airbench94 as published beside cerberus's search/fast.json, same data and GPU; fast at airbench95's 1.4 PFLOP
    step frontier 150 "$PY" benchmarks/airbench_side.py --data-dir "$DATA_DIR" --runs 2 --budget 1.4 --device "$DEVICE"
}

run_bench() {  # the course net's step eager and as a CUDA graph, at batch 128 and 512, against both course loops; MFU
    local on=("$PY" -m cerberus bench --device "$DEVICE" "${ON_DATA[@]}" --steps 50 --json)
    step bench 90 "${on[@]}" --baseline --plain
    step bench 30 "${on[@]}" --cuda-graph
    step bench 30 "${on[@]}" --batch-size 512
    step bench 30 "${on[@]}" --batch-size 512 --cuda-graph
    step bench 40 "${on[@]}" --config benchmarks/heavy_step.json --cuda-graph
}

run_search() {  # a short real search and the share of its wall time outside training steps
    local db="$SCRATCH/search.db"
    step search 100 "$PY" -m cerberus run --space default --epochs 3 --trials 6 --seed 0 \
        --no-enqueue-seed --device "$DEVICE" "${ON_DATA[@]}" --storage "sqlite:///$db"
    step search 20 "$PY" benchmarks/overhead.py --storage "sqlite:///$db" --json
    cp "$db" "$OUT/search.db" 2>> "$OUT/log.txt"
}

run_accuracy() {  # time to 94% / 95% validation accuracy, a fast recipe against the course recipe
    step accuracy 180 "$PY" benchmarks/time_to_accuracy.py --device "$DEVICE" "${ON_DATA[@]}" \
        --fast-epochs 30 --seed-minutes 1 --json
}

run_memory() {  # the memory after trial 20 equals the memory after trial 1
    step memory 60 "$PY" benchmarks/cuda_memory.py --device "$DEVICE" --trials 20 --json
}

run_workers() {  # trials per hour with K workers on one GPU
    step workers 200 "$PY" benchmarks/gpu_workers.py "${ON_DATA[@]}" --device "$DEVICE" --trials 6 --epochs 2 \
        --workers 1,2,4 --json
}

run_compile() {  # does torch.compile repay its compile time within a trial?
    step compile 180 "$PY" -m cerberus bench --device "$DEVICE" "${ON_DATA[@]}" --steps 200 --compile --json
}

STEPS="env frontier bench search accuracy memory workers compile"
[ $# -eq 0 ] && { echo "name the steps: $STEPS" >&2; exit 2; }
for s in "$@"; do
    case " $STEPS " in
        *" $s "*) "run_$s" ;;
        *) echo "unknown step '$s'; allowed: $STEPS" >&2; exit 2 ;;
    esac
done
echo "done: $OUT/log.txt"
