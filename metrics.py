"""The metrics log of a run (`metrics.csv`, one row per episode, and TensorBoard scalars) and its plots."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from config import ConfigError
from utils import atomic_write_bytes


def config_table(values: Mapping[str, Any]) -> str:
    """A Markdown table of the hyperparameters, written once at the start of a run."""
    rows = "\n".join(f"|{k}|{json.dumps(v)}|" for k, v in values.items())
    return "|key|value|\n|-|-|\n" + rows


METRIC_FIELDS = ["episode", "global_step", "return", "length", "epsilon", "win", "loss", "sps", "wall_time",
                 "eval_return", "skipped_tiles"]


class MetricsLog:
    """`metrics.csv` (one row per episode, appended and flushed) plus optional TensorBoard scalars."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, cfg=None):
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.widen_header()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self.writer = None
        self.wandb = start_wandb(cfg, Path(run_dir)) if cfg is not None and cfg.wandb_project else None

    def _text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path} is not UTF-8 text (damaged?); move it aside, then run again (the run "
                              "continues from its checkpoint with a new metrics.csv)") from None

    def widen_header(self) -> None:
        """A metrics.csv written before columns were added (resumed by newer code) gets today's header;
        its old rows stay as they are, their missing trailing cells read as empty."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        text = self._text()
        header, sep, rest = text.partition("\n")
        old = header.strip().split(",")
        if old != METRIC_FIELDS and old == METRIC_FIELDS[:len(old)]:
            end = "\r" if header.endswith("\r") else ""  # csv writes \r\n
            atomic_write_bytes(self.path, (",".join(METRIC_FIELDS) + end + sep + rest).encode())

    def truncate_to(self, episodes: int, archive_dir: Path) -> dict | None:
        """Cut the rows past `episodes` (written after the checkpoint being resumed). They are never
        lost: they go, with the header, to `archive_dir/metrics_cut.csv`. Returns {rows, path} or None."""
        if not self.path.exists():
            return None
        lines = self._text().splitlines()
        if len(lines) <= episodes + 1:
            return None
        archive_dir.mkdir(parents=True, exist_ok=True)
        kept = archive_dir / "metrics_cut.csv"
        atomic_write_bytes(kept, ("\n".join([lines[0], *lines[episodes + 1:]]) + "\n").encode())
        atomic_write_bytes(self.path, ("\n".join(lines[:episodes + 1]) + "\n").encode())
        return {"rows": len(lines) - episodes - 1, "path": kept}

    def row(self, values: dict) -> None:
        import csv
        import io

        new = not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if values.get(k) is None else values.get(k)) for k in METRIC_FIELDS})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:  # the same scalars as TensorBoard, against the agent step
            self.wandb.log({tag: value, "global_step": step})

    def episode(self, episode: int, global_step: int, ret: float, length: int, epsilon: float, win: bool,
                win_rate: float, loss: float | None, sps: float, eval_return: float | None = None,
                skipped_tiles: int | None = None, teacher: tuple[float, float | None] | None = None) -> dict:
        """An episode's end: its metrics.csv row and its scalars under CleanRL's names (`skipped_tiles` with
        the skip penalty on, `teacher` (weight, mean loss) with kickstarting). Returns the row."""
        row = {"episode": episode, "global_step": global_step, "return": round(ret, 4), "length": length,
               "epsilon": round(epsilon, 6), "win": int(win), "loss": None if loss is None else round(loss, 6),
               "sps": round(sps, 2), "wall_time": round(time.time(), 2), "eval_return": eval_return,
               "skipped_tiles": skipped_tiles}
        self.row(row)
        step = global_step
        for tag, value in (("charts/episodic_return", ret), ("charts/episodic_length", length),
                           ("charts/epsilon", epsilon), ("charts/win_rate_100", win_rate), ("charts/SPS", sps),
                           ("losses/td_loss", loss), ("eval/episodic_return", eval_return),
                           ("charts/skipped_tiles", skipped_tiles)):
            if value is not None:
                self.scalar(tag, value, step)
        if teacher is not None:
            self.scalar("charts/teacher_weight", teacher[0], step)
            if teacher[1] is not None and teacher[0] > 0:  # annealed away: nothing to log
                self.scalar("losses/teacher_loss", teacher[1], step)
        return row

    def debug(self, step: int, replay_size: int, frames, action_counts) -> None:
        """debug: the replay's fill, a few observation frames (`frames`, or None) and the action histogram."""
        self.scalar("debug/replay_size", replay_size, step)
        if frames is not None and self.writer is not None:
            self.writer.add_images("debug/observation_frames", np.asarray(frames)[:, None], step, dataformats="NCHW")
        total = max(1, int(action_counts.sum()))
        for a, n in enumerate(action_counts):
            self.scalar(f"debug/action_{a}_share", n / total, step)

    def text(self, tag: str, value: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, value)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def require_wandb():
    """The wandb module, or a one-line ConfigError saying how to install it."""
    try:
        import wandb
    except ImportError:
        from config import ConfigError

        raise ConfigError("wandb_project is set but wandb is not installed: pip install wandb (or set "
                          "wandb_project to \"\" to log to TensorBoard only)") from None
    return wandb


