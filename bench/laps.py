"""Why an agent scores what it does on CarRacing: laps finished, tiles visited, time limit reached.

    python bench/laps.py pretrained/snn_hybrid_ddqn.pt pretrained/ann_ddqn.pt [--episodes 50] [--seed 0]

Plays each checkpoint greedily on the fixed seeds of the evaluation table (full 1000-frame episodes,
no lenient termination) and counts, per agent: laps finished (every tile visited: only that ends an
episode early, stock's `new_lap` cannot fire because the start tile is visited at the first frame) and in
how many frames; and for the laps not finished, where the unvisited tiles are: a run at the end of the
track (the car was still driving towards them at the time limit: too slow) or anywhere before it (skipped:
a corner cut or an excursion off the road; the episode then runs to the time limit, ~0.1 per frame
lost on top of the tiles). A return of 900 needs every tile within ~1000 frames. Pace: the hull's mean
speed (units/s) at the agent's decisions and how often it chose each action. Prints a table and one JSON
line.
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


ACTIONS = ("nothing", "left", "right", "gas", "brake")  # CarRacing's discrete actions, in order


def missed_tiles(missed: list[int], n_tiles: int) -> tuple[int, int]:
    """(tiles not reached at the end of the track, tiles skipped before it) among the `missed` indices."""
    missed = sorted(missed)
    behind = 0
    while behind < len(missed) and missed[-1 - behind] == n_tiles - 1 - behind:
        behind += 1
    return behind, len(missed) - behind


def laps(path: Path, episodes: int, seed: int) -> dict:
    agent = evaluate.load_agent(path, device="cpu")
    env = envs.make_env(agent.cfg.for_evaluation())
    rows = []
    policy = agent.policy(env)
    actions, speeds = [], []  # pace: which action, and the hull's speed when it was chosen

    def watched(obs):
        action = policy(obs)
        actions.append(int(action))
        speeds.append(float(np.hypot(*env.unwrapped.car.hull.linearVelocity)))
        return action

    try:
        for i in range(episodes):
            ret, _ = envs.play_episode(env, watched, seed=seed + i)
            u = env.unwrapped
            finished = u.tile_visited_count == len(u.track) or u.new_lap
            behind, skipped = missed_tiles([t.idx for t in u.road if not t.road_visited], len(u.track))
            rows.append({"return": ret, "visited": u.tile_visited_count / len(u.track), "lap": bool(finished),
                         "behind": behind, "skipped": skipped,
                         "frames": int(round(u.t * carracing_fast.cr.FPS)) - 1})  # reset() runs one physics frame
    finally:
        env.close()
    visited = np.array([r["visited"] for r in rows])
    return {"agent": agent.label, "average": float(np.mean([r["return"] for r in rows])),
            "laps_finished": sum(r["lap"] for r in rows), "lap_frames": sorted(r["frames"] for r in rows if r["lap"]),
            "too_slow": sum(r["behind"] > 0 for r in rows), "skipped": sum(r["skipped"] > 0 for r in rows),
            "skipped_tiles": sorted(r["skipped"] for r in rows if r["skipped"]), "median_visited": float(np.median(visited)),
            "episodes": episodes, "mean_speed": float(np.mean(speeds)),
            "action_shares": dict(zip(ACTIONS, (np.bincount(actions, minlength=len(ACTIONS)) / len(actions)).round(3).tolist()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint or pretrained/*.pt files")
    p.add_argument("--episodes", type=int, default=50, help="episodes per agent (default 50)")
    p.add_argument("--seed", type=int, default=0, help="first track seed (default 0, as evaluate.py)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)  # one decision at a time, as evaluate.py (docs/benchmarks.md#evaluation-threads)
    results = [laps(path, args.episodes, args.seed) for path in args.checkpoints]
    print("| agent | average | laps finished | frames per finished lap | end of track not reached (too slow) | "
          "tiles skipped before it (tiles per episode) | median tiles visited | mean speed | gas / nothing / steer / brake |")
    print("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |")
    for r in results:
        frames = f"{min(r['lap_frames'])}–{max(r['lap_frames'])}" if r["lap_frames"] else "–"
        share = r["action_shares"]
        counts = f"{min(r['skipped_tiles'])}–{max(r['skipped_tiles'])}" if r["skipped_tiles"] else "–"
        print(f"| {r['agent']} | {r['average']:.2f} | {r['laps_finished']}/{r['episodes']} | {frames} | "
              f"{r['too_slow']} | {r['skipped']} ({counts}) | {100 * r['median_visited']:.1f}% | "
              f"{r['mean_speed']:.1f} | {share['gas']:.0%} / {share['nothing']:.0%} / "
              f"{share['left'] + share['right']:.0%} / {share['brake']:.0%} |")
    print(json.dumps({"bench": "laps", "results": results}))


if __name__ == "__main__":
    main()
