"""Convert a hybrid spiking agent into a fully spiking one: its ANN convolutions become spiking convolutions.

    python convert.py pretrained/snn_hybrid_ddqn.pt --out pretrained/snn_full_converted.pt
    python convert.py runs/carracing/best.pt --out full.pt --time-steps 25 --percentile 99.9
    python evaluate.py --checkpoint full.pt --episodes 50 --seed 3000      # play it

A hybrid agent reads the frames with ReLU convolutions and spikes only in its fully connected layers. Rate
coding carries a ReLU network over to spiking neurons (Diehl et al. 2015; Rueckauer et al. 2017): a neuron
that integrates without leak and resets by subtraction fires at a rate close to its input current over its
threshold, clipped to one spike per step. So each convolution l becomes a layer of such neurons (beta 1,
threshold 1) whose weights are scaled by lambda_{l-1} / lambda_l and whose bias by 1 / lambda_l, where lambda_l
is a high percentile of the ReLU layer's activations on frames the agent itself sees: its spikes then fire at
about activation / lambda_l. The first fully connected layer, which read the activations, reads the spikes with
its weights times lambda_3, and keeps its leaky neurons; the readout is unchanged. Nothing is trained; the
frames come from greedy episodes of the agent on calibration tracks (seeds 50000+, never an evaluation set).
Which percentile carries an agent best depends on its activations' tails, so by default (`--percentile auto`)
each of PERCENTILES is tried and the one whose network chooses the hybrid's greedy action on the most
calibration frames is kept. The file is an agent file like `--export`'s, whose lineage ends with the conversion. Fine-tune it with
`init_weights` (and the hybrid as `teacher`) in a run with `"snn_mode": "full"`. Evidence and numbers:
docs/results.md#a-fully-spiking-agent.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import agents
import checkpoints
import envs
import models
from config import ConfigError, as_trained, load_config, one_line_cli_errors

CALIBRATION_SEED = 50_000  # tracks for the activation statistics: no evaluation set uses them
CONV_BETA = 1.0  # integrate-and-fire: a leak would lower every rate below activation / lambda
PERCENTILES = (99.0, 99.5, 99.9, 99.99)  # what --percentile auto tries


def calibration_frames(cfg, net: torch.nn.Module, decisions: int) -> torch.Tensor:
    """Observations [N, C, H, W] (uint8 as stored) of greedy full episodes of `net` on the calibration tracks,
    `decisions` of them."""
    env = envs.make_env(cfg.for_evaluation())
    frames: list[np.ndarray] = []
    seed = CALIBRATION_SEED
    try:
        while len(frames) < decisions:
            obs, _ = env.reset(seed=seed)
            done = False
            while not done and len(frames) < decisions:
                frames.append(np.array(obs, copy=True))  # the stack's buffer is reused by the next step
                obs, _, terminated, truncated, _ = env.step(models.greedy_action(net, obs))
                done = terminated or truncated
            seed += 1
    finally:
        env.close()
    return torch.as_tensor(np.stack(frames))


def layer_scales(encoder: torch.nn.Sequential, frames: torch.Tensor, percentile: float,
                 sample: int = 2_000_000) -> list[float]:
    """lambda_l of each ReLU of the encoder: the `percentile` of its activations over `frames` (a seeded
    sample of at most `sample` values per layer: torch.quantile takes at most 16M)."""
    gen = torch.Generator().manual_seed(0)
    scales, outputs = [], [[] for m in encoder if isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        for chunk in frames.split(256):
            h, k = models._to_float(chunk), 0
            for m in encoder:
                h = m(h)
                if isinstance(m, torch.nn.ReLU):
                    outputs[k].append(h.flatten())
                    k += 1
    for acts in outputs:
        values = torch.cat(acts)
        if values.numel() > sample:
            values = values[torch.randperm(values.numel(), generator=gen)[:sample]]
        scale = float(torch.quantile(values, percentile / 100))
        scales.append(scale if scale > 0 else 1.0)  # a silent layer stays silent at any scale
    return scales


def check_convertible(cfg, ckpt: dict, source: str) -> None:
    if len(ckpt["obs_shape"]) != 3:
        raise ConfigError(f"{source} reads vectors, not images: there are no convolutions to convert")
    if cfg.architecture != "snn" or cfg.snn_mode != "hybrid":
        raise ConfigError(f"{source} is not a hybrid spiking agent (architecture snn, snn_mode hybrid): only a "
                          "hybrid's ANN convolutions can be converted")
    if cfg.dueling:
        raise ConfigError(f"{source} has a dueling head; convert.py handles the plain readout only")


def convert(ckpt: dict, frames: torch.Tensor, percentile: float, time_steps: int, source: str) -> dict:
    """The fully spiking agent file of hybrid agent `ckpt`, its scales measured on `frames`."""
    cfg, hybrid = agents.build_network(ckpt, "cpu", source)
    check_convertible(cfg, ckpt, source)
    scales = layer_scales(hybrid.encoder, frames, percentile)
    config = {**as_trained(ckpt["config"]), "snn_mode": "full", "snn_tSteps": int(time_steps),
              "conv_precision": "float32"}
    full = models.build_q_network(load_config({**config, "device": "cpu"}), ckpt["obs_shape"], ckpt["n_actions"])
    src, dst = hybrid.state_dict(), full.state_dict()
    convs = [i for i, m in enumerate(hybrid.encoder) if isinstance(m, torch.nn.Conv2d)]
    previous = 1.0
    for k, (i, scale) in enumerate(zip(convs, scales)):
        dst[f"layers.{k}.weight"] = src[f"encoder.{i}.weight"].float() * (previous / scale)
        dst[f"layers.{k}.bias"] = src[f"encoder.{i}.bias"].float() / scale
        dst[f"lifs.{k}.beta"] = torch.tensor(CONV_BETA)
        previous = scale
    n = len(convs)
    dst[f"layers.{n}.1.weight"] = src["layers.0.weight"] * previous  # reads spikes at ~activation / lambda
    dst[f"layers.{n}.1.bias"] = src["layers.0.bias"]
    for a, b in enumerate(range(1, len(hybrid.layers)), start=n + 1):
        dst[f"layers.{a}.weight"], dst[f"layers.{a}.bias"] = src[f"layers.{b}.weight"], src[f"layers.{b}.bias"]
    for a, b in enumerate(range(len(hybrid.lifs)), start=n):
        for key in ("threshold", "graded_spikes_factor", "reset_mechanism_val", "beta"):
            dst[f"lifs.{a}.{key}"] = src[f"lifs.{b}.{key}"]
    full.load_state_dict(dst)
    stage = {**checkpoints.stage(config, 0, 1), "run": "ann-to-snn conversion", "init_weights": source, "teacher": None,
             "conversion": {"percentile": percentile, "scales": scales, "calibration_decisions": int(len(frames)),
                            "calibration_seeds": f"{CALIBRATION_SEED}+", "conv_beta": CONV_BETA,
                            "time_steps": int(time_steps)}}
    out = checkpoints.weights_only({**ckpt, "config": config, "q_network": full.state_dict()})
    out["lineage"] = checkpoints.lineage(ckpt) + [stage]
    out.pop("evaluation", None)  # the hybrid's score is not the converted agent's
    return out


def greedy_actions(agent: dict, frames: torch.Tensor) -> torch.Tensor:
    """The greedy action of an agent file's network on each of `frames`."""
    _, net = agents.build_network(agent, "cpu")
    with torch.no_grad():
        return torch.cat([net(f).argmax(1) for f in frames.split(250)])


