#!/usr/bin/env bash
# Every GPU check and benchmark in one call (device machine); figures go to $OUT (or ./gpu_out).
#   1. step_profile.py: epoch time of the graph path for the default and each speed option, and
#      the kernels of one eager step
#   2. graph_check.py: graph vs eager loss trajectories (dropout off)
#   3. speed.py: the three stages at LLP scale with the default recipe, first without then with
#      the packed cache, plus the per-file baseline epoch
#   4. speed.py again, cache warm, with the speed options (OPT_ARGS), no baseline
#   5. start-up only (--epochs 0: load, build, test, save), with the torch._dynamo import on a side
#      thread (the CUDA default) and without it (AVVP_PREIMPORT=0): what that overlap saves
# Each part has its own timeout, so one slow part still leaves the others' figures.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
WORKDIR=${WORKDIR:-/tmp/avvp_speed}
SCALE=${SCALE:-"--train 10000 --val 649 --test 1200"}
OPT_ARGS=${OPT_ARGS:-"--fused_adam --stack_modalities"}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python -c "import torch, os; print('torch', torch.__version__, 'cpus', os.cpu_count())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout ${PROFILE_TIMEOUT:-60} python benchmarks/step_profile.py ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/step_profile.txt"
timeout ${GRAPH_TIMEOUT:-60} python benchmarks/graph_check.py --epochs 2 ${GRAPH_ARGS:-} 2>&1 | tee "$OUT/graph_check.txt"
timeout ${SPEED_TIMEOUT:-240} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" ${SPEED_ARGS:-} 2>&1 \
    | tee "$OUT/speed.txt"
timeout ${OPT_TIMEOUT:-90} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" --skip_cold --skip_baseline \
    --stage_args "$OPT_ARGS" 2>&1 | tee "$OUT/speed_options.txt"
for flag in 0 1; do
    AVVP_PREIMPORT=$flag timeout ${STARTUP_TIMEOUT:-40} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" \
        --skip_cold --skip_baseline --epochs 0 2>&1 | tee "$OUT/startup_preimport$flag.txt"
done
