"""Agent steps/s of the real training loop on CarRacing vs the sum of its parts, ANN and hybrid SNN.

    python bench/train_speed.py [--steps 1500] [--warmup 600] [--archs ann,snn] [--set KEY=JSON ...]

The loop is train.Trainer.run (FastCarRacing, frame skip 4, the default config, learning on from
`--warmup` steps). The parts, measured in the same run on the same trainer: the environment alone
(random actions through the full pipeline), action selection at batch 1, and one update (replay
sample included) divided by train_every. Prints a table and one JSON line; the loop's share of the
parts' rate is the number to watch (target >= 85%). With the actor process (`actor`, on by default for
CarRacing on a CPU with >= 2 cores) the environment and action selection overlap the update, so the loop
can beat the sum of its parts; the update is then timed with the trainer's own (fewer) threads.
`--set actor='"off"'` measures the plain loop.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import envs  # noqa: E402
import bout  # noqa: E402
import train  # noqa: E402
import config  # noqa: E402


def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(arch: str, steps: int, warmup: int, tmp: Path, extra: dict | None = None) -> dict:
    cfg = config.load_config({"name": f"speed-{arch}", "architecture": arch, "runs_dir": str(tmp),
                             "learning_starts": warmup, "total_steps": warmup + steps, "checkpoint_every": 10**6,
                             "eval_every": 0, "epsilon_start": 0.5, "epsilon_min": 0.5, "save_replay": False,
                             "replay_size": 20_000, **(extra or {})})
    trainer = train.Trainer(cfg, cfg.run_dir(), new_run=True)
    marks = {}
    original = bout.Progress.update

    def update(self, t, sps, deadline):
        if t.state.global_step >= warmup and "start" not in marks:
            marks["start"] = (time.perf_counter(), t.state.global_step)
        marks["end"] = (time.perf_counter(), t.state.global_step)
        return original(self, t, sps, deadline)

    bout.Progress.update = update
    try:
        trainer.run()
    finally:
        bout.Progress.update = original
    (t0, s0), (t1, s1) = marks["start"], marks["end"]
    loop_rate = (s1 - s0) / (t1 - t0)

    # the parts, on the same trainer (networks, replay) and the same machine state
    env = envs.make_env(cfg)
    rng = np.random.default_rng(0)
    env.reset(seed=1)
    n_env = 300
    t = time.perf_counter()
    for _ in range(n_env):
        _, _, term, trunc, _ = env.step(int(rng.integers(5)))
        if term or trunc:
            env.reset()
    t_env = (time.perf_counter() - t) / n_env
    env.close()
    obs = trainer.obs
    t_act = median_time(lambda: trainer.act(obs), 50)
    t_update = median_time(trainer.update, 15)
    per_step = t_env + t_act + t_update / cfg.train_every
    parts_rate = 1.0 / per_step
    return {"loop_steps_per_s": loop_rate, "parts_steps_per_s": parts_rate, "loop_over_parts": loop_rate / parts_rate,
            "env_ms": t_env * 1e3, "act_ms": t_act * 1e3, "update_ms": t_update * 1e3, "train_every": cfg.train_every}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="timed agent steps with learning on")
    p.add_argument("--warmup", type=int, default=600, help="exploration steps before learning (and timing) starts")
    p.add_argument("--archs", default="ann,snn")
    args, extra = config.parse_bench_args(p)
    with tempfile.TemporaryDirectory() as tmp:
        results = {arch: measure(arch, args.steps, args.warmup, Path(tmp), extra) for arch in args.archs.split(",")}
    print(f"\n{'arch':<6} {'loop steps/s':>13} {'parts steps/s':>14} {'loop/parts':>11} {'env ms':>8} {'act ms':>8} "
          f"{'update ms':>10}")
    for arch, r in results.items():
        print(f"{arch:<6} {r['loop_steps_per_s']:>13.1f} {r['parts_steps_per_s']:>14.1f} {100 * r['loop_over_parts']:>10.1f}% "
              f"{r['env_ms']:>8.2f} {r['act_ms']:>8.2f} {r['update_ms']:>10.1f}")
    print(json.dumps({"bench": "train_speed", "steps": args.steps, "set": extra,
                      "results": {a: {k: round(v, 3) for k, v in r.items()} for a, r in results.items()}}))


if __name__ == "__main__":
    main()
