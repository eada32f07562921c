"""Short-run tuning sweep on CarRacing-v3: one change at a time against the base training config.

    python bench/tune.py [--variants base,per,...] [--steps 40000] [--episodes 10] [--out docs/tuning.jsonl]
    python bench/tune.py --report      # the table and docs/tuning.png from what is recorded

Every variant trains from scratch with train.Trainer (the real loop) for `--steps` agent steps and
then plays `--episodes` greedy full episodes (no lenient termination) on fixed seeds 100, 101, ...
(tracks kept apart from the 0-49 of the published table). One JSON line per finished variant is
appended to `--out`, so a killed sweep goes on where it stopped (finished variants are skipped);
several sweeps may run side by side on one file (each re-reads it before a variant). `--keep-metrics DIR`
keeps each variant's training curve (its metrics.csv) when the temporary run folder goes. At the end a
markdown table of every recorded variant is printed and a bar chart written (`--plot`). `--list`
shows the variants.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import train  # noqa: E402
import config  # noqa: E402

# The configuration the shipped agents were trained with (README "How they were trained"): the defaults
# before train_every 8, conv_precision auto and the actor process, with the input size, pinned so that every recorded `base`
# row compares alike whatever today's defaults are.
BASE = {"env_id": "CarRacing-v3", "architecture": "ann", "lenient_termination": 25, "eval_every": 0,
        "checkpoint_every": 10**6, "save_replay": False, "stop_learning_at_win_percent": 0,
        "max_run_time": 10**6, "seed": 0, "train_every": 4, "conv_precision": "float32",
        "obs_size": 84, "actor": "off", "encoder": "nature"}

VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("shipped config (ANN)", {}),
    "base-seed1": ("shipped config, seed 1 (noise)", {"seed": 1}),
    "lr2.5e-4": ("learning_rate 2.5e-4", {"learning_rate": 2.5e-4}),
    "soft-tau": ("soft target, tau 0.005 every step", {"target_update_every": 1, "target_tau": 0.005}),
    "per": ("prioritized replay", {"prioritized_replay": True}),
    "no-lenient": ("lenient_termination off", {"lenient_termination": 0}),
    "decay0.98": ("epsilon x0.98 per episode", {"decay": 0.98}),
    "decay0.995": ("epsilon x0.995 per episode", {"decay": 0.995}),
    "train-every2": ("an update every 2 agent steps", {"train_every": 2}),
    "stack2": ("frame_stack 2", {"frame_stack": 2}),
    "snn-mean": ("SNN hybrid T=25, readout mean", {"architecture": "snn", "snn_readout": "mean"}),
    "snn-last": ("SNN hybrid T=25, readout last", {"architecture": "snn", "snn_readout": "last"}),
    "bf16": ("conv_precision bfloat16", {"conv_precision": "bfloat16"}),
    "bf16-seed1": ("conv_precision bfloat16, seed 1", {"conv_precision": "bfloat16", "seed": 1}),
    "nstep3": ("n_step 3", {"n_step": 3}),
    "nstep3-seed1": ("n_step 3, seed 1", {"n_step": 3, "seed": 1}),
    "dueling": ("dueling head", {"dueling": True}),
    "dueling-seed1": ("dueling head, seed 1", {"dueling": True, "seed": 1}),
    "gamma0.995": ("gamma 0.995", {"gamma": 0.995}),
    "gamma0.995-seed1": ("gamma 0.995, seed 1", {"gamma": 0.995, "seed": 1}),
    "train-every8": ("an update every 8 agent steps (half the updates)", {"train_every": 8}),
    "train-every8-seed1": ("an update every 8 agent steps, seed 1", {"train_every": 8, "seed": 1}),
    "train-every8-bf16": ("half the updates and a bfloat16 encoder", {"train_every": 8, "conv_precision": "bfloat16"}),
    "train-every8-bf16-seed1": ("half the updates and a bfloat16 encoder, seed 1",
                                {"train_every": 8, "conv_precision": "bfloat16", "seed": 1}),
    "base-seed2": ("shipped config, seed 2 (noise)", {"seed": 2}),
    "train-every8-bf16-seed2": ("half the updates and a bfloat16 encoder, seed 2",
                                {"train_every": 8, "conv_precision": "bfloat16", "seed": 2}),
    "snn-mean-seed1": ("SNN hybrid T=25, readout mean, seed 1", {"architecture": "snn", "snn_readout": "mean", "seed": 1}),
    "snn-soft-tau": ("SNN hybrid T=25, soft target tau 0.005 every step",
                     {"architecture": "snn", "snn_readout": "mean", "target_update_every": 1, "target_tau": 0.005}),
    "snn-soft-tau-seed1": ("SNN hybrid T=25, soft target tau 0.005 every step, seed 1",
                           {"architecture": "snn", "snn_readout": "mean", "target_update_every": 1, "target_tau": 0.005,
                            "seed": 1}),
    "snn-train-every8-bf16": ("SNN hybrid T=25, half the updates and a bfloat16 encoder",
                              {"architecture": "snn", "snn_readout": "mean", "train_every": 8, "conv_precision": "bfloat16"}),
    "snn-train-every8-bf16-seed1": ("SNN hybrid T=25, half the updates and a bfloat16 encoder, seed 1",
                                    {"architecture": "snn", "snn_readout": "mean", "train_every": 8,
                                     "conv_precision": "bfloat16", "seed": 1}),
    # the target-update period, on the fast config (compare with train-every8-bf16 and its seed1)
    **{f"train-every8-bf16-target{n}{sfx}": (f"half the updates, bfloat16 encoder, target_update_every {n}"
                                             + (f", seed {seed}" if seed else ""),
                                             {"train_every": 8, "conv_precision": "bfloat16", "target_update_every": n,
                                              **({"seed": seed} if seed else {})})
       for n in (500, 2000) for seed, sfx in ((0, ""), (1, "-seed1"))},
    # a smaller input (64x64: the encoder's output 4x4 instead of 7x7, about half the update's cost), on the
    # bfloat16 encoder of the default config; compare with bf16 / bf16-seed1 at the same --steps
    **{f"bf16-obs64{sfx}": ("conv_precision bfloat16, obs_size 64" + (f", seed {seed}" if seed else ""),
                            {"conv_precision": "bfloat16", "obs_size": 64, **({"seed": seed} if seed else {})})
       for seed, sfx in ((0, ""), (1, "-seed1"))},
    # the same for the hybrid SNN (compare with snn-mean / snn-mean-seed1 at the same --steps)
    **{f"snn-bf16-obs64{sfx}": ("SNN hybrid T=25, readout mean, bfloat16 encoder, obs_size 64"
                                + (f", seed {seed}" if seed else ""),
                                {"architecture": "snn", "snn_readout": "mean", "conv_precision": "bfloat16",
                                 "obs_size": 64, **({"seed": seed} if seed else {})})
       for seed, sfx in ((0, ""), (1, "-seed1"))},
    # the actor process (the policy one update behind), on the bfloat16 encoder of the default config; compare
    # with bf16 / bf16-seed1 at the same --steps
    **{f"bf16-actor{sfx}": ("conv_precision bfloat16, actor process" + (f", seed {seed}" if seed else ""),
                            {"conv_precision": "bfloat16", "actor": "process", **({"seed": seed} if seed else {})})
       for seed, sfx in ((0, ""), (1, "-seed1"))},
    # the plain loop on today's code (fused Adam, frames straight to bfloat16): the same-code reference for bf16-actor
    **{f"bf16-off{sfx}": ("conv_precision bfloat16, actor off (plain loop)" + (f", seed {seed}" if seed else ""),
                          {"conv_precision": "bfloat16", "actor": "off", **({"seed": seed} if seed else {})})
       for seed, sfx in ((0, ""), (1, "-seed1"))},
    # the first DQN's encoder (16 and 32 channels, two convolutions: a third of the arithmetic), on the bfloat16
    # encoder of the default config; compare with bf16-off / bf16-off-seed1 (40k) or bf16 / bf16-seed1 (100k)
    **{f"bf16-nips{sfx}": ("conv_precision bfloat16, encoder nips" + (f", seed {seed}" if seed else ""),
                           {"conv_precision": "bfloat16", "encoder": "nips", **({"seed": seed} if seed else {})})
       for seed, sfx in ((0, ""), (1, "-seed1"))},
    # the same for the hybrid SNN, and its reference on the Nature encoder (bfloat16; the default until 2026-12-03)
    **{f"snn-bf16{enc_sfx}{sfx}": ("SNN hybrid T=25, readout mean, bfloat16 encoder" + (", encoder nips" if enc_sfx else "")
                                   + (f", seed {seed}" if seed else ""),
                                   {"architecture": "snn", "snn_readout": "mean", "conv_precision": "bfloat16",
                                    "encoder": "nips" if enc_sfx else "nature", **({"seed": seed} if seed else {})})
       for enc_sfx in ("", "-nips") for seed, sfx in ((0, ""), (1, "-seed1"), (2, "-seed2"))},
    # prioritized replay at a longer budget (run with --steps 100000, against train-every8-bf16 at the same steps)
    "train-every8-bf16-per": ("half the updates, bfloat16 encoder, prioritized replay",
                              {"train_every": 8, "conv_precision": "bfloat16", "prioritized_replay": True}),
    "train-every8-bf16-per-seed1": ("half the updates, bfloat16 encoder, prioritized replay, seed 1",
                                    {"train_every": 8, "conv_precision": "bfloat16", "prioritized_replay": True,
                                     "seed": 1}),
}


def run_variant(name: str, steps: int, episodes: int, runs_dir: Path, keep: Path | None = None) -> dict:
    label, overrides = VARIANTS[name]
    cfg = config.load_config({**BASE, **overrides, "name": f"tune-{name}", "runs_dir": str(runs_dir),
                             "total_steps": steps})
    trainer = train.Trainer(cfg, cfg.run_dir(), new_run=True)
    start = time.perf_counter()
    trainer.run()
    train_s = time.perf_counter() - start
    if trainer.state.global_step < steps:  # SIGTERM/Ctrl-C stop the bout: the sweep stops, nothing half-trained recorded
        raise SystemExit(f"tune: variant {name} stopped at {trainer.state.global_step} of {steps} agent steps; not recorded")
    with open(cfg.run_dir() / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    if keep is not None:  # the training curve outlives the temporary run folder
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg.run_dir() / "metrics.csv", keep / f"{name}-{steps}.csv")
    last = [float(r["return"]) for r in rows[-50:]]
    agent = evaluate.Agent(name, cfg, lambda env: trainer.greedy)
    ev = evaluate.evaluate_agent(agent, episodes, seed=100, lenient=False)
    return {"variant": name, "change": label, "overrides": overrides, "steps": trainer.state.global_step,
            "episodes_trained": trainer.state.episode, "train_s": round(train_s), "train_last50": round(float(np.mean(last)), 1),
            "eval_mean": round(ev["average"], 1), "eval_std": round(ev["std"], 1), "eval_min": round(ev["min"], 1),
            "eval_episodes": episodes, "eval_returns": [round(r, 1) for r in ev["returns"]]}


def recorded(out: Path, steps: int) -> list[dict]:
    """The results in `out` of variants trained for `steps` agent steps."""
    if not out.exists():
        return []
    return [r for r in map(json.loads, out.read_text().splitlines()) if r["steps"] == steps]


def print_table(results: list[dict]) -> None:
    """A markdown table of the recorded variants, best greedy evaluation first."""
    print("\n| variant | change | episodes | train s | last 50 train | eval mean | eval std | eval min |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(results, key=lambda r: -r["eval_mean"]):
        print(f"| {r['variant']} | {r['change']} | {r['episodes_trained']} | {r['train_s']} | {r['train_last50']} | "
              f"{r['eval_mean']} | {r['eval_std']} | {r['eval_min']} |")


def plot(results: list[dict], out_png: Path) -> Path:
    """Every variant's greedy evaluation returns (dots), their mean ± std (bar) and the mean training
    return of its last 50 episodes (diamond), best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["eval_mean"])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.5))
    ys = np.arange(len(results))
    ax.barh(ys, [r["eval_mean"] for r in results], xerr=[r["eval_std"] for r in results], color="#9ecae1",
            capsize=3, label="greedy eval mean ± std")
    for y, r in zip(ys, results):
        ax.plot(r["eval_returns"], [y] * len(r["eval_returns"]), "k.", markersize=3, alpha=0.6)
    ax.plot([r["train_last50"] for r in results], ys, "D", color="#e6550d", markersize=5,
            label="training return, last 50 episodes")
    ax.set_yticks(ys, [f"{r['variant']}: {r['change']}" for r in results], fontsize=8)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_xlabel(f"return ({results[0]['steps']} agent steps of training; {results[0]['eval_episodes']} greedy episodes)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main() -> None:
    import run  # the launcher's allocator settings (large tensors otherwise page-fault on every update: ~2x slower)

    missing = {k: v for k, v in run.ALLOCATOR_DEFAULTS.items() if k not in os.environ}
    if missing:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (see --list)")
    p.add_argument("--steps", type=int, default=40_000, help="agent steps per short run (default 40000)")
    p.add_argument("--episodes", type=int, default=10, help="greedy evaluation episodes (default 10)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "tuning.jsonl", help="JSON lines, appended")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--report", action="store_true", help="train nothing: print the table and write the plot "
                   "of what --out holds for --steps")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "tuning.png", help="bar chart written at the end")
    p.add_argument("--keep-metrics", type=Path, metavar="DIR", help="copy each finished variant's metrics.csv to "
                   "DIR/<variant>-<steps>.csv (plot them with metrics.plot_runs); the runs themselves are temporary")
    args = p.parse_args()
    if args.list:
        for name, (label, overrides) in VARIANTS.items():
            print(f"{name:<13} {label:<36} {json.dumps(overrides)}")
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; see --list")
    if not args.report:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                # read again before every variant: sweeps may run side by side on one file
                if any(r["variant"] == name for r in recorded(args.out, args.steps)):
                    print(f"{name}: already recorded in {args.out}, skipped", file=sys.stderr)
                    continue
                result = run_variant(name, args.steps, args.episodes, Path(tmp), args.keep_metrics)
                print(json.dumps(result), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
    results = recorded(args.out, args.steps)
    if not results:
        sys.exit(f"error: {args.out} holds no variant trained for {args.steps} steps")
    print_table(results)
    print(f"\nplot: {plot(results, args.plot)}")


if __name__ == "__main__":
    main()
