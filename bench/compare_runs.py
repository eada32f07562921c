"""Compare training runs at equal training time and at equal agent steps, from their metrics.csv.

    python bench/compare_runs.py runs/A runs/B [--label A --label B] [--points 4] [--gap 300] [--plot out.png]

Training time is the wall clock between episode rows with the pauses between bouts taken out (two rows
more than `--gap` seconds apart: a stopped and resumed run). At each of `--points` equal fractions of the
shortest run's training time (and of its agent steps) it prints, per run: agent steps (or minutes), the
mean training return of the last 100 episodes, the best in-run held-out evaluation so far and the mean
of the last four. One JSON line at the end; `--plot` draws both views.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import metrics  # noqa: E402


def training_curve(csv_path: Path, gap: float) -> list[dict]:
    """One dict per episode: training seconds so far, agent steps, return, held-out eval (or None)."""
    m = metrics.read_metrics(csv_path)
    rows, seconds, prev = [], 0.0, None
    for wall, step, ret, ev in zip(m["wall_time"], m["global_step"], m["return"], m.get("eval_return", [])):
        if prev is not None and wall - prev <= gap:
            seconds += wall - prev
        prev = wall
        rows.append({"seconds": seconds, "step": int(step), "return": ret, "eval": None if math.isnan(ev) else ev})
    return rows


def summary(rows: list[dict]) -> dict:
    last = [r["return"] for r in rows[-100:]]
    evals = [r["eval"] for r in rows if r["eval"] is not None]
    return {"seconds": round(rows[-1]["seconds"], 1), "step": rows[-1]["step"],
            "train_mean_100": round(sum(last) / len(last), 1),
            "best_eval": round(max(evals), 1) if evals else None,
            "last4_eval": round(sum(evals[-4:]) / len(evals[-4:]), 1) if evals else None}


def up_to(rows: list[dict], key: str, limit: float) -> dict:
    return summary([r for r in rows if r[key] <= limit] or rows[:1])


def plot(curves: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for label, rows in curves.items():
        mean = metrics.rolling_mean([r["return"] for r in rows])
        for ax, key, scale in ((axes[0], "seconds", 3600.0), (axes[1], "step", 1.0)):
            x = [r[key] / scale for r in rows]
            line, = ax.plot(x, mean, label=f"{label} (100-episode mean)")
            ev = [(r[key] / scale, r["eval"]) for r in rows if r["eval"] is not None]
            if ev:
                ax.plot(*zip(*ev), "o", color=line.get_color(), markersize=3, alpha=0.6, label=f"{label} held-out eval")
    axes[0].set_xlabel("training hours (pauses between bouts removed)")
    axes[1].set_xlabel("agent steps")
    axes[0].set_ylabel("return")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or metrics.csv files)")
    p.add_argument("--label", action="append", default=[], help="a label per run, in order (default: folder name)")
    p.add_argument("--points", type=int, default=4, help="equal fractions of the shortest run to compare at")
    p.add_argument("--gap", type=float, default=300.0, help="seconds between two episode rows that count as a pause")
    p.add_argument("--plot", type=Path, help="PNG: 100-episode mean return and evals against training hours and steps")
    args = p.parse_args(argv)
    paths = [r / "metrics.csv" if r.is_dir() else r for r in args.runs]
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        print(f"error: no metrics.csv at {', '.join(missing)}", file=sys.stderr)
        return 2
    labels = args.label + [x.parent.name for x in paths[len(args.label):]]
    curves = {label: training_curve(path, args.gap) for label, path in zip(labels, paths)}
    if any(not rows for rows in curves.values()):
        print("error: a run has no episodes yet", file=sys.stderr)
        return 2
    report = {"bench": "compare_runs", "runs": dict(zip(labels, map(str, paths))), "equal_time": [], "equal_steps": []}
    for key, name, unit in (("seconds", "equal_time", "min"), ("step", "equal_steps", "steps")):
        end = min(rows[-1][key] for rows in curves.values())
        print(f"at equal {'training time' if key == 'seconds' else 'agent steps'} "
              f"(agent steps or minutes, training mean of the last 100, best eval, mean of the last 4 evals):")
        for i in range(1, args.points + 1):
            limit = end * i / args.points
            at = {label: up_to(rows, key, limit) for label, rows in curves.items()}
            report[name].append({"at": round(limit, 1), **at})
            shown = f"{limit / 60:.1f}" if key == "seconds" else f"{limit:.0f}"
            cells = "   ".join(f"{label}: {a['step'] if key == 'seconds' else round(a['seconds'] / 60, 1)} | "
                               f"{a['train_mean_100']} | {a['best_eval']} | {a['last4_eval']}" for label, a in at.items())
            print(f"  {shown:>9} {unit:<5}  {cells}")
    if args.plot:
        print(f"plot: {plot(curves, args.plot)}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
