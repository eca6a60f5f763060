#!/usr/bin/env bash
# The prepared GPU run: correctness on the GPU first, then every timing the docs quote, in one
# call (device time is scarce). JSON results land in $OUT (default: results/gpu), with one log
# of every step, run.log (the device tool returns at most 8 files).
#
#   DATA_DIR=../shared/data/movielens bash benchmarks/gpu_run.sh
#
# Each step has its own time limit, so a slow step cannot take the later ones down with it.
set -uo pipefail
OUT=${OUT:-results/gpu}
DATA_DIR=${DATA_DIR:-../shared/data/movielens}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%T))" | tee -a "$OUT/run.log"
    timeout "$limit" "$@" 2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/run.log" | tail -n 25
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
step 100 check "$PYTHON" benchmarks/check_cuda.py --data-dir "$DATA_DIR" --json "$OUT/check_cuda.json"
step 180 throughput_second "$PYTHON" benchmarks/train_throughput.py --data-dir "$DATA_DIR" --device cuda --orders second \
    --batches 32 256 --json "$OUT/train_throughput_second.json"
step 120 training_eager "$PYTHON" benchmarks/train_throughput.py --data-dir "$DATA_DIR" --device cuda \
    --batches --train-epochs 30 --train-modes eager --json "$OUT/training_eager.json"
# Compiled training twice, in two processes: the first compiles (a fresh machine has no cache),
# the second finds inductor's on-disk cache, as a user's next run would.
for i in 1 2; do
    step 120 "training_compiled_process$i" env TORCH_LOGS=recompiles "$PYTHON" \
        benchmarks/train_throughput.py --data-dir "$DATA_DIR" --device cuda --batches \
        --train-epochs 30 --train-modes compiled --json "$OUT/training_compiled_process$i.json"
done
step 90 throughput_first "$PYTHON" benchmarks/train_throughput.py --data-dir "$DATA_DIR" --device cuda --orders first \
    --variants loop vmap closed --batches 32 256 --json "$OUT/train_throughput_first.json"
