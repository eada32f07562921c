"""Evaluate agents: an N-episode table on fixed seeds, baselines, GIFs, training-curve plots, play.

    python evaluate.py --run runs/NAME [--run ...] [--checkpoint PATH ...] [--baseline random|pid ...]
                       [--episodes 50] [--seed 0] [--gif out.gif] [--plot curves.png] [--play]
    python run.py evaluate.py [-- OPTIONS]    (no --run/--checkpoint/--baseline: the configured run)

Every method plays the same seeds (seed, seed+1, ...), so agents are judged on the same tracks.
Episodes are the environment's full episodes with its own rewards: the training aids (lenient
termination, the skip penalty) are switched off unless --lenient is given. The table (method, average,
max, min, std, win rate, mean length) is printed and written as evaluation.md and evaluation.csv into the
run folder (or --out).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoints
import contract
import cost
import envs
import metrics
import models
import publish
import utils
from agents import build_network, read_agent
from config import ConfigError, load_config, one_line_cli_errors

ROOT = Path(__file__).resolve().parent


@dataclass
class Agent:
    label: str
    cfg: object  # config.Config: the environment pipeline the agent was trained with
    policy: object  # policy(env) -> act(obs) -> action, made anew for every episode (controllers keep state)
    run_dir: Path | None = None
    source: Path | None = None  # the checkpoint or weights file it was loaded from
    trained: dict | None = None  # its lineage's total (checkpoints.lineage_total); None for a baseline
    net: object = None  # its Q-network (torch), whose decisions' cost the table reports; None for a baseline


# --------------------------------------------------------------------------- agents
def load_network(path: Path, device: str = "auto"):
    """(config, Q-network in eval mode on its device, local path) of a training checkpoint, a shipped
    `pretrained/*.pt` file or an `hf://` model; the config is the one it was trained with
    (`cfg.for_evaluation()` has the training aids off)."""
    path, ckpt = read_agent(str(path))
    cfg, net = build_network(ckpt, device, path)
    return cfg, net, Path(path)


def load_agent(path: Path, device: str = "auto", label: str | None = None) -> Agent:
    """A greedy agent from a training checkpoint or a shipped `pretrained/*.pt` file."""
    import torch

    spec = str(path)
    path, ckpt = read_agent(spec)
    cfg, net = build_network(ckpt, device, path)
    path = Path(path)
    dev = next(net.parameters()).device

    def act(obs):
        with torch.no_grad():
            return int(net(torch.as_tensor(np.asarray(obs)[None], device=dev)).argmax(1))

    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if path.name == checkpoints.BEST_NAME:
        run_dir = path.parent
    what = f"{run_dir.name}{', best' if path.name == checkpoints.BEST_NAME else ''}" if run_dir else path.stem
    if spec.startswith(publish.HF_PREFIX):
        what = spec[len(publish.HF_PREFIX):]
    name = label or f"{cfg.architecture.upper()}-DDQN ({what})"
    return Agent(name, cfg, lambda env: act, run_dir, path, checkpoints.lineage_total(checkpoints.lineage(ckpt)), net)


def distinguish(agents: list[Agent]) -> None:
    """Agents whose labels coincide (checkpoints of one run) get their file's step or name added; files
    of one name in two folders then get the folder too (one file given twice keeps one label)."""
    labels = [a.label for a in agents]
    for agent in agents:
        if labels.count(agent.label) > 1 and agent.source is not None:
            step = checkpoints.step_of(Path(agent.source).name)
            agent.label = agent.label[:-1] + (f" @ {step})" if step is not None else f", {Path(agent.source).name})")
    files: dict[str, set[Path]] = {}
    for a in agents:
        if a.source is not None:
            files.setdefault(a.label, set()).add(Path(a.source).resolve())
    for agent in agents:
        if agent.source is not None and len(files[agent.label]) > 1:
            agent.label = agent.label[:-1] + f" in {Path(agent.source).parent.name})"


def run_checkpoint(run_dir: Path, best: bool) -> Path:
    """The file of a run to evaluate: best.pt with --best, else the newest loadable checkpoint."""
    if not best:
        return newest_checkpoint(run_dir)
    path = run_dir / checkpoints.BEST_NAME
    if not path.is_file():
        raise ConfigError(f"run {run_dir} has no {checkpoints.BEST_NAME} yet (it is written at the first greedy "
                          "evaluation, every eval_every episodes); leave out --best for the newest checkpoint")
    return path


def newest_checkpoint(run_dir: Path) -> Path:
    """The run's newest loadable checkpoint (a newer file that cannot be loaded is skipped with a warning)."""
    found = checkpoints.load_newest(run_dir / "checkpoints", log=lambda msg: print(msg, file=sys.stderr), replay=False)
    if found is None:
        raise ConfigError(f"run {run_dir} has no checkpoint that can be loaded (looked for "
                          f"{run_dir / 'checkpoints' / 'ckpt_*.pt'})")
    return found[0]


