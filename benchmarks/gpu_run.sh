#!/usr/bin/env bash
# Every GPU check and benchmark in one call; figures go to $OUT (default ./gpu_out).
#   0. extract_speed.py: python -m avvp.extract on EXTRACT_VIDEOS generated 10 s clips at LLP's size,
#      one GPU, EXTRACT_WORKERS decoding processes (target: >= 13 videos/s, LLP's 11,849 in 15 min)
#   1. speed.py: the three stages at LLP scale with the default recipe, first building the packed
#      feature cache, then with it, plus the released-style per-file baseline epoch (target 40 s)
#   2. speed.py again, cache built, with OPT_ARGS (default: --fused_adam off)
#   3. the tests that need CUDA (tests/test_cuda.py)
# Each part has its own timeout, so one slow part still leaves the others' figures.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WORKDIR=${WORKDIR:-/tmp/avvp_speed}
SCALE=${SCALE:-"--train 10000 --val 649 --test 1200"}
OPT_ARGS=${OPT_ARGS:-"--fused_adam off"}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python -c "import torch, os; print('torch', torch.__version__, 'cpus', os.cpu_count())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout ${EXTRACT_TIMEOUT:-240} python benchmarks/extract_speed.py --videos ${EXTRACT_VIDEOS:-64} \
    --workers ${EXTRACT_WORKERS:-16} --device ${EXTRACT_DEVICE:-cuda} --json "$OUT/extract_speed.json" 2>&1 \
    | tee "$OUT/extract_speed.txt"
timeout ${SPEED_TIMEOUT:-240} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" 2>&1 | tee "$OUT/speed_llp.txt"
timeout ${OPT_TIMEOUT:-90} python benchmarks/speed.py $SCALE --workdir "$WORKDIR" --skip_cold --skip_baseline \
    --stage_args "$OPT_ARGS" 2>&1 | tee "$OUT/speed_llp_options.txt"
timeout ${CUDA_TESTS_TIMEOUT:-90} python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tail -5 | tee "$OUT/cuda_tests.txt"
