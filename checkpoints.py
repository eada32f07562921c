"""The one place that knows the checkpoint format.

A training checkpoint is one dict (nanoGPT's shape): config, shapes, both networks, optimiser, counters,
history, every random state, the environments' state and the replay. It is written atomically as
`checkpoints/ckpt_<global_step:010d>.pt`; only the newest `keep_checkpoints` are kept. Reading falls
back past a file that cannot be loaded. The weights-only export (`pretrained/*.pt`) keeps what
evaluation and play need: config, shapes and the online network.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from config import SHAPE_KEYS, ConfigError
from utils import atomic_write_bytes, atomic_write_json, read_json

FORMAT = 1
NAME_RE = re.compile(r"^ckpt_(\d+)\.pt$")
BEST_NAME = "best.pt"  # in the run folder: the policy with the best held-out evaluation so far
MANIFEST = ".manifest.json"  # {name: {"sha256", "bytes"}} of the checkpoints written and verified here


def name_for(global_step: int) -> str:
    return f"ckpt_{global_step:010d}.pt"


def step_of(name: str) -> int | None:
    """The global step in a checkpoint's file name, or None for any other file."""
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    return sorted(p for p in Path(ckpt_dir).glob("ckpt_*.pt") if step_of(p.name) is not None)


# --------------------------------------------------------------------------- writing and reading
def write(ckpt_dir: Path, state: dict, keep: int) -> tuple[Path, int]:
    """Write `state` atomically as the checkpoint of its global step, read it back and check its
    sha256 before the manifest names it (only then is it the newest), and prune to the newest `keep`.
    Returns (path, bytes written)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    path = Path(ckpt_dir) / name_for(state["counters"]["global_step"])
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    if _sha256(path) != digest:
        path.unlink(missing_ok=True)
        raise OSError(f"checkpoint {path.name} read back differently from what was written; disk or filesystem fault")
    manifest = _manifest(ckpt_dir)
    manifest[path.name] = {"sha256": digest, "bytes": len(data)}
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    names = {p.name for p in list_checkpoints(ckpt_dir)}
    atomic_write_json(Path(ckpt_dir) / MANIFEST, {n: v for n, v in manifest.items() if n in names})
    return path, len(data)


def _manifest(ckpt_dir: Path) -> dict:
    m = read_json(Path(ckpt_dir) / MANIFEST, default={})
    return m if isinstance(m, dict) else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verified(path: Path) -> bool:
    """Whether a checkpoint file is whole: its sha256 matches the manifest, or, for a file the manifest
    does not name (fetched from the Hub, written by an older version), it loads."""
    entry = _manifest(Path(path).parent).get(Path(path).name)
    return loadable(path) if entry is None else _matches(Path(path), entry)


def _matches(path: Path, entry: dict) -> bool:
    """The file has the size and sha256 its manifest entry records."""
    try:
        return path.stat().st_size == entry["bytes"] and _sha256(path) == entry["sha256"]
    except OSError:
        return False


def newest_verified_step(ckpt_dir: Path) -> int | None:
    """The global step of the newest checkpoint that is whole (corrupt newer files are passed over)."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        if verified(path):
            return step_of(path.name)
    return None


def read(path: Path, map_location="cpu") -> dict:
    """A checkpoint (training or weights-only), or an exception saying why the file is not one."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "q_network" not in ckpt or "config" not in ckpt:
        raise ValueError("not a checkpoint of this toolkit (no q_network/config)")
    return ckpt


def loadable(path: Path) -> bool:
    try:
        read(path)
        return True
    except Exception:
        return False


def load_newest(ckpt_dir: Path, map_location="cpu", log: Callable[[str], None] = print):
    """(path, checkpoint) of the newest loadable checkpoint, or None; a newer file that cannot be
    loaded is skipped with a warning line."""
    manifest = _manifest(ckpt_dir)
    for path in reversed(list_checkpoints(ckpt_dir)):
        entry = manifest.get(path.name)
        try:
            if entry is not None and not _matches(path, entry):
                raise ValueError("its sha256 does not match the manifest")
            return path, read(path, map_location)
        except Exception as e:
            log(f"warning: checkpoint {path.name} cannot be loaded ({type(e).__name__}: {str(e)[:120]}); "
                "falling back to the previous one")
    return None


def read_for_user(path: Path) -> dict:
    """A checkpoint named by the user (evaluation, init_weights): bad input is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        return read(path)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    except Exception as e:
        raise ConfigError(f"checkpoint {path} cannot be read ({type(e).__name__}); is it a complete file?") from None


def check_shape(saved_config: dict, cfg, what: str, hint: str) -> None:
    """ConfigError when a key that changes the network's shape differs between a checkpoint and `cfg`."""
    for key in SHAPE_KEYS:
        if saved_config.get(key) != getattr(cfg, key):
            raise ConfigError(f"config key '{key}' is {json.dumps(getattr(cfg, key))} but {what} has "
                              f"{json.dumps(saved_config.get(key))}, another network shape; {hint}")


# --------------------------------------------------------------------------- weights-only files
def weights_only(ckpt: dict, evaluation: dict | None = None) -> dict:
    """The --export format: config, shapes, the online network, what trained it (no replay, no optimiser)."""
    small = {"format": FORMAT, "config": ckpt["config"], "obs_shape": ckpt["obs_shape"],
             "n_actions": ckpt["n_actions"], "q_network": ckpt["q_network"],
             "trained": ckpt.get("trained") or {k: ckpt.get("counters", {}).get(k)
                                                for k in ("global_step", "episode", "updates")}}
    if evaluation is not None or ckpt.get("evaluation") is not None:
        small["evaluation"] = evaluation if evaluation is not None else ckpt["evaluation"]
    return small


