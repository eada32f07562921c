"""Agent steps/s of the real loop with the worker running the target network's pass (`actor.TargetPass`,
with the actor process on a CPU), the trainer running it itself, and the default `auto` choice between the
two (actor.TargetSplit), in one run.

    python bench/target_split.py [--archs ann,snn] [--window 150] [--rounds 6] [--set KEY=JSON ...]

One trainer per architecture (CarRacing, the default config, learning on after 300 steps) cycles through the
three ways every `--window` agent steps, so all see the same machine state (this machine's speed moves by ±30%
between runs minutes apart, more than the differences measured). Prints each window's rate, the medians and
how long the trainer waited per block for the worker's answer and for the block, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import actor as actors  # noqa: E402
import bout  # noqa: E402
import config  # noqa: E402
import train  # noqa: E402

WARMUP = 300
NAMES = ("worker", "trainer", "auto")


def measure(arch: str, window: int, rounds: int, tmp: Path, extra: dict) -> dict:
    cfg = config.load_config({"name": f"split-{arch}", "architecture": arch, "runs_dir": str(tmp),
                              "learning_starts": WARMUP, "total_steps": WARMUP + 3 * window * rounds + window,
                              "checkpoint_every": 10**6, "eval_every": 0, "epsilon_start": 0.5, "epsilon_min": 0.5,
                              "save_replay": False, "replay_size": 20_000, "actor": "process", **extra})
    trainer = train.Trainer(cfg, cfg.run_dir(), new_run=True)
    if trainer.target_pass is None:  # the capability: a worker process on the CPU
        trainer.vec.close()
        raise SystemExit("the worker's target pass needs the actor process on the CPU (no worker started here)")
    modes = (True, False, None)  # the worker's pass, the trainer's, the automatic choice
    rates: dict = {m: [] for m in modes}
    waits = {m: [0.0, 0.0, 0] for m in modes}  # seconds waiting for the answer, for the block; blocks
    window_start: dict = {}
    original = (bout.Progress.update, actors.ProcessActor.collect, actors.ProcessActor.target_q)

    def progress(self, t, sps, deadline):
        if t.state.global_step >= WARMUP:
            mode = modes[(t.state.global_step - WARMUP) // window % 3]
            if "mode" not in window_start or window_start["mode"] is not mode:
                now = time.perf_counter()
                if window_start and len(rates[window_start["mode"]]) < rounds:
                    rates[window_start["mode"]].append((t.state.global_step - window_start["step"]) /
                                                       (now - window_start["time"]))
                window_start.update(mode=mode, time=now, step=t.state.global_step)
                t.target_pass.split.force = mode
        return original[0](self, t, sps, deadline)

    def timed(i):
        def call(self):
            t0 = time.perf_counter()
            out = original[i](self)
            if "mode" not in window_start:  # before learning starts every block is waited for
                return out
            w = waits[window_start["mode"]]
            w[i - 1] += time.perf_counter() - t0
            w[2] += i == 1  # one collect per block
            return out
        return call

    bout.Progress.update, actors.ProcessActor.collect, actors.ProcessActor.target_q = progress, timed(1), timed(2)
    try:
        trainer.run()
    finally:
        bout.Progress.update, actors.ProcessActor.collect, actors.ProcessActor.target_q = original
    result = {}
    for mode, name in zip(modes, NAMES):
        blocks = max(waits[mode][2], 1)
        result[name] = {"windows": [round(r, 2) for r in rates[mode]], "median": statistics.median(rates[mode]),
                        "wait_answer_ms": 1e3 * waits[mode][1] / blocks, "wait_block_ms": 1e3 * waits[mode][0] / blocks}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="ann,snn")
    p.add_argument("--window", type=int, default=150, help="agent steps per window")
    p.add_argument("--rounds", type=int, default=6, help="windows of each way")
    args, extra = config.parse_bench_args(p)
    with tempfile.TemporaryDirectory() as tmp:
        results = {arch: measure(arch, args.window, args.rounds, Path(tmp), extra) for arch in args.archs.split(",")}
    print(f"\n{'arch':<5} {'target pass in':<15} {'agent steps/s per window':<42} {'median':>7} "
          f"{'wait answer ms':>15} {'wait block ms':>14}")
    for arch, r in results.items():
        for name in NAMES:
            w = r[name]
            print(f"{arch:<5} {name:<15} {' '.join(f'{x:.1f}' for x in w['windows']):<42} {w['median']:>7.1f} "
                  f"{w['wait_answer_ms']:>15.1f} {w['wait_block_ms']:>14.1f}")
        print(f"{arch:<5} against the trainer's pass: worker {r['worker']['median'] / r['trainer']['median']:.2f}x, "
              f"auto {r['auto']['median'] / r['trainer']['median']:.2f}x")
    print(json.dumps({"bench": "target_split", "window": args.window, "set": extra,
                      "results": {a: {n: round(r[n]["median"], 2) for n in NAMES} for a, r in results.items()}}))


if __name__ == "__main__":
    main()
