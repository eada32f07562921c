"""Environment speed: stock CarRacing-v3 vs FastCarRacing, the physics ceiling and the vector env.

    python bench/env_speed.py [--steps 500] [--rounds 5] [--skip-vector]

Random discrete actions (fixed seed), resets included, one core each. Stock and fast run the same
seeds and actions, and every observation is compared (the run fails if one differs). Stock, fast
and physics run in alternating chunks (`--rounds`), so a shared machine whose speed drifts during
the run slows them alike; the fast/stock ratio of each round is printed to show the spread. The
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
from config import load_config  # noqa: E402


class PhysicsOnly(envs.FastCarRacing):
    """No drawing at all: the Box2D + car dynamics ceiling."""

    def _render(self, mode):
        return None


class Runner:
    """Steps one environment with random actions (fixed seed), resets included, in chunks.

    `make()` builds either a stock env (the repeat is done here, by hand) or one whose wrappers
    repeat the action themselves (a FrameSkip somewhere in the stack). `record` collects the
    observations; `check` holds a reference every observation must equal."""

    def __init__(self, make, skip: int, seed: int = 0, record: list | None = None, check: list | None = None):
        self.env, self.skip, self.record, self.check = make(), skip, record, check
        self.skipper = self.env
        while not isinstance(self.skipper, envs.FrameSkip) and isinstance(self.skipper, gym.Wrapper):
            self.skipper = self.skipper.env
        self.fast = isinstance(self.skipper, envs.FrameSkip)
        self.rng = np.random.default_rng(seed)
        self.episode_seed = seed
        self.env.reset(seed=seed)
        self.steps = self.frames = self.done = 0  # timed steps and frames; all steps
        self.seconds = 0.0

    def advance(self, n: int, timed: bool = True) -> float:
        """`n` agent steps; returns their wall time (added to the totals when `timed`)."""
        env, skipper, frames = self.env, self.skipper, 0
        t0 = time.perf_counter()
        for i in range(self.done, self.done + n):
            action = int(self.rng.integers(5))
            if self.fast:
                before = skipper.frames
                obs, r, term, trunc, _ = env.step(action)
                frames += skipper.frames - before
            else:  # stock: the same repeat by hand
                for _ in range(self.skip):
                    obs, r, term, trunc, _ = env.step(action)
                    frames += 1
                    if term or trunc:
                        break
            if self.record is not None:
                self.record.append(obs.copy() if obs is not None else None)
            if self.check is not None and not np.array_equal(self.check[i], obs):
                raise SystemExit(f"observation {i} differs from stock at frame skip {self.skip}")
            if term or trunc:
                self.episode_seed += 1
                env.reset(seed=self.episode_seed)
        dt = time.perf_counter() - t0
        self.done += n
        if timed:
            self.steps += n
            self.frames += frames
            self.seconds += dt
        return dt

    def result(self) -> dict:
        return {"agent_steps_per_s": self.steps / self.seconds, "frames_per_s": self.frames / self.seconds}


def run(make, skip: int, steps: int) -> dict:
    runner = Runner(make, skip)
    runner.advance(steps)
    runner.env.close()
    return runner.result()


def interleaved(makers: dict, skip: int, steps: int, rounds: int, warmup: int = 25) -> tuple[dict, list[float]]:
    """Stock, fast and physics in alternating chunks of steps/rounds agent steps (the fast env checked
    against stock chunk by chunk), so that a machine whose speed drifts during the run slows all of
    them alike, after `warmup` untimed steps each (first-step checks, font and surface creation).
    Returns each one's result and the fast/stock ratio of every round."""
    reference: list = []
    runners = {"stock": Runner(makers["stock"], skip, record=reference),
               "fast": Runner(makers["fast"], skip, check=reference),
               "physics": Runner(makers["physics"], skip)}
    for runner in runners.values():
        runner.advance(warmup, timed=False)
    ratios = []
    for r in range(rounds):
        n = steps // rounds + (r < steps % rounds)
        dt = {name: runner.advance(n) for name, runner in runners.items()}
        ratios.append(dt["stock"] / dt["fast"])
    for runner in runners.values():
        runner.env.close()
    return {name: runner.result() for name, runner in runners.items()}, ratios


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
              "flip (numpy copy)": ("transform.flip", "_flipped"), "fill": ("'fill'",), "physics (Box2D + car)": ("b2World_Step", "car_dynamics.py:182"),
              "car + HUD drawing": ("car_dynamics.py:278", "_draw_car", "draw.polygon", "_render_indicators"),
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
    p.add_argument("--rounds", type=int, default=5, help="alternating chunks stock/fast/physics (default 5)")
    p.add_argument("--skip-vector", action="store_true", help="leave out the pipeline / vector-env rows")
    args = p.parse_args()

    stock = lambda: gym.make("CarRacing-v3", continuous=False)
    rows = {}
    round_ratios = {}
    for skip in (1, 4):
        makers = {"stock": stock,
                  "fast": lambda s=skip: envs.FrameSkip(envs.FastCarRacing(continuous=False), s, max_frames=1000),
                  "physics": lambda s=skip: envs.FrameSkip(PhysicsOnly(continuous=False), s, max_frames=1000)}
        results, round_ratios[skip] = interleaved(makers, skip, args.steps, args.rounds)
        for name, result in results.items():
            rows[f"{name}_fs{skip}"] = result
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
    for skip, rr in round_ratios.items():
        print(f"fast/stock per round, frame skip {skip}: " + " ".join(f"{r:.2f}" for r in rr)
              + f" (median {np.median(rr):.2f})")
    print("\nwhere the fast env's time goes (frame skip 4, profiled):")
    for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<26} {100 * v:5.1f}%")
    print(json.dumps({"bench": "env_speed", "steps": args.steps,
                      "results": {k: {m: round(v, 1) for m, v in r.items()} for k, r in rows.items()},
                      "ratios": {k: round(v, 3) for k, v in ratios.items()},
                      "round_ratios": {f"fs{k}": [round(r, 2) for r in v] for k, v in round_ratios.items()},
                      "fast_time_share": {k: round(v, 3) for k, v in breakdown.items()}}))


if __name__ == "__main__":
    main()
