#!/usr/bin/env bash
# The prepared GPU run: correctness on the GPU first, then the timings the docs quote, one
# group per device call (device time is scarce). JSON results land in $OUT (default:
# results/gpu), with one log of every step, run.log (the device tool returns at most 8 files).
#
#   DATA_DIR=../shared/data/movielens bash benchmarks/gpu_run.sh [taste|rating]
#
# Both start with the check of both models' meta-gradients on the GPU. taste (the default):
# the taste model's (the default preset's) meta-batch throughput and 30 epochs of its
# training: at most 9.5 min, one 10-minute device call, 4 files. rating: MeLU's rating
# network, every variant and compiled training: 7 files, step limits adding to 13 min (about
# 5 min on the H200 in 2026-11: run it alone).
#
# Each step has its own time limit, so a slow step cannot take the later ones down with it;
# training logs every epoch's time to run.log as it goes, so a step cut short still tells.
set -uo pipefail
GROUP=${1:-taste}
case "$GROUP" in
    taste | rating) ;;
    *) echo "usage: $0 [taste|rating]" >&2; exit 2 ;;
esac
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
THROUGHPUT=("$PYTHON" benchmarks/train_throughput.py --data-dir "$DATA_DIR" --device cuda)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
"$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
# Both models' meta-gradients, float64 on the GPU against the CPU (and MeLU's compiled path).
step 150 check "$PYTHON" benchmarks/check_cuda.py --data-dir "$DATA_DIR" --json "$OUT/check_cuda.json"

if [[ $GROUP == taste ]]; then
    step 120 taste_throughput "${THROUGHPUT[@]}" --models taste --orders second first \
        --batches 32 256 --json "$OUT/taste_throughput.json"
    # 30 epochs eager (torch.compile cannot differentiate the taste model's local steps), early
    # stopping off, then the step schedule chosen on validation users.
    step 300 taste_training "${THROUGHPUT[@]}" --models --batches --train-epochs 30 \
        --train-models taste --json "$OUT/taste_training.json"
fi

if [[ $GROUP == rating ]]; then
    step 180 throughput_second "${THROUGHPUT[@]}" --models rating --orders second \
        --batches 32 256 --json "$OUT/train_throughput_second.json"
    step 120 training_eager "${THROUGHPUT[@]}" --models --batches --train-epochs 30 \
        --train-models rating --train-modes eager --json "$OUT/training_eager.json"
    # Compiled training twice, in two processes: the first compiles (a fresh machine has no
    # cache), the second finds inductor's on-disk cache, as a user's next run would.
    for i in 1 2; do
        step 120 "training_compiled_process$i" env TORCH_LOGS=recompiles "${THROUGHPUT[@]}" \
            --models --batches --train-epochs 30 --train-models rating --train-modes compiled \
            --json "$OUT/training_compiled_process$i.json"
    done
    step 90 throughput_first "${THROUGHPUT[@]}" --models rating --orders first \
        --variants loop vmap closed --batches 32 256 --json "$OUT/train_throughput_first.json"
fi
