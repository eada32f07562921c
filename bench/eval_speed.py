"""Seconds for one in-run held-out evaluation (`eval_episodes` full greedy episodes on the held-out
tracks) in a trainer with the default config: the trainer playing every track itself (the code before
2026-12-03 evening) against heldout.returns, where the actor process plays half of them at the
same time. The same trainer, threads, agent and tracks; both must give the same returns (checked).

    python bench/eval_speed.py [--agent pretrained/snn_hybrid_ddqn.pt] [--episodes 10] [--rounds 2]

The agent is loaded with `init_weights`, so its episodes are a trained policy's (full-length laps).
Prints one line per round and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import agents  # noqa: E402
import envs  # noqa: E402
import heldout  # noqa: E402
import config  # noqa: E402
import train  # noqa: E402


def trainer_for(agent: str, tmp: Path) -> train.Trainer:
    stored = config.as_trained(agents.read_agent(agent, ROOT)[1]["config"])
    # the agent's network and observations (its shape keys) and how it plays (precision, SNN dynamics)
    played = (*config.SHAPE_KEYS, "conv_precision", "snn_readout", "snn_tSteps", "snn_beta")
    keys = {k: stored[k] for k in played if k in stored}
    cfg = config.load_config({**keys, "name": "eval-speed", "runs_dir": str(tmp), "init_weights": agent,
                              "eval_every": 0})
    return train.Trainer(cfg, cfg.run_dir(), new_run=True)


def timed(fn) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", default="pretrained/snn_hybrid_ddqn.pt", help="an agent file or checkpoint")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both ways")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer_for(args.agent, Path(tmp))
        if t.actor is None or t.actor.kind != "process":
            sys.exit("no actor process here (actor auto takes one for images on a CPU with >= 2 cores)")
        seeds = [heldout.EVAL_SEED + i for i in range(args.episodes)]
        try:
            for r in range(args.rounds):
                alone, reference = timed(lambda: envs.evaluation_returns(t.cfg, t.greedy, seeds))
                shared, returns = timed(lambda: heldout.returns(t.cfg, t.greedy, args.episodes, t.actor))
                if returns != reference:
                    sys.exit(f"the evaluation with the actor differs: {returns} vs {reference}")
                rows.append({"round": r + 1, "trainer_alone_s": round(alone, 2), "with_actor_s": round(shared, 2),
                             "speedup": round(alone / shared, 2)})
                print(f"round {r + 1}: trainer alone {alone:7.2f} s   with the actor {shared:7.2f} s   "
                      f"{alone / shared:.2f}x   (mean return {sum(returns) / len(returns):.2f})", flush=True)
        finally:
            t.vec.close()
            t.metrics.close()
    print(json.dumps({"bench": "eval_speed", "agent": args.agent, "episodes": args.episodes, "rounds": rows}))


if __name__ == "__main__":
    main()
