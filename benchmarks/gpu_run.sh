#!/usr/bin/env bash
# Every GPU check and benchmark in one call (device machine); figures go to $OUT (or ./gpu_out).
# Most important first, so that a time limit cuts the least useful parts:
#   1. speed.py: the three stages at LLP scale with the default recipe, first without then with
#      the packed cache, plus the per-file baseline epoch (the issue-6 target: <= 40 s)
#   2. speed.py again, cache warm, defaults: run-to-run spread of the same figure
#   3. speed.py, cache warm, with the speed options (OPT_ARGS)
#   4. start-up only (--epochs 0: load, build, test, save), with the torch._dynamo import on a side
#      thread (the CUDA default) and without it (AVVP_PREIMPORT=0): what that overlap saves
#   5. step_profile.py: epoch time of the graph path for the default and each speed option, and
#      the kernels of one eager step
#   6. graph_check.py: graph vs eager loss trajectories (dropout off)
# Each part has its own timeout, so one slow part still leaves the others' figures.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
WORKDIR=${WORKDIR:-/tmp/avvp_speed}
SCALE=${SCALE:-"--train 10000 --val 649 --test 1200"}
OPT_ARGS=${OPT_ARGS:-"--fused_adam --stack_modalities"}
T0=$SECONDS
stamp() { echo "[gpu_run] $1 done at +$((SECONDS - T0)) s" | tee -a "$OUT/gpu.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python -c "import torch, os; print('torch', torch.__version__, 'cpus', os.cpu_count())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout ${SPEED_TIMEOUT:-230} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" ${SPEED_ARGS:-} 2>&1 \
    | tee "$OUT/speed.txt"; stamp "1 speed"
timeout ${REPEAT_TIMEOUT:-75} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" --skip_cold --skip_baseline \
    ${SPEED_ARGS:-} 2>&1 | tee "$OUT/speed_repeat.txt"; stamp "2 repeat"
timeout ${OPT_TIMEOUT:-75} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" --skip_cold --skip_baseline \
    ${SPEED_ARGS:-} --stage_args "$OPT_ARGS" 2>&1 | tee "$OUT/speed_options.txt"; stamp "3 options"
for flag in 0 1; do
    AVVP_PREIMPORT=$flag timeout ${STARTUP_TIMEOUT:-35} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" \
        --skip_cold --skip_baseline --epochs 0 2>&1 | tee "$OUT/startup_preimport$flag.txt"
done; stamp "4 start-up"
timeout ${PROFILE_TIMEOUT:-55} python benchmarks/step_profile.py ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/step_profile.txt"
stamp "5 profile"
timeout ${GRAPH_TIMEOUT:-35} python benchmarks/graph_check.py --epochs 2 ${GRAPH_ARGS:---videos 4000} 2>&1 \
    | tee "$OUT/graph_check.txt"; stamp "6 graph check"
