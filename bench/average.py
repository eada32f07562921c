"""Average the online weights of several checkpoints of one run into one `--export`-format file.

    python bench/average.py runs/ann-skippen/checkpoints/ckpt_0000136211.pt ... --out /tmp/avg.pt

As in stochastic weight averaging: checkpoints of one run lie close together in weight space, and their
mean is often a steadier policy than any one of them. Floating-point tensors are averaged, integer ones
(counters such as BatchNorm's) taken from the last file. Every file must hold the same network (config keys
that shape it, tensor names and shapes); the output carries the last file's config and a `trained` entry
naming the files averaged. Evaluate the result like any checkpoint (`evaluate.py --checkpoint OUT`),
on held-out seeds, never on the table's 0-49.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import checkpoints  # noqa: E402
from config import ConfigError, as_trained, load_config  # noqa: E402


def average(paths: list[Path]) -> dict:
    """A checkpoint (last file's config and counters) whose q_network is the mean of the files' online networks."""
    if len(paths) < 2:
        raise ConfigError("give at least two checkpoints to average")
    ckpts = [checkpoints.read_for_user(p) for p in paths]
    last = ckpts[-1]
    cfg = load_config(as_trained(last["config"]))
    for path, ckpt in zip(paths, ckpts):
        checkpoints.check_shape(ckpt["config"], cfg, str(path), "average checkpoints of one network only")
        if ckpt["q_network"].keys() != last["q_network"].keys() or any(
                ckpt["q_network"][k].shape != v.shape for k, v in last["q_network"].items()):
            raise ConfigError(f"{path} holds another network than {paths[-1]} (tensor names or shapes differ)")
    mean = {}
    for name, tensor in last["q_network"].items():
        if tensor.is_floating_point():
            mean[name] = torch.stack([c["q_network"][name].float() for c in ckpts]).mean(0).to(tensor.dtype)
        else:
            mean[name] = tensor.clone()
    trained = checkpoints.weights_only(last)["trained"]
    return {**last, "q_network": mean, "trained": {**trained, "averaged": [str(p) for p in paths]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints (or weights-only files) of one run")
    p.add_argument("--out", type=Path, required=True, help="the averaged weights-only file to write")
    args = p.parse_args(argv)
    try:
        ckpt = average(args.checkpoints)
    except ConfigError as e:
        print(f"average.py: error: {e}", file=sys.stderr)
        return 2
    checkpoints.write_best(args.out, ckpt, None)
    print(f"averaged {len(args.checkpoints)} checkpoints: {args.out} ({args.out.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
