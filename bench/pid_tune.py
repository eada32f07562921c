"""Tune the hand-written `pid` baseline on held-out tracks (never the table's seeds 0-49).

    python bench/pid_tune.py [--episodes 8] [--seed 100] [--variants 'base;fs1;{"v_max": 110}']

Each variant is a set of controller parameters (see `evaluate.PID_DEFAULTS`); every variant drives the
same tracks (seeds `--seed`, `--seed`+1, ...) with full 1000-frame episodes. Prints a table, best
first, and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
from config import load_config  # noqa: E402

VARIANTS = {  # relative to evaluate.PID_DEFAULTS; the first session's controller was "old"
    "base": {},
    "old": {"frame_skip": 4, "steer_deadband": 0.1, "v_max": 80.0, "v_min": 15.0},
    "fs4": {"frame_skip": 4},
    "deadband0.15": {"steer_deadband": 0.15},
    "deadband0.4": {"steer_deadband": 0.4},
    "slower": {"v_max": 110.0, "v_min": 35.0},
    "kd1.5": {"kd": 1.5},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--seed", type=int, default=100, help="first track (keep clear of the table's 0-49)")
    p.add_argument("--variants", default=";".join(VARIANTS), help="names or JSON objects, separated by ;")
    args = p.parse_args()
    rows = []
    for name in args.variants.split(";"):
        params = VARIANTS[name] if name in VARIANTS else json.loads(name)
        cfg = load_config({"lenient_termination": 0})
        agent = evaluate.pid_agent(cfg, **params)
        t0 = time.monotonic()
        row = evaluate.evaluate_agent(agent, args.episodes, args.seed, lenient=False)
        rows.append({"variant": name, **{k: row[k] for k in ("average", "min", "max", "std")},
                     "median": statistics.median(row["returns"]), "seconds": time.monotonic() - t0})
        print(f"{name:<12} {row['average']:8.1f} (min {row['min']:.1f}, max {row['max']:.1f})", flush=True)
    rows.sort(key=lambda r: -r["average"])
    print(f"\n{'variant':<12} {'average':>8} {'median':>8} {'min':>8} {'max':>8} {'std':>7} {'s':>6}")
    for r in rows:
        print(f"{r['variant']:<12} {r['average']:8.1f} {r['median']:8.1f} {r['min']:8.1f} {r['max']:8.1f} "
              f"{r['std']:7.1f} {r['seconds']:6.0f}")
    print(json.dumps({"bench": "pid_tune", "episodes": args.episodes, "seed": args.seed,
                      "rows": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