def random_agent(cfg, seed: int) -> Agent:
    rng = np.random.default_rng(seed)

    def policy(env):
        n = int(env.action_space.n)
        return lambda obs: int(rng.integers(n))

    return Agent("random", cfg, policy)


PID_DEFAULTS = {  # chosen on held-out tracks (seeds 100-107) with bench/pid_tune.py, never the table's 0-49
    "frame_skip": 1,  # frames each decision holds: every frame (the agents decide every 4th)
    "look_base": 6,  # tiles ahead of the nearest one that the car steers towards ...
    "look_per_speed": 0.0,  # ... plus this many per unit of speed
    "kp": 1.2, "kd": 0.8,  # PD on the heading error to that point
    "steer_deadband": 0.3,  # |steer| above this steers (the discrete actions cannot steer and accelerate at once)
    "v_max": 130.0, "v_min": 50.0,  # target speed on a straight and in the sharpest curve
    "curve_ahead": 12,  # tiles over which the track's turn sets the target speed
    "brake_margin": 8.0,  # brake only this far above the target speed
}


def pid_agent(cfg, **params) -> Agent:
    """A hand-written controller: steer towards a point of the track a few tiles ahead (PD on the
    heading error), hold a target speed that drops in curves. It reads the track geometry and the
    car's state from the environment, not the pixels, and uses the same five discrete actions."""
    if not envs.is_carracing(cfg.env_id):
        raise ConfigError("the pid baseline drives CarRacing only; use --baseline random for other environments")
    unknown = set(params) - set(PID_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown pid parameter(s): {', '.join(sorted(unknown))}")
    p = {**PID_DEFAULTS, **params}

    def policy(env):
        state = {"prev_err": 0.0}  # the derivative term starts fresh every episode
        return lambda obs: _pid_action(env, state, p)

    return Agent("pid", cfg.replace(frame_skip=int(p["frame_skip"])), policy)


def _pid_action(env, state: dict, p: dict) -> int:
    u = env.unwrapped
    if u.car is None:
        return 0
    cx, cy = u.car.hull.position
    track = u.track
    d2 = [(t[2] - cx) ** 2 + (t[3] - cy) ** 2 for t in track]
    i = int(np.argmin(d2))
    n = len(track)
    speed = math.hypot(*u.car.hull.linearVelocity)
    tx, ty = track[(i + int(p["look_base"] + p["look_per_speed"] * speed)) % n][2:4]
    heading = u.car.hull.angle + math.pi / 2
    err = (math.atan2(ty - cy, tx - cx) - heading + math.pi) % (2 * math.pi) - math.pi
    derr = err - state["prev_err"]
    state["prev_err"] = err
    steer = p["kp"] * err + p["kd"] * derr
    # how sharply the track turns over the next tiles sets the target speed
    far = track[(i + int(p["curve_ahead"])) % n][1] - track[i][1]
    curve = abs((far + math.pi) % (2 * math.pi) - math.pi)
    target = p["v_max"] - (p["v_max"] - p["v_min"]) * min(curve, 1.0)
    if steer > p["steer_deadband"]:
        return 2  # left
    if steer < -p["steer_deadband"]:
        return 1  # right
    if speed > target + p["brake_margin"]:
        return 4  # brake
    if speed < target:
        return 3  # gas
    return 0


# --------------------------------------------------------------------------- evaluation
def evaluate_agent(agent: Agent, episodes: int, seed: int, lenient: bool, progress=None) -> dict:
    """`episodes` full episodes of `agent` from `seed` into a table row; `progress(label, episode, return)`
    after each."""
    cfg = agent.cfg if lenient else agent.cfg.for_evaluation()
    env = envs.make_env(cfg)
    frames_per_step = cfg.frame_skip if len(env.observation_space.shape) == 3 else 1  # one unit for every method
    returns, lengths = [], []
    spikes = SpikeCounter(agent.net)  # the spiking layers' firing rates over every decision played
    try:
        for i in range(episodes):
            ret, length = envs.play_episode(env, spikes.wrap(agent.policy(env)), seed=seed + i)
            returns.append(ret)
            lengths.append(length * frames_per_step)
            if progress is not None:
                progress(agent.label, i + 1, ret)
    finally:
        env.close()
    r = np.array(returns)
    return {"method": agent.label, "average": float(r.mean()), "max": float(r.max()), "min": float(r.min()),
            "std": float(r.std()), "win_rate": float(np.mean(r >= cfg.win_threshold)),
            "mean_length": float(np.mean(lengths)), "episodes": episodes, "returns": returns,
            "frames_trained": None if agent.trained is None else agent.trained["frames"], "baseline": agent.trained is None,
            "cost": None if agent.net is None else cost.decision_cost(agent.net, env.observation_space.shape,
                                                                      spikes.rates())}


class SpikeCounter:
    """The mean firing rate of each spiking layer of `net` over the decisions of the policies it wraps
    (nothing for an ANN or a baseline)."""

    def __init__(self, net):
        self.net = net if isinstance(net, models.SpikingQNetwork) else None
        self.sums: dict[str, float] = {}
        self.decisions = 0

    def wrap(self, act):
        if self.net is None:
            return act

        def counted(obs):
            with models.record_firing_rates(self.net) as rates:
                action = act(obs)
            for layer, rate in rates.items():
                self.sums[layer] = self.sums.get(layer, 0.0) + rate
            self.decisions += 1
            return action
        return counted

    def rates(self) -> dict[str, float]:
        return {layer: total / self.decisions for layer, total in self.sums.items()} if self.decisions else {}


def frames_text(row: dict) -> str:
    """A row's frames trained (its lineage's total): `2.75M`, `unknown` (a stage not known) or – (a baseline)."""
    if row.get("baseline", True):
        return "–"
    frames = row["frames_trained"]
    return "unknown" if frames is None else f"{frames / 1e6:.2f}M" if frames >= 1e6 else f"{frames:,}"


def cost_cells(row: dict) -> list[str]:
    """MACs and ACs per decision, the spiking layers' mean firing rate, the energy estimate (– where none)."""
    c = row.get("cost")
    if c is None:
        return ["–"] * 4
    return [f"{c['macs'] / 1e6:.2f}M", f"{c['acs'] / 1e6:.3f}M" if c["acs"] else "0",
            "–" if c["firing_rate"] is None else f"{c['firing_rate']:.3f}", f"{c['energy_uj']:.1f}"]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | average | max | min | std | win rate | mean length (frames) | episodes | frames trained "
             "| MACs / decision | ACs / decision | firing rate | energy / decision (µJ, est.) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['average']:.2f} | {r['max']:.2f} | {r['min']:.2f} | {r['std']:.2f} | "
                     f"{100 * r['win_rate']:.0f}% | {r['mean_length']:.1f} | {r['episodes']} | {frames_text(r)} | "
                     + " | ".join(cost_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "evaluation.md"
    utils.atomic_write_bytes(md, markdown_table(rows).encode())
    path = out_dir / "evaluation.csv"
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "average", "max", "min", "std", "win_rate", "mean_length_frames", "episodes",
                "frames_trained", "macs", "acs", "firing_rate", "energy_uj", "returns"])
    for r in rows:
        c = r.get("cost") or {}
        w.writerow([r["method"], f"{r['average']:.4f}", f"{r['max']:.4f}", f"{r['min']:.4f}", f"{r['std']:.4f}",
                    f"{r['win_rate']:.4f}", f"{r['mean_length']:.2f}", r["episodes"],
                    "" if r.get("frames_trained") is None else r["frames_trained"],
                    *("" if c.get(k) is None else f"{c[k]:.6g}" for k in ("macs", "acs", "firing_rate", "energy_uj")),
                    " ".join(f"{x:.2f}" for x in r["returns"])])
    utils.atomic_write_bytes(path, buf.getvalue().encode())
    return md, path


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="DIR", help="run folder (its newest checkpoint)")
    p.add_argument("--best", action="store_true", help="with --run: the run's best.pt (the best held-out "
                   "evaluation during training) instead of its newest checkpoint")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="checkpoint or pretrained/*.pt file")
    p.add_argument("--baseline", action="append", default=[], choices=["random", "pid"], help="baseline method")
    p.add_argument("--episodes", type=int, default=None, help="episodes per method (default 50; with only --gif, "
                   "--plot or --export asked for, no table is played unless --episodes is given)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--env-id", default=None, help="environment for baselines (default CarRacing-v3); checkpoints "
                   "must have been trained on it")
    p.add_argument("--lenient", action="store_true",
                   help="keep the agents' training aids: lenient termination and skip penalty (off by default)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for evaluation.md/.csv (default: the run folder)")
    p.add_argument("--gif", metavar="PATH", help="record the first method's first episode as an animated GIF")
    p.add_argument("--plot", metavar="PNG", help="training curves of the --run folders in one PNG")
    p.add_argument("--play", action="store_true", help="watch the first agent drive in a window (needs a display)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--export", metavar="PATH", help="write the first agent's network weights and config (no replay, "
                   "no optimiser) to PATH, for pretrained/")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="evaluate the first agent, then upload a model "
                   "card, its weights (loadable with weights_only=True) and a GIF to this Hub repo (token: "
                   "huggingface_write in .env); load it back with --checkpoint hf://OWNER/NAME")
    p.add_argument("--no-table", action="store_true", help="only --gif/--plot/--play/--export, no evaluation episodes")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    one_line_cli_errors(parser, "evaluate.py")
    try:
        args = parser.parse_args(argv)
        # one decision at a time gains nothing from a second thread, and beside a training on the other core
        # two threads wait on each other: ~50x slower per decision (docs/benchmarks.md#evaluation-threads)
        torch.set_num_threads(1)
        if args.episodes is not None and args.episodes < 1:
            raise ConfigError("--episodes must be at least 1")
        if not 0 <= args.seed <= 2**31 - 1 - 10_000:
            raise ConfigError(f"--seed must be a track seed >= 0, got {args.seed}")
        if args.export and Path(args.export).is_dir():
            raise ConfigError(f"--export {args.export} is a folder; give a file name such as pretrained/mine.pt")
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out} is a file; give a folder for evaluation.md and evaluation.csv")
        if args.episodes is None and (args.gif or args.plot or args.export) and not args.push_to_hub:
            args.no_table = True  # an output alone is just that output: a table only when --episodes asks for one
        args.episodes = args.episodes or 50
        if not (args.run or args.checkpoint or args.baseline) and contract.launcher_config():
            # started by `python run.py evaluate.py`: the configured run
            args.run = [str(load_config(contract.launcher_config()).run_dir(ROOT))]
        if not (args.run or args.checkpoint or args.baseline):
            raise ConfigError("nothing to evaluate: give --run, --checkpoint or --baseline")
        if args.push_to_hub:  # its preconditions before anything is played or written
            publish.check_repo_id(args.push_to_hub, "--push-to-hub")
            publish.require_write_token()
        for option, target in (("--gif", args.gif), ("--plot", args.plot), ("--export", args.export),
                               ("--out", args.out and str(Path(args.out) / "evaluation.md"))):
            if target:  # every output is checked before the first episode
                check_writable(Path(target), option)
        agents: list[Agent] = []
        run_dirs = []
        for run in args.run:
            run_dir = Path(run)
            if not run_dir.is_dir():
                raise ConfigError(f"run folder {run_dir} does not exist")
            run_dirs.append(run_dir)
            agents.append(load_agent(run_checkpoint(run_dir, args.best), args.device))
        for ckpt in args.checkpoint:  # a path, or hf://owner/name (kept a string: Path would fold the //)
            agents.append(load_agent(ckpt if ckpt.startswith(publish.HF_PREFIX) else Path(ckpt), args.device))
        distinguish(agents)
        env_id = args.env_id or (agents[0].cfg.env_id if agents else "CarRacing-v3")
        for agent in agents:
            if agent.cfg.env_id != env_id and not (envs.is_carracing(agent.cfg.env_id) and envs.is_carracing(env_id)):
                raise ConfigError(f"{agent.label} was trained on {agent.cfg.env_id}, not {env_id}")
        base_cfg = agents[0].cfg if agents else load_config({"env_id": env_id})
        for name in args.baseline:
            agents.append(random_agent(base_cfg, args.seed) if name == "random" else pid_agent(base_cfg))

        out = Path(args.out) if args.out else (run_dirs[0] if len(run_dirs) == 1 else
                                                (agents[0].run_dir or ROOT / "runs" / "evaluation"))
        if not args.no_table:  # the table's folder too, before the first episode
            check_writable(out / "evaluation.md", "--out" if args.out else "the table's folder")
        if args.export:
            # the runs' files as just resolved (not looked up again); an hf:// spec is no local file and fails
            sources = [a.source for a in agents[:len(args.run)]] + [Path(c) for c in args.checkpoint]
            if not sources:
                raise ConfigError("--export needs a --run or --checkpoint")
            out = checkpoints.export_weights(sources[0], Path(args.export))
            print(f"exported: {out} ({out.stat().st_size / 2**20:.1f} MB)")
        if args.play:
            return play(agents[0])
        if args.plot:
            if not run_dirs:
                raise ConfigError("--plot needs at least one --run folder (it plots their metrics.csv)")
            runs = {d.name: d / "metrics.csv" for d in run_dirs if (d / "metrics.csv").exists()}
            print(f"plot: {metrics.plot_runs(runs, args.plot, agents[0].cfg.win_threshold)}")
        if args.push_to_hub:
            publish.check_repo_id(args.push_to_hub, "--push-to-hub")
            if not agents or agents[0].source is None or args.no_table:
                raise ConfigError("--push-to-hub needs one --checkpoint or --run to evaluate (and no --no-table)")
            if args.episodes < publish.FEW_EPISODES:
                print(f"warning: publishing a mean over {args.episodes} episode(s): the card says it is no reliable "
                      "mean; --episodes 50 gives one others can compare", file=sys.stderr)
            if not args.gif:
                args.gif = str(publish.temporary_gif())
        if args.gif:
            first = agents[0]
            ret, steps = envs.record_gif(first.cfg.for_evaluation(), first.policy, args.gif,
                                         seed=args.seed)
            print(f"gif: {args.gif} ({steps} steps, return {ret:.1f})")
        if args.no_table:
            return 0

        from tqdm import tqdm

        rows = []
        total = args.episodes * len(agents)
        started = time.monotonic()
        with tqdm(total=total, unit="episode", disable=not sys.stderr.isatty()) as bar:
            def progress(label: str, episode: int, ret: float) -> None:
                """Each episode: the bar on a terminal, else one line (a long table is never silent)."""
                if bar.disable:
                    print(f"episode {episode}/{args.episodes} {label}: return {ret:.2f} "
                          f"({time.monotonic() - started:.0f} s)", flush=True)
                bar.update(1)

            for agent in agents:
                rows.append(evaluate_agent(agent, args.episodes, args.seed, args.lenient, progress))
        table = markdown_table(rows)
        print(table, end="")
        replaced = (out / "evaluation.md").exists()
        md, csv_path = write_table(rows, out)
        print(f"written: {md} {csv_path}" + (" (replacing the previous table there)" if replaced else ""))
        if args.push_to_hub:
            row = rows[0]
            weights = checkpoints.weights_only(checkpoints.read_for_user(agents[0].source), evaluation={
                "mean": row["average"], "std": row["std"], "episodes": args.episodes, "seeds": f"{args.seed}+"})
            url = publish.push(args.push_to_hub, weights, row, args.episodes, args.seed, Path(args.gif))
            print(f"pushed: {url} (README.md model card, {publish.WEIGHTS_NAME}, {publish.GIF_NAME})")
        return 0
    except ConfigError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2


def check_writable(path: Path, option: str) -> None:
    """Fail before any episode is played when an output file cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=True):
            pass
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write there ({e.strerror}); give a path in a writable folder") from None


def play(agent: Agent) -> int:
    """Watch the agent in a window (pygame's human render mode)."""
    headless = os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen")  # a virtual display, e.g. for tests
    if not (headless or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            or sys.platform in ("win32", "darwin")):
        raise ConfigError("--play needs a display (none found: DISPLAY is not set); use --gif to record instead")
    env = envs.make_env(agent.cfg.for_evaluation(), render_mode="human")
    try:
        ret, steps = envs.play_episode(env, agent.policy(env), seed=0)
    finally:
        env.close()
    print(f"played one episode: return {ret:.1f} in {steps} steps")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:  # raised inside play()
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        sys.exit(2)
