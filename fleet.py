"""Every run of the Hub repo in one view: the fleet of studios, each mirroring its runs to `<session>/<run>/`.

    python fleet.py                       # one row per run: status, steps, frames, episodes, returns, age
    python fleet.py --plot fleet.png      # and every run's training curves in one PNG
    python fleet.py --evaluate            # and every run's best.pt played on the same tracks, one table

Reads `repo_ID` and `huggingface_read` from `.env` (or the environment). Downloads only the small files of each
run (status.json, config.json, metrics.csv; best.pt with --evaluate), never checkpoints or replays. A run is
"stale" when its last checkpoint is older than STALE_FACTOR checkpoint intervals (at least MIN_STALE_S): its
studio stopped. Runs from before a field existed show "–".
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import hub
import metrics
from config import ConfigError, one_line_cli_errors

STALE_FACTOR = 3.0  # checkpoint intervals without a push before a run counts as stale
MIN_STALE_S = 600.0
RUNNING = ("training", "learning stopped")  # status reasons of a run that goes on
STOPPED = ("bout time budget", "interrupted by")  # a bout ended; the next one continues the run


def list_runs(files: list[str]) -> dict[tuple[str, str], set[str]]:
    """The runs of the repo's file list: {(session, run): their files relative to the run folder}."""
    runs: dict[tuple[str, str], set[str]] = {}
    for path in files:
        parts = path.split("/")
        if len(parts) >= 3 and "archive" not in parts[:3]:
            runs.setdefault((parts[0], parts[1]), set()).add("/".join(parts[2:]))
    return {key: rel for key, rel in runs.items() if "status.json" in rel or "metrics.csv" in rel}


def _age(updated: str | None, now: float) -> float | None:
    try:
        return now - datetime.strptime(updated, "%Y-%m-%dT%H:%M:%S%z").timestamp() if updated else None
    except ValueError:
        return None


def describe(key: tuple[str, str], local: dict[str, Path], now: float, stale_factor: float = STALE_FACTOR) -> dict:
    """One row of the fleet table from a run's downloaded files (`local`: relative path -> local file)."""
    def load(name):
        try:
            return json.loads(local[name].read_text(encoding="utf-8")) if name in local else {}
        except (OSError, ValueError):
            return {}

    status, cfg = load("status.json"), load("config.json")
    m = metrics.read_metrics(local["metrics.csv"]) if "metrics.csv" in local else {}
    returns = [r for r in m.get("return", []) if not math.isnan(r)]
    evals = [r for r in m.get("eval_return", []) if not math.isnan(r)]
    steps = status.get("global_step", int(m["global_step"][-1]) if m.get("global_step") else None)
    frames = status.get("frames")
    image = str(cfg.get("env_id", "")).startswith(("CarRacing", "FastCarRacing"))
    per_step = (frames / steps) if frames and steps else (cfg.get("frame_skip", 4) if image else 1)
    sps = [s for s in m.get("sps", []) if not math.isnan(s)]
    age = _age(status.get("updated"), now)
    wall = [w for w in m.get("wall_time", []) if not math.isnan(w)]
    every = int(cfg.get("checkpoint_every") or 10)
    interval = (wall[-1] - wall[-1 - every]) if len(wall) > every else None
    reason = str(status.get("reason", ""))
    if status.get("finished"):
        state = "finished"
    elif reason and not reason.startswith(RUNNING + STOPPED):
        state = f"failed: {reason}"
    elif age is not None and age > max(MIN_STALE_S, stale_factor * (interval or 0.0)):
        state = "stale"
    else:
        state = "training" if reason.startswith(RUNNING) or not reason else "stopped"
    return {"run": f"{key[0]}/{key[1]}", "status": state, "agent_steps": steps,
            "frames": None if steps is None else int(steps * per_step), "episodes": status.get(
                "episode", len(returns) or None), "return_10": sum(returns[-10:]) / len(returns[-10:]) if returns else None,
            "best_eval": status.get("best_score", status.get("best_eval", max(evals) if evals else None)),
            "frames_per_s": sps[-1] * per_step if sps else None, "age_s": age}


def _cell(value, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value)


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def table(rows: list[dict]) -> str:
    lines = ["| run | status | agent steps | frames | episodes | return (last 10) | best held-out | frames/s "
             "| last push |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['status']} | {_cell(r['agent_steps'], '{:,}')} | {_cell(r['frames'], '{:,}')} "
                     f"| {_cell(r['episodes'])} | {_cell(r['return_10'], '{:.1f}')} | {_cell(r['best_eval'], '{:.1f}')} "
                     f"| {_cell(r['frames_per_s'], '{:.0f}')} | {_age_text(r['age_s'])} ago |".replace("– ago", "–"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", metavar="PNG", help="every run's training curves (episode axis) in one PNG")
    p.add_argument("--evaluate", action="store_true", help="play every run's best.pt on the same tracks")
    p.add_argument("--episodes", type=int, default=10, help="episodes per run with --evaluate (default 10)")
    p.add_argument("--seed", type=int, default=1000, help="first track with --evaluate (default 1000: held out)")
    p.add_argument("--stale-after", type=float, default=STALE_FACTOR, metavar="F",
                   help=f"checkpoint intervals without a push that make a run stale (default {STALE_FACTOR:g})")
    one_line_cli_errors(p, "fleet.py")
    try:
        args = p.parse_args(argv)
        env = hub.hub_environment()
        repo_id, token = env.get("repo_ID"), env.get("huggingface_read") or env.get("huggingface_write") or None
        if not repo_id:
            raise ConfigError("fleet.py reads the runs of repo_ID in .env: set repo_ID (and huggingface_read for a "
                              "private repo)")
        api = hub.client()
        try:
            files = api.list_repo_files(repo_id, token=token)
        except Exception as e:
            print(f"fleet.py: error: cannot list {repo_id} on the Hub at {hub.endpoint()} ({type(e).__name__}); "
                  "check repo_ID and huggingface_read in .env, and the network", file=sys.stderr)
            return 1
        runs = list_runs(files)
        if not runs:
            print(f"no runs in {repo_id} yet")
            return 0
        cache = Path(tempfile.mkdtemp(prefix="snndqn-fleet-"))
        wanted = ("status.json", "config.json", "metrics.csv") + (("best.pt",) if args.evaluate else ())
        local_of: dict[tuple[str, str], dict[str, Path]] = {}
        for key, rel in sorted(runs.items()):
            local_of[key] = {}
            for name in wanted:
                if name in rel:
                    got = api.hf_hub_download(repo_id, f"{key[0]}/{key[1]}/{name}", token=token,
                                              local_dir=cache / key[0] / key[1])
                    local_of[key][name] = Path(got)
        rows = [describe(key, local, time.time(), args.stale_after) for key, local in local_of.items()]
        print(table(rows), end="")
        if args.plot:
            curves = {f"{k[0]}/{k[1]}": v["metrics.csv"] for k, v in local_of.items() if "metrics.csv" in v}
            print(f"plot: {metrics.plot_runs(curves, args.plot)}")
        if args.evaluate:
            import evaluate

            best = [str(v["best.pt"]) for v in local_of.values() if "best.pt" in v]
            if not best:
                print("no run has a best.pt yet (it is written at the first held-out evaluation)")
                return 0
            return evaluate.main([a for b in best for a in ("--checkpoint", b)] +
                                 ["--episodes", str(args.episodes), "--seed", str(args.seed),
                                  "--out", str(cache / "evaluation")])
        return 0
    except ConfigError as e:
        print(f"fleet.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
