"""Checkpoint seconds and MB on CarRacing with a full replay, before and after incremental segments.

    python bench/checkpoint_speed.py [--sizes 10000,50000,100000] [--new 2500] [--arch snn]

For each replay size: a real Trainer (default config, FastCarRacing) whose replay is filled with real
CarRacing frames (a few thousand from the `pid` baseline driving several tracks, as a trained agent's
frames look, replayed in shuffled order so that neighbouring frames differ as in training). "before" writes the whole replay into the checkpoint, as
every checkpoint did until incremental segments (zlib of all frames, then the file's sha256 read-back);
"after" is the steady state with segments: one checkpoint has saved the replay, `--new` more frames
arrive (2500 = the default checkpoint_every of 10 episodes at 250 agent steps each), and the next
checkpoint writes them. Both go through Trainer.state_dict and checkpoints.write, read-back included.
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import checkpoints  # noqa: E402
import config  # noqa: E402
import envs  # noqa: E402
import evaluate  # noqa: E402
import train  # noqa: E402


class FullReplay:
    """The checkpoint path before segments: the replay's whole state, frames included, in the file."""

    last_bytes = 0

    def capture(self, replay, step):
        return replay.state_dict()


def real_observations(cfg, n: int, seed: int = 0) -> np.ndarray:
    """`n` observations of the pid baseline driving (ε 0.1), a new track every 500 steps."""
    env = envs.make_env(cfg)
    rng = np.random.default_rng(seed)
    act = evaluate.pid_agent(cfg).policy(env)
    env.reset(seed=seed)
    out = []
    while len(out) < n:
        action = act(None) if rng.random() > 0.1 else int(rng.integers(5))
        obs, _, term, trunc, _ = env.step(action)
        out.append(np.array(obs))  # the wrappers reuse their buffer
        if term or trunc or len(out) % 500 == 0:
            env.reset(seed=seed + len(out))
            act = evaluate.pid_agent(cfg).policy(env)
    env.close()
    return np.stack(out)


def add_frames(trainer, pool: np.ndarray, n: int, rng) -> None:
    order = rng.integers(0, len(pool), size=n)
    for i, k in enumerate(order):
        if i % 250 == 0:
            trainer.replay.start(0, pool[k])
        else:
            trainer.replay.add(0, int(rng.integers(5)), 1.0, False, pool[k])
        trainer.state.global_step += 1


def timed_checkpoint(trainer) -> tuple[float, float]:
    t0 = time.perf_counter()
    state = trainer.state_dict(None)
    _, size = checkpoints.write(trainer.ckpt_dir, state, keep=2)
    return time.perf_counter() - t0, (size + trainer.replay_segments.last_bytes) / 2**20


def measure(size: int, new: int, arch: str, pool: np.ndarray, tmp: Path) -> dict:
    cfg = config.load_config({"name": f"ckpt-{size}", "architecture": arch, "runs_dir": str(tmp),
                             "replay_size": size, "eval_every": 0, "actor": "off"})
    trainer = train.Trainer(cfg, cfg.run_dir(), new_run=True)
    rng = np.random.default_rng(size)
    add_frames(trainer, pool, size, rng)
    trainer.update()  # Adam's moments exist, as in every checkpoint of a training run
    segments = trainer.replay_segments
    trainer.replay_segments = FullReplay()
    before_s, before_mb = timed_checkpoint(trainer)
    trainer.replay_segments = segments
    trainer.state.global_step += 1
    first_s, first_mb = timed_checkpoint(trainer)  # the first one after a (re)start saves every frame once
    add_frames(trainer, pool, new, rng)
    after_s, after_mb = timed_checkpoint(trainer)
    return {"replay": size, "before_s": before_s, "before_mb": before_mb, "first_s": first_s, "first_mb": first_mb,
            "after_s": after_s, "after_mb": after_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,50000,100000", help="replay sizes (frames held), comma-separated")
    p.add_argument("--new", type=int, default=2500, help="frames added between the two timed checkpoints")
    p.add_argument("--arch", default="snn", choices=("snn", "ann"))
    p.add_argument("--pool", type=int, default=4000, help="real CarRacing frames collected to fill the replay")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = config.load_config({"name": "pool"})
    pool = real_observations(base, args.pool)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rows.append(measure(size, args.new, args.arch, pool, Path(tmp)))
            r = rows[-1]
            print(f"replay {size}: before {r['before_s']:.2f} s {r['before_mb']:.1f} MB, "
                  f"after {r['after_s']:.2f} s {r['after_mb']:.1f} MB", flush=True)
    print(f"\n{'replay':>8} {'before s':>9} {'before MB':>10} {'after s':>8} {'after MB':>9} "
          f"{'first after restart s':>22} {'MB':>7}")
    for r in rows:
        print(f"{r['replay']:>8} {r['before_s']:>9.2f} {r['before_mb']:>10.1f} {r['after_s']:>8.2f} "
              f"{r['after_mb']:>9.1f} {r['first_s']:>22.2f} {r['first_mb']:>7.1f}")
    print(json.dumps({"bench": "checkpoint_speed", "arch": args.arch, "new_frames": args.new,
                      "results": [{k: round(v, 3) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
