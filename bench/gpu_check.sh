#!/usr/bin/env bash
# One-shot CUDA check, run on a lent GPU machine (see README "Benchmarks"):
#   bash bench/gpu_check.sh            # OUT=folder for the logs (default /tmp/gpu_check)
# 1. update timings of the Q-networks (ANN / SNN hybrid / SNN full), 2. the training loop's speed,
# 3. short trainings with parallel environments at the highest agent steps/s reached.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
TRAIN_S=${TRAIN_S:-100}; AGENTS=${AGENTS:-"8 16"}; MIN_TIME=${MIN_TIME:-1}
export PYTHONUNBUFFERED=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 SDL_VIDEODRIVER=dummy
(nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; nproc) 2>&1 | tee "$OUT/machine.txt"
python3 bench/snn_speed.py --device auto --min-time "$MIN_TIME" 2>&1 | tee "$OUT/snn_speed.txt"
python3 bench/train_speed.py --steps 1500 --warmup 600 2>&1 | tee "$OUT/train_speed.txt"
for arch in snn ann; do for n in $AGENTS; do
  cfg="{\"name\": \"gpu-$arch-$n\", \"architecture\": \"$arch\", \"agents\": $n, \"runs_dir\": \"/tmp/gpu_runs\", \"learning_starts\": 2000, \"max_run_time\": $TRAIN_S, \"checkpoint_every\": 100000, \"eval_every\": 0, \"save_replay\": false, \"continue_run\": false}"
  echo "== training arch=$arch agents=$n for ${TRAIN_S}s" | tee -a "$OUT/train.txt"
  timeout $((TRAIN_S + 90)) python3 -c "import sys, json, train, utils; p='/tmp/gpu_cfg.json'; open(p,'w').write(sys.argv[1]); sys.exit(train.main(['--config', p, '--new-run']))" "$cfg" 2>&1 | grep -E "start|progress|stopped|error|Error" | tail -n 6 | tee -a "$OUT/train.txt"
done; done