def export_weights(source: Path, dest: Path) -> Path:
    """A small file with what evaluation and play need: config, shapes, the online network."""
    write_best(dest, read_for_user(source), None)
    return Path(dest)


def write_best(dest: Path, ckpt: dict, evaluation: dict | None) -> None:
    """Write the weights-only file of `ckpt` atomically (best.pt, pretrained/*.pt)."""
    buf = io.BytesIO()
    torch.save(weights_only(ckpt, evaluation), buf)
    atomic_write_bytes(dest, buf.getbuffer())


def read_init_weights(cfg, root: Path) -> dict:
    """The checkpoint named by `init_weights` (relative to the working folder or `root`), checked
    against the config's network shape."""
    path = Path(cfg.init_weights)
    if not path.is_absolute() and not path.exists():
        path = Path(root) / path
    try:
        ckpt = read_for_user(path)
    except ConfigError as e:
        raise ConfigError(f"config key 'init_weights': {e}; give a pretrained/*.pt file or a checkpoint, or \"\" for "
                          "random weights") from None
    check_shape(ckpt["config"], cfg, f"the init_weights file {path}", "use the same network shape")
    return ckpt


def trained_steps(ckpt: dict) -> int | None:
    """Agent steps behind a checkpoint's weights (training or weights-only)."""
    return (ckpt.get("trained") or ckpt.get("counters") or {}).get("global_step")


# --------------------------------------------------------------------------- the trainer's state
def capture(t, env_snapshot: bytes | None) -> dict:
    """Everything a `train.Trainer` needs to continue exactly where it is."""
    return {
        "format": FORMAT,
        "config": t.cfg.to_dict(),
        "obs_shape": list(t.obs_shape),
        "n_actions": t.n_actions,
        "q_network": t.q_network.state_dict(),
        "target_network": t.target_network.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "counters": {"global_step": t.global_step, "episode": t.episode, "updates": t.updates,
                     "update_credit": t.update_credit, "epsilon": t.epsilon, "learning_stopped": t.learning_stopped},
        "history": {"recent_wins": list(t.recent_wins), "recent_returns": list(t.recent_returns),
                    "episode_return": t.episode_return.tolist(), "episode_length": t.episode_length.tolist(),
                    "action_counts": t.action_counts.tolist(), "last_eval": t.last_eval, "best_eval": t.best_eval,
                    "loss_sum": float(t.loss_sum), "loss_count": t.loss_count},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "trainer": t.rng.bit_generator.state},
        "env": {"snapshot": env_snapshot, "obs": np.array(t.obs), "autoreset": t.autoreset.copy()},
        "replay": t.replay.state_dict() if t.cfg.save_replay else None,
    }


def capture_weights(t) -> dict:
    """Just what a weights-only file needs from a `train.Trainer` (no replay, no optimiser)."""
    return {"config": t.cfg.to_dict(), "obs_shape": list(t.obs_shape), "n_actions": t.n_actions,
            "q_network": t.q_network.state_dict(),
            "counters": {"global_step": t.global_step, "episode": t.episode, "updates": t.updates}}


def restore(t, ckpt: dict) -> tuple[str, dict | None]:
    """Put a checkpoint's state into a `train.Trainer` built with the same network shape.

    Returns (a note on the replay, the environments' saved state or None when it cannot apply)."""
    check_shape(ckpt["config"], t.cfg, "the run's checkpoint",
                "restore the value or start a new run (python run.py --forcenewrun)")
    t.q_network.load_state_dict(ckpt["q_network"])
    t.target_network.load_state_dict(ckpt["target_network"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    for group in t.optimizer.param_groups:  # a changed learning rate applies
        group["lr"] = t.cfg.learning_rate
    c = ckpt["counters"]
    t.global_step, t.episode, t.updates = c["global_step"], c["episode"], c["updates"]
    t.update_credit, t.epsilon, t.learning_stopped = c["update_credit"], c["epsilon"], c["learning_stopped"]
    h = ckpt["history"]
    t.recent_wins.extend(h["recent_wins"])
    t.recent_returns.extend(h["recent_returns"])
    t.action_counts[:] = h["action_counts"]
    t.last_eval = h["last_eval"]
    t.best_eval = h.get("best_eval")  # absent in checkpoints of older versions
    t.loss_sum.fill_(h["loss_sum"])
    t.loss_count = h["loss_count"]
    r = ckpt["rng"]
    random.setstate(r["python"])
    np.random.set_state(r["numpy"])
    torch.set_rng_state(r["torch"])
    if r["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(r["cuda"])
    t.rng.bit_generator.state = r["trainer"]
    if ckpt["replay"] is None:
        replay_note = "no replay in the checkpoint (save_replay was false); starting with an empty one"
    else:
        replay_note = "replay restored"
        try:
            t.replay.load_state_dict(ckpt["replay"])
        except (ValueError, KeyError) as e:
            replay_note = f"replay not restored ({e}); starting with an empty one"
    env = ckpt["env"]
    if env["snapshot"] is None or t.cfg.agents != len(env["obs"]):
        return replay_note, None
    t.episode_return[:] = h["episode_return"]
    t.episode_length[:] = h["episode_length"]
    return replay_note, env
