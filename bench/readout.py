"""Which SNN readout fits Q-values best? mean / last / max over the output membrane.

    python bench/readout.py [--steps 600] [--tsteps 25] [--seeds 3]

A hybrid spiking Q-network (vector input, hidden [128]) regresses the Q-values of a fixed random
teacher MLP on 4096 CartPole-like states (targets scaled to CartPole's return range) with Adam and
Huber loss, once per readout and seed. Reports the final test loss and the initial output spread:
the readout that fits best with the same budget is the default. A JSON line closes the output.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from config import load_config  # noqa: E402


def run(readout: str, seed: int, steps: int, tsteps: int) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(4096, 4, generator=g)
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
        y = teacher(x) * 20 + 50  # Q-like targets
    train_x, test_x, train_y, test_y = x[:3584], x[3584:], y[:3584], y[3584:]
    torch.manual_seed(seed)
    cfg = load_config({"architecture": "snn", "hidden_layers": [128], "snn_tSteps": tsteps, "snn_readout": readout})
    net = models.build_q_network(cfg, (4,), 2)
    with torch.no_grad():
        spread = float(net(test_x).std())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(steps):
        idx = torch.randint(0, len(train_x), (128,), generator=g)
        loss = F.smooth_l1_loss(net(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test = float(F.smooth_l1_loss(net(test_x), test_y))
    return {"test_loss": test, "init_spread": spread}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--tsteps", type=int, default=25)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    for readout in ("mean", "last", "max"):
        runs = [run(readout, s, args.steps, args.tsteps) for s in range(args.seeds)]
        results[readout] = {"test_loss": statistics.mean(r["test_loss"] for r in runs),
                            "test_loss_runs": [round(r["test_loss"], 3) for r in runs],
                            "init_spread": statistics.mean(r["init_spread"] for r in runs)}
        print(f"{readout:<5} test Huber loss {results[readout]['test_loss']:.3f} {results[readout]['test_loss_runs']} "
              f"initial output std {results[readout]['init_spread']:.3f}", flush=True)
    best = min(results, key=lambda k: results[k]["test_loss"])
    print(json.dumps({"bench": "readout", "steps": args.steps, "snn_tSteps": args.tsteps, "best": best,
                      "results": {k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in r.items()}
                                  for k, r in results.items()}}))


if __name__ == "__main__":
    main()