def start_wandb(cfg, run_dir: Path):
    """A Weights & Biases run mirroring the TensorBoard scalars (wandb_project set). One W&B run per
    toolkit run: its id is the run name, so every bout resumes the same W&B run. The API key is
    wandb's own business (WANDB_API_KEY or `wandb login`); it is never read or printed here."""
    wandb = require_wandb()
    run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity or None, mode=cfg.wandb_mode,
                     name=cfg.run_name, id=cfg.run_name, resume="allow", dir=str(run_dir),
                     config={k: v for k, v in cfg.to_dict().items() if not k.startswith("wandb_")})
    run.define_metric("*", step_metric="global_step")
    return run


def read_metrics(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a metrics.csv as float lists (empty cells become NaN)."""
    import csv

    cols: dict[str, list[float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                try:
                    cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
                except ValueError:
                    cols.setdefault(k, []).append(float("nan"))
    return cols


def rolling_mean(values, window: int = 100):
    out, total, q = [], 0.0, []
    for v in values:
        q.append(v)
        total += v
        if len(q) > window:
            total -= q.pop(0)
        out.append(total / len(q))
    return out


def plot_runs(runs: Mapping[str, str | os.PathLike], out_png: str | os.PathLike, win_threshold: float | None = None) -> Path:
    """One PNG of training curves for one or several runs: return and its 100-episode mean,
    evaluation return, ε, loss and win %. `runs` maps a label to a metrics.csv path."""
    import matplotlib.pyplot as plt

    fig = training_figure(runs, win_threshold)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def training_figure(runs: Mapping[str, str | os.PathLike], win_threshold: float | None = None):
    """The matplotlib figure of `plot_runs`: four panels on one episode axis."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)  # one episode axis for every panel
    (ax_ret, ax_eps), (ax_loss, ax_win) = axes
    ax_skip = None  # right axis of the ε panel, made when a run logged skipped tiles (skip_penalty on)
    for label, path in runs.items():
        m = read_metrics(path)
        if not m.get("episode"):
            continue
        ep = m["episode"]
        line, = ax_ret.plot(ep, m["return"], alpha=0.25)
        # the two measure different things: training episodes are ε-greedy and end early without progress
        # (lenient termination), evaluations are greedy full episodes on held-out tracks
        ax_ret.plot(ep, rolling_mean(m["return"]), color=line.get_color(),
                    label=f"{label} training (ε-greedy, lenient ends; 100-ep mean)")
        ev = [(e, r) for e, r in zip(ep, m.get("eval_return", [])) if not math.isnan(r)]
        if ev:
            ax_ret.plot(*zip(*ev), "o", color=line.get_color(), markersize=3,
                        label=f"{label} held-out eval (greedy, full episodes)")
        ax_eps.plot(ep, m["epsilon"], label=label)
        skip = [(e, v) for e, v in zip(ep, m.get("skipped_tiles", [])) if not math.isnan(v)]
        if skip:
            ax_skip = ax_skip or ax_eps.twinx()
            xs, ys = zip(*skip)
            ax_skip.plot(xs, rolling_mean(ys), "--", color=line.get_color(), label=f"{label} skipped tiles")
            ax_skip.set_ylabel("skipped tiles per episode (100-ep mean, dashed)")
        loss = [(e, v) for e, v in zip(ep, m.get("loss", [])) if not math.isnan(v)]
        if loss:
            ax_loss.plot(*zip(*loss), label=label)
        ax_win.plot(ep, [100 * w for w in rolling_mean(m["win"])], label=label)
    if win_threshold is not None:
        ax_ret.axhline(win_threshold, color="gray", linestyle="--", linewidth=1, label="win threshold")
    if ax_skip is not None:
        ax_skip.legend(fontsize=8, loc="lower left")
    eps_title = "ε" if ax_skip is None else "ε; skipped tiles (dashed)"
    for ax, title in ((ax_ret, "episodic return"), (ax_eps, eps_title), (ax_loss, "TD loss (episode mean)"),
                      (ax_win, "wins in the last 100 episodes (%)")):
        ax.set_title(title)
        ax.set_xlabel("episode")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        elif not ax.lines:
            ax.text(0.5, 0.5, "no updates yet" if ax is ax_loss else "no episodes yet", transform=ax.transAxes,
                    ha="center", va="center", color="gray")
    if ax_loss.lines:
        ax_loss.set_yscale("log")
    ax_win.set_ylim(0, 100)
    fig.tight_layout()
    return fig
