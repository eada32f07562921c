"""Speed of the Q-networks: forward at batch 1 (action selection) and one Double-DQN update.

    python bench/snn_speed.py [--snn-tsteps 25] [--batch 64] [--device auto] [--min-time 2]

Variants: ANN, hybrid SNN, full SNN (fast path), full SNN (naive snnTorch step-by-step loop, the
reference of tests/snn_reference.py). One update = online forward+backward on s, online and target
forwards on s' (Double-DQN argmax and evaluation), Huber loss, Adam step. Prints a table and one
JSON line with the median times and the ratios.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import models  # noqa: E402
from snn_reference import naive_forward  # noqa: E402
from config import load_config  # noqa: E402


def timed(fn, device, min_time: float, min_reps: int = 3, max_reps: int = 200) -> float:
    """Median seconds of fn() over repetitions filling at least min_time (after one warm-up)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_update(online, target, forward, batch: int, obs_shape, n_actions: int, device):
    opt = torch.optim.Adam(online.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 256, (batch, *obs_shape), generator=g, dtype=torch.uint8).to(device)
    s2 = torch.randint(0, 256, (batch, *obs_shape), generator=g, dtype=torch.uint8).to(device)
    a = torch.randint(0, n_actions, (batch,), generator=g).to(device)
    r = torch.randn(batch, generator=g).to(device)
    done = torch.zeros(batch, device=device)

    def update():
        with torch.no_grad():
            next_a = forward(online, s2).argmax(1, keepdim=True)
            next_q = forward(target, s2).gather(1, next_a).squeeze(1)
            y = r + 0.99 * (1 - done) * next_q
        q = forward(online, s).gather(1, a.unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
        opt.step()

    return update


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snn-tsteps", type=int, default=None, help="time steps (default: the config's snn_tSteps)")
    p.add_argument("--batch", type=int, default=None, help="update batch (default: the config's batch)")
    p.add_argument("--config", default=str(ROOT / "conf.json.example"), help="config to take sizes from")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of repetitions per measurement")
    p.add_argument("--skip-naive", action="store_true", help="leave out the (slow) naive full-SNN loop")
    args = p.parse_args()

    base = load_config(args.config)
    cfg = base.replace(**({"snn_tSteps": args.snn_tsteps} if args.snn_tsteps else {}),
                       **({"batch": args.batch} if args.batch else {}))
    device = models.resolve_device(args.device)
    channels = cfg.frame_stack * (1 if cfg.obs_grayscale else 3)
    obs_shape, n_actions = (channels, cfg.obs_size, cfg.obs_size), 5
    variants = [("ann", {"architecture": "ann"}, None),
                ("snn_hybrid", {"architecture": "snn", "snn_mode": "hybrid"}, None),
                ("snn_full_fast", {"architecture": "snn", "snn_mode": "full"}, None)]
    if not args.skip_naive:
        variants.append(("snn_full_naive", {"architecture": "snn", "snn_mode": "full"}, naive_forward))

    results = {}
    for name, keys, forward_fn in variants:
        torch.manual_seed(0)
        online = models.build_q_network(cfg.replace(**keys), obs_shape, n_actions).to(device)
        target = copy.deepcopy(online)
        forward = forward_fn or (lambda net, x: net(x))
        obs1 = torch.randint(0, 256, (1, *obs_shape), dtype=torch.uint8).to(device)

        def act():
            with torch.no_grad():
                forward(online, obs1).argmax(1)

        t_fwd = timed(act, device, args.min_time)
        t_upd = timed(make_update(online, target, forward, cfg.batch, obs_shape, n_actions, device), device,
                      args.min_time, min_reps=2)
        results[name] = {"forward_b1_ms": t_fwd * 1e3, "update_ms": t_upd * 1e3}
        print(f"measured {name}: forward {t_fwd * 1e3:.2f} ms, update {t_upd * 1e3:.1f} ms", file=sys.stderr)

    ann = results["ann"]
    ratios = {
        "hybrid_over_ann_update": results["snn_hybrid"]["update_ms"] / ann["update_ms"],
        "hybrid_over_ann_forward": results["snn_hybrid"]["forward_b1_ms"] / ann["forward_b1_ms"],
        "full_fast_over_ann_update": results["snn_full_fast"]["update_ms"] / ann["update_ms"],
    }
    if "snn_full_naive" in results:
        ratios["full_naive_over_fast_forward"] = (results["snn_full_naive"]["forward_b1_ms"]
                                                  / results["snn_full_fast"]["forward_b1_ms"])
        ratios["full_naive_over_fast_update"] = (results["snn_full_naive"]["update_ms"]
                                                 / results["snn_full_fast"]["update_ms"])
    print(f"\nobs {obs_shape}, hidden {cfg.hidden_layers}, T={cfg.snn_tSteps}, batch {cfg.batch}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<16} {'forward b=1 (ms)':>17} {'update (ms)':>12} {'update / ANN':>13}")
    for name, r in results.items():
        print(f"{name:<16} {r['forward_b1_ms']:>17.2f} {r['update_ms']:>12.1f} {r['update_ms'] / ann['update_ms']:>12.2f}x")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    print(json.dumps({"bench": "snn_speed", "device": str(device), "snn_tSteps": cfg.snn_tSteps, "batch": cfg.batch,
                      "obs_shape": list(obs_shape), "hidden_layers": cfg.hidden_layers,
                      "results": {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()},
                      "ratios": {k: round(v, 3) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
