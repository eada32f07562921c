"""Held-out score against frames for one or several runs (the from-scratch runs' plot in docs/results.md).

    python bench/heldout_curve.py runs/carracing runs/carracing-seed1 --out docs/from_scratch.png

Each point is an in-run held-out evaluation (`eval_return` of metrics.csv: full greedy episodes on seeds
10000+); frames are agent steps x the run's frames per step (frame_skip for CarRacing). The solve line (900)
and the 3M-frame budget are drawn; a line per run, its label the run folder's name.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402


def curve(run_dir: Path) -> tuple[list[float], list[float], int]:
    m = metrics.read_metrics(run_dir / "metrics.csv")
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    per_step = cfg.get("frame_skip", 4) if str(cfg.get("env_id", "CarRacing")).startswith(("CarRacing", "Fast")) else 1
    points = [(s * per_step, r) for s, r in zip(m.get("global_step", []), m.get("eval_return", [])) if not math.isnan(r)]
    return [p[0] for p in points], [p[1] for p in points], per_step


def best_score(run_dir: Path, per_step: int) -> tuple[float, float, int] | None:
    """(frames, score, tracks) of a finished run's best.pt scored on fresh tracks, or None."""
    import checkpoints

    path = run_dir / checkpoints.BEST_NAME
    ev = (checkpoints.read(path).get("evaluation") or {}) if path.is_file() else {}
    best = checkpoints.read(path) if "score_mean" in ev else None
    return (checkpoints.trained_steps(best) * per_step, ev["score_mean"], ev["score_episodes"]) if best else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--budget", type=float, default=3e6, help="frames budget drawn as a line (default 3M)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for run in args.runs:
        xs, ys, per_step = curve(run)
        if xs:
            line, = ax.plot([x / 1e6 for x in xs], ys, marker="o", markersize=2, linewidth=1, label=run.name)
            scored = best_score(run, per_step)
            if scored:  # what the run's own best.pt does on tracks that chose nothing
                ax.plot(scored[0] / 1e6, scored[1], marker="*", markersize=14, color=line.get_color(), linestyle="none",
                        markeredgecolor="black", label=f"{run.name}: best.pt on {scored[2]} fresh tracks ({scored[1]:.1f})")
            print(f"{run.name}: {len(xs)} evaluations, best {max(ys):.1f} at {xs[ys.index(max(ys))] / 1e6:.2f}M frames, "
                  f"first >= 900 at " + next((f"{x / 1e6:.2f}M" for x, y in zip(xs, ys) if y >= 900), "none"))
    ax.axhline(900, color="gray", linestyle="--", linewidth=1, label="solve line (900)")
    ax.axvline(args.budget / 1e6, color="gray", linestyle=":", linewidth=1, label=f"{args.budget / 1e6:g}M-frame budget")
    ax.set_xlabel("frames (millions)")
    ax.set_ylabel("held-out evaluation (mean of full greedy episodes)")
    ax.set_title("from scratch with the default recipe")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
