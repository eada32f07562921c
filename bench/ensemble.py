"""Does averaging the Q-values of several checkpoints drive better than one of them?

    python bench/ensemble.py --single pretrained/snn_hybrid_ddqn.pt \
        --member runs/snn-solve/checkpoints/ckpt_0000415733.pt --member ... [--episodes 20] [--seeds 3000,4000]

Plays the `--single` agent and the ensemble of the `--member` checkpoints (greedy on the mean of their
Q-values, every member given the same observation) on the same held-out tracks: `--episodes` full
episodes (no lenient termination) from each seed in `--seeds`. Keep the seeds apart from the table's
0-49 and from the seeds the members were chosen on. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402


def ensemble_agent(paths: list[Path]) -> evaluate.Agent:
    import torch

    loaded = [evaluate.load_network(p, device="cpu") for p in paths]
    cfg, nets = loaded[0][0], [net for _, net, _ in loaded]

    def act(obs):
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(obs)[None])
            return int(torch.stack([net(x) for net in nets]).mean(0).argmax(1))

    return evaluate.Agent(f"ensemble of {len(nets)}", cfg, lambda env: act)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--single", type=Path, required=True, help="the agent to compare against")
    p.add_argument("--member", type=Path, action="append", required=True, help="a checkpoint in the ensemble")
    p.add_argument("--episodes", type=int, default=20, help="episodes per seed set")
    p.add_argument("--seeds", default="3000,4000,5000,6000", help="first seeds of the held-out sets, comma-separated")
    args = p.parse_args()
    agents = [evaluate.load_agent(args.single, device="cpu"), ensemble_agent(args.member)]
    result = {"single": str(args.single), "members": [str(m) for m in args.member], "episodes": args.episodes}
    print("| agent | seeds | mean | std | min |\n| --- | --- | ---: | ---: | ---: |")
    for agent, key in zip(agents, ("single", "ensemble")):
        returns = []
        for seed in (int(s) for s in args.seeds.split(",")):
            row = evaluate.evaluate_agent(agent, args.episodes, seed, lenient=False)
            returns += row["returns"]
            print(f"| {agent.label} | {seed}–{seed + args.episodes - 1} | {row['average']:.2f} | {row['std']:.2f} "
                  f"| {row['min']:.2f} |", flush=True)
        r = np.array(returns)
        print(f"| {agent.label} | all | {r.mean():.2f} | {r.std():.2f} | {r.min():.2f} |", flush=True)
        result[key] = {"mean": round(float(r.mean()), 2), "std": round(float(r.std()), 2),
                       "min": round(float(r.min()), 2), "returns": [round(float(x), 1) for x in r]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
