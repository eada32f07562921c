"""Milliseconds per greedy decision (a batch of one, as evaluate.py plays) with 1 and with 2 torch threads,
on whatever else the machine is doing: run it beside a training to see what evaluate.py would get there.

    python bench/eval_threads.py [--agent pretrained/snn_hybrid_ddqn.pt] [--decisions 200]

The observations are a real episode's (one held-out track); both thread counts must choose the same
actions (checked). Prints one line per thread count and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import agents  # noqa: E402
import checkpoints  # noqa: E402
import envs  # noqa: E402
import models  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default=str(ROOT / "pretrained" / "snn_hybrid_ddqn.pt"))
    p.add_argument("--decisions", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg, net = agents.build_network(checkpoints.read(args.agent), "cpu", args.agent)
    env = envs.make_env(cfg.for_evaluation())
    obs, _ = env.reset(seed=40_000)
    seen = []
    for _ in range(args.decisions):  # the observations of a real drive
        seen.append(np.asarray(obs))
        obs, _, term, trunc, _ = env.step(models.greedy_action(net, obs))
        if term or trunc:
            break
    result, actions = {}, {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        models.greedy_action(net, seen[0])  # warm-up
        t0 = time.perf_counter()
        actions[threads] = [models.greedy_action(net, o) for o in seen]
        result[f"ms_per_decision_{threads}_threads"] = (time.perf_counter() - t0) / len(seen) * 1e3
        print(f"{threads} thread(s): {result[f'ms_per_decision_{threads}_threads']:.2f} ms per decision "
              f"({len(seen)} decisions)")
    assert actions[1] == actions[2], "the thread counts chose different actions"
    print(json.dumps({"agent": Path(args.agent).name, **{k: round(v, 3) for k, v in result.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
