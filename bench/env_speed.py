"""Environment speed: stock CarRacing-v3 vs FastCarRacing, the physics ceiling and the vector env.

    python bench/env_speed.py [--steps 500] [--skip-vector]

Random discrete actions (fixed seed), resets included, one core each. Stock and fast run the same
seeds and actions, and every observation is compared (the run fails if one differs). The
"physics" row is FastCarRacing with drawing switched off: the ceiling the fast env could reach.
Then a profile of the fast env at frame skip 4 says where its time goes, and the full training
pipeline (preprocessing, frame stack) runs in one process and as a vector env with 2 workers.
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import envs  # noqa: E402
from utils import load_config  # noqa: E402


class PhysicsOnly(envs.FastCarRacing):
    """No drawing at all: the Box2D + car dynamics ceiling."""

    def _render(self, mode):
        return None


def run(make, skip: int, steps: int, seed: int = 0, record: list | None = None, check: list | None = None):
    """Agent steps/s and frames/s of `steps` agent steps of random actions, resets included.

    `make()` builds either a stock env (the repeat is done here, by hand) or one whose wrappers
    repeat the action themselves (a FrameSkip somewhere in the stack)."""
    env = make()
    skipper = env
    while not isinstance(skipper, envs.FrameSkip) and isinstance(skipper, gym.Wrapper):
        skipper = skipper.env
    fast = isinstance(skipper, envs.FrameSkip)
    rng = np.random.default_rng(seed)
    episode_seed = seed
    obs, _ = env.reset(seed=episode_seed)
    frames = 0
    t0 = time.perf_counter()
    for i in range(steps):
        action = int(rng.integers(5))
        if fast:
            before = skipper.frames
            obs, r, term, trunc, _ = env.step(action)
            frames += skipper.frames - before
        else:  # stock: the same repeat by hand
            for _ in range(skip):
                obs, r, term, trunc, _ = env.step(action)
                frames += 1
                if term or trunc:
                    break
        if record is not None:
            record.append(obs.copy() if obs is not None else None)
        if check is not None and not np.array_equal(check[i], obs):
            raise SystemExit(f"observation {i} differs from stock at frame skip {skip}")
        if term or trunc:
            episode_seed += 1
            obs, _ = env.reset(seed=episode_seed)
    dt = time.perf_counter() - t0
    env.close()
    return {"agent_steps_per_s": steps / dt, "frames_per_s": frames / dt}


def profile_fast(steps: int) -> dict:
    env = envs.FrameSkip(envs.FastCarRacing(continuous=False), 4, max_frames=1000)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(5)))
        if term or trunc:
            env.reset()
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values())  # tottime of everything
    groups = {"polygons (gfxdraw)": ("filled_polygon", "aapolygon"), "smoothscale to 96x96": ("smoothscale",),
              "flip": ("transform.flip",), "fill": ("'fill'",), "physics (Box2D + car)": ("b2World_Step", "car_dynamics.py:182"),
              "car + HUD drawing": ("car_dynamics.py:278", "draw.polygon", "_render_indicators"),
              "track generation (reset)": ("_create_track",)}
    share = {k: 0.0 for k in groups}
    for (file, line, name), v in stats.items():
        label = f"{Path(file).name}:{line}"
        for group, keys in groups.items():
            if any(k == label or (file == "~" and k in name) or k == name for k in keys):
                share[group] += v[2] if group != "track generation (reset)" else v[3]
    share = {k: v / total for k, v in share.items()}
    share["python + numpy glue"] = max(0.0, 1 - sum(share.values()))
    return share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500, help="agent steps per measurement")
    p.add_argument("--skip-vector", action="store_true", help="leave out the pipeline / vector-env rows")
    args = p.parse_args()

    stock = lambda: gym.make("CarRacing-v3", continuous=False)
    rows = {}
    for skip in (1, 4):
        fast = lambda s=skip: envs.FrameSkip(envs.FastCarRacing(continuous=False), s, max_frames=1000)
        physics = lambda s=skip: envs.FrameSkip(PhysicsOnly(continuous=False), s, max_frames=1000)
        reference: list = []
        rows[f"stock_fs{skip}"] = run(stock, skip, args.steps, record=reference)
        rows[f"fast_fs{skip}"] = run(fast, skip, args.steps, check=reference)
        rows[f"physics_fs{skip}"] = run(physics, skip, args.steps)
        print(f"frame skip {skip}: stock {rows[f'stock_fs{skip}']['agent_steps_per_s']:.0f}, fast "
              f"{rows[f'fast_fs{skip}']['agent_steps_per_s']:.0f}, physics {rows[f'physics_fs{skip}']['agent_steps_per_s']:.0f}"
              " agent steps/s (observations identical)", file=sys.stderr)
    if not args.skip_vector:
        cfg = load_config({"frame_skip": 4})
        rows["pipeline_fs4_1proc"] = run(lambda: envs.make_env(cfg), 4, args.steps)
        vec = envs.make_vector_env(cfg.replace(agents=2))
        rng = np.random.default_rng(0)
        vec.reset(seed=0)
        t0 = time.perf_counter()
        n = args.steps // 2
        for _ in range(n):
            vec.step(rng.integers(5, size=2))
        dt = time.perf_counter() - t0
        vec.close()
        rows["vector_fs4_2workers"] = {"agent_steps_per_s": 2 * n / dt, "frames_per_s": 8 * n / dt}
    breakdown = profile_fast(max(100, args.steps // 2))

    ratios = {f"fast_over_stock_fs{s}": rows[f"fast_fs{s}"]["agent_steps_per_s"] / rows[f"stock_fs{s}"]["agent_steps_per_s"]
              for s in (1, 4)}
    ratios.update({f"fast_over_physics_fs{s}": rows[f"fast_fs{s}"]["agent_steps_per_s"]
                   / rows[f"physics_fs{s}"]["agent_steps_per_s"] for s in (1, 4)})
    print(f"\n{'variant':<22} {'agent steps/s':>14} {'frames/s':>10}")
    for name, r in rows.items():
        print(f"{name:<22} {r['agent_steps_per_s']:>14.1f} {r['frames_per_s']:>10.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    print("\nwhere the fast env's time goes (frame skip 4, profiled):")
    for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<26} {100 * v:5.1f}%")
    print(json.dumps({"bench": "env_speed", "steps": args.steps,
                      "results": {k: {m: round(v, 1) for m, v in r.items()} for k, r in rows.items()},
                      "ratios": {k: round(v, 3) for k, v in ratios.items()},
                      "fast_time_share": {k: round(v, 3) for k, v in breakdown.items()}}))


if __name__ == "__main__":
    main()
