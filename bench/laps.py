"""Why an agent scores what it does on CarRacing: laps finished, tiles visited, time limit reached.

    python bench/laps.py pretrained/snn_hybrid_ddqn.pt pretrained/ann_ddqn.pt [--episodes 50] [--seed 0]

Plays each checkpoint greedily on the fixed seeds of the evaluation table (full 1000-frame episodes,
no lenient termination) and counts, per agent: laps finished (every tile visited) and in how many
frames, episodes that reached the time limit with at least 97% of the tiles visited (too slow), and
episodes with under 90% visited (tiles skipped: a corner cut or a spin, never driven again). A
return of 900 needs the whole lap within ~1000 frames. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import carracing_fast  # noqa: E402
import envs  # noqa: E402
import evaluate  # noqa: E402


def laps(path: Path, episodes: int, seed: int) -> dict:
    agent = evaluate.load_agent(path, device="cpu")
    env = envs.make_env(agent.cfg.replace(lenient_termination=0))
    rows = []
    try:
        for i in range(episodes):
            ret, _ = envs.play_episode(env, agent.policy(env), seed=seed + i)
            u = env.unwrapped
            finished = u.tile_visited_count == len(u.track) or u.new_lap
            rows.append({"return": ret, "visited": u.tile_visited_count / len(u.track), "lap": bool(finished),
                         "frames": int(round(u.t * carracing_fast.cr.FPS)) - 1})  # reset() runs one physics frame
    finally:
        env.close()
    visited = np.array([r["visited"] for r in rows])
    return {"agent": agent.label, "average": float(np.mean([r["return"] for r in rows])),
            "laps_finished": sum(r["lap"] for r in rows), "lap_frames": sorted(r["frames"] for r in rows if r["lap"]),
            "too_slow": int(sum((not r["lap"]) and r["visited"] >= 0.97 for r in rows)),
            "tiles_skipped": int((visited < 0.9).sum()), "median_visited": float(np.median(visited)),
            "episodes": episodes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint or pretrained/*.pt files")
    p.add_argument("--episodes", type=int, default=50, help="episodes per agent (default 50)")
    p.add_argument("--seed", type=int, default=0, help="first track seed (default 0, as evaluate.py)")
    args = p.parse_args()
    results = [laps(path, args.episodes, args.seed) for path in args.checkpoints]
    print("| agent | average | laps finished | frames per finished lap | time limit at ≥97% tiles | "
          "<90% tiles visited | median tiles visited |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in results:
        frames = f"{min(r['lap_frames'])}–{max(r['lap_frames'])}" if r["lap_frames"] else "–"
        print(f"| {r['agent']} | {r['average']:.2f} | {r['laps_finished']}/{r['episodes']} | {frames} | "
              f"{r['too_slow']} | {r['tiles_skipped']} | {100 * r['median_visited']:.1f}% |")
    print(json.dumps({"bench": "laps", "results": results}))


if __name__ == "__main__":
    main()