def agreement(ckpt: dict, converted: dict, frames: torch.Tensor, hybrid_actions: torch.Tensor | None = None) -> float:
    """The share of `frames` on which the converted network's greedy action is the hybrid's."""
    wanted = greedy_actions(ckpt, frames) if hybrid_actions is None else hybrid_actions
    return float((greedy_actions(converted, frames) == wanted).float().mean())


def convert_best(ckpt: dict, frames: torch.Tensor, time_steps: int, source: str, log=print) -> dict:
    """`convert` at each of PERCENTILES; the file whose network agrees most with the hybrid's actions."""
    best, wanted = None, greedy_actions(ckpt, frames)  # the hybrid's actions, once
    for percentile in PERCENTILES:
        made = convert(ckpt, frames, percentile, time_steps, source)
        share = agreement(ckpt, made, frames, wanted)
        log(f"percentile {percentile:g}: the hybrid's action on {share:.1%} of the calibration frames")
        made["lineage"][-1]["conversion"]["agreement"] = share
        if best is None or share > best[0]:
            best = (share, made)
    return best[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("agent", help="a hybrid spiking agent: pretrained/*.pt, best.pt, a checkpoint or hf://owner/name")
    p.add_argument("--out", required=True, metavar="PATH", help="the fully spiking agent file to write")
    p.add_argument("--time-steps", type=int, default=None, metavar="T",
                   help="time steps of the converted network (default: the agent's snn_tSteps)")
    p.add_argument("--percentile", default="auto",
                   help="percentile of each layer's activations taken as its full rate, or auto (default): the one of "
                        f"{', '.join(f'{q:g}' for q in PERCENTILES)} that best keeps the hybrid's actions")
    p.add_argument("--calibration-steps", type=int, default=1000, metavar="N",
                   help="decisions of the agent whose frames measure the activations (default 1000, ~4 episodes)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    one_line_cli_errors(parser, "convert.py")
    try:
        args = parser.parse_args(argv)
        if args.percentile != "auto":
            try:
                args.percentile = float(args.percentile)
            except ValueError:
                raise ConfigError(f"--percentile must be a number or auto, got {args.percentile!r}") from None
            if not 50 <= args.percentile <= 100:
                raise ConfigError(f"--percentile must be between 50 and 100, got {args.percentile:g}")
        if args.calibration_steps < 1 or (args.time_steps is not None and not 1 <= args.time_steps <= 1000):
            raise ConfigError("--calibration-steps must be at least 1 and --time-steps between 1 and 1000")
        out = Path(args.out)
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder; give a file name such as pretrained/snn_full.pt")
        torch.set_num_threads(1)  # batch-of-one play, as evaluate.py
        path, ckpt = agents.read_agent(args.agent, what="convert.py")
        cfg, hybrid = agents.build_network(ckpt, "cpu", path)
        check_convertible(cfg, ckpt, args.agent)
        print(f"calibration: {args.calibration_steps} greedy decisions of {Path(str(path)).name} on tracks "
              f"{CALIBRATION_SEED}+", flush=True)
        frames = calibration_frames(cfg, hybrid, args.calibration_steps)
        steps = args.time_steps or cfg.snn_tSteps
        converted = (convert_best(ckpt, frames, steps, str(args.agent)) if args.percentile == "auto" else
                     convert(ckpt, frames, args.percentile, steps, str(args.agent)))
        checkpoints.write_best(out, converted, None)
        conv = converted["lineage"][-1]["conversion"]
        print(f"written: {out} (snn_mode full, T = {conv['time_steps']}, scales "
              f"{', '.join(f'{s:.3f}' for s in conv['scales'])} at the {conv['percentile']:g}th percentile)")
        return 0
    except ConfigError as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
