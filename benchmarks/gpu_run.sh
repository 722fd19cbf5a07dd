#!/usr/bin/env bash
# All GPU checks and benchmarks in one call (device machine): graph vs eager, then the LLP-scale
# speed benchmark with its per-file baseline. Figures go to $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
SCALE=${SCALE:-"--train 10000 --val 649 --test 1200"}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python -c "import torch, os; print('torch', torch.__version__, 'cpus', os.cpu_count())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout ${GRAPH_TIMEOUT:-150} python benchmarks/graph_check.py ${GRAPH_ARGS:-} 2>&1 | tee "$OUT/graph_check.txt"
timeout ${SPEED_TIMEOUT:-330} python benchmarks/speed.py $SCALE --workdir /tmp/avvp_speed ${SPEED_ARGS:-} 2>&1 | tee "$OUT/speed.txt"
