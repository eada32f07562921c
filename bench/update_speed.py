"""Milliseconds per network update (Trainer.update: replay sample, three forward passes, backward,
Adam) for ANN / hybrid SNN / full SNN, float32 vs the bfloat16 encoder, at the default config.

    python bench/update_speed.py [--device auto] [--reps 30] [--set KEY=JSON ...]

The replay holds random CarRacing-shaped frames (the update's cost does not depend on their content).
On CUDA every timed update ends with a synchronize. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
import train  # noqa: E402

VARIANTS = [("ann", "-", "float32"), ("ann", "-", "bfloat16"), ("snn", "hybrid", "float32"),
            ("snn", "hybrid", "bfloat16"), ("snn", "full", "float32")]


def time_update(arch: str, mode: str, precision: str, device: str, reps: int, extra: dict, tmp: Path) -> float:
    keys = {"name": f"upd-{arch}-{mode}-{precision}", "architecture": arch, "conv_precision": precision,
            "runs_dir": str(tmp), "replay_size": 4000, "eval_every": 0, "device": device,
            "actor": "off", **extra}  # the update alone, on this process's threads (no worker takes one)
    if arch == "snn":
        keys["snn_mode"] = mode
    cfg = config.load_config(keys)
    t = train.Trainer(cfg, cfg.run_dir(), new_run=True)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        t.replay.add(0, int(rng.integers(5)), 1.0, False, rng.integers(0, 255, size=t.obs_shape, dtype=np.uint8))
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    for _ in range(5):
        t.update()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        t.update()
        sync()
        times.append(time.perf_counter() - t0)
    t.vec.close()
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--reps", type=int, default=30, help="timed updates per variant (median reported)")
    args, extra = config.parse_bench_args(p, what="variant")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, mode, precision in VARIANTS:
            ms = time_update(arch, mode, precision, args.device, args.reps, extra, Path(tmp))
            rows.append({"arch": arch, "snn_mode": mode, "conv_precision": precision, "update_ms": round(ms, 2)})
            print(f"{arch:<4} {mode:<7} {precision:<9} {ms:8.2f} ms", flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(json.dumps({"bench": "update_speed", "device": device, "set": extra, "results": rows}))


if __name__ == "__main__":
    main()
