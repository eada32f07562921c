#!/usr/bin/env bash
# One-shot GPU session (run on a lent GPU machine, see docs/benchmarks.md):
#   INIT=.gpu/start.pt TRAIN_S=330 OUT=/tmp/gpu bash bench/gpu_finetune.sh
# 1. update timings, float32 vs the bfloat16 encoder, ANN / SNN hybrid / SNN full (bench/update_speed.py);
# 2. a fine-tuning bout of the spiking agent from INIT (a weights file) with 16 parallel environments,
#    the snn-solve settings (learning rate 5e-5, ε 0.05), best.pt kept by held-out evaluations;
#    best.pt, the final weights and metrics.csv are copied to OUT.
# Needs the project's wheels in .whl/ when the machine lacks gymnasium/Box2D/snntorch (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_finetune}; mkdir -p "$OUT"
TRAIN_S=${TRAIN_S:-330}; INIT=${INIT:-pretrained/snn_hybrid_ddqn.pt}; AGENTS=${AGENTS:-16}
export PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
if ! python3 -c "import gymnasium, Box2D, snntorch" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -n 2
fi
(nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; nproc) 2>&1 | tee "$OUT/machine.txt"
python3 bench/update_speed.py --device cuda --reps 30 2>&1 | grep -v Warning | tee "$OUT/update_speed.txt"
cfg="{\"name\": \"gpu-finetune\", \"architecture\": \"snn\", \"init_weights\": \"$INIT\", \"agents\": $AGENTS,
 \"learning_rate\": 5e-5, \"epsilon_start\": 0.05, \"epsilon_min\": 0.05, \"lenient_termination\": 25,
 \"runs_dir\": \"/tmp/gpu_runs\", \"max_run_time\": $TRAIN_S, \"checkpoint_every\": 100000, \"keep_checkpoints\": 1,
 \"eval_every\": 80, \"eval_episodes\": 10, \"save_replay\": false, \"continue_run\": false}"
echo "$cfg" > /tmp/gpu_cfg.json
timeout $((TRAIN_S + 150)) python3 train.py --config /tmp/gpu_cfg.json --new-run 2>&1 \
  | grep -E "^(start|init_weights|eval|progress|stopped|finished|checkpoint|error|warning)" | tail -n 40 | tee "$OUT/train.txt"
run=/tmp/gpu_runs/gpu-finetune
cp "$run/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
cp "$run/best.pt" "$OUT/best.pt" 2>/dev/null
last=$(ls "$run"/checkpoints/ckpt_*.pt 2>/dev/null | tail -n 1)
[ -n "$last" ] && python3 evaluate.py --checkpoint "$last" --export "$OUT/final.pt" --no-table 2>&1 | tail -n 1
ls -la "$OUT"
