"""The agents a user names: `init_weights`, `teacher`, `evaluate.py --checkpoint` — a training checkpoint,
a weights-only file (`pretrained/*.pt`, `best.pt`) or a published agent `hf://owner/name` — read, checked
against the config that will use them, and built into a network.

checkpoints.py knows the file format and nothing of the Hub; the Hub download is publish.download_agent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

import checkpoints
import models
import publish
from config import ConfigError, as_trained, keep_former_defaults, load_config


def user_path(spec: str, root: Path) -> Path:
    """A file named in the config: relative to the working folder, else to the repository `root`."""
    path = Path(spec)
    return Path(root) / path if not path.is_absolute() and not path.exists() else path


def build_network(ckpt: dict, device: str = "auto", path: Path | str = "the file"):
    """(config, Q-network in eval mode on its device) of a checkpoint or weights-only file, built with
    the config it was trained with (keys it predates as it was trained)."""
    missing = [k for k in ("config", "obs_shape", "n_actions", "q_network") if k not in ckpt]
    if missing:
        raise ConfigError(f"{path} is not an agent file or checkpoint of this toolkit (it lacks {', '.join(missing)})")
    cfg = load_config({**as_trained(ckpt["config"]), "device": device})
    with torch.random.fork_rng(devices=[]):  # its random initialisation is overwritten: leave the seeded RNG alone
        net = models.build_q_network(cfg, ckpt["obs_shape"], ckpt["n_actions"])
    try:
        net.load_state_dict(ckpt["q_network"])
    except RuntimeError:
        raise ConfigError(f"checkpoint {path} does not match the {cfg.architecture} network its config describes "
                          "(architecture or sizes differ)") from None
    return cfg, net.to(models.resolve_device(cfg.device)).eval()


# keys that decide what an agent sees and does: a teacher must share them with the student
OBSERVATION_KEYS = ("env_id", "frame_skip", "frame_stack", "obs_size", "obs_grayscale", "obs_crop")


def read_agent(spec: str, root: Path | None = None, what: str = "--checkpoint hf://") -> tuple[Path, dict]:
    """(local path, contents) of a training checkpoint or agent file the user names (relative to the working
    folder, else to `root`), or of a published agent `hf://owner/name`: downloaded to the Hub cache and loaded
    weights-only (a downloaded file never runs pickled code). Bad input is a one-line ConfigError."""
    if spec.startswith(publish.HF_PREFIX):
        path = publish.download_agent(spec, what)
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"{spec}: its {path.name} cannot be read ({type(e).__name__})") from None
    path = user_path(spec, root) if root is not None else Path(spec)
    return path, checkpoints.read_for_user(path)


def read_named(cfg, key: str, root: Path, empty_means: str) -> tuple[Path, dict]:
    """The checkpoint, agent file or `hf://` agent a config key names; bad input is one ConfigError naming
    the key."""
    try:
        return read_agent(getattr(cfg, key), root, "hf://")
    except ConfigError as e:
        raise ConfigError(f"config key '{key}': {e}; give a pretrained/*.pt file, a checkpoint or hf://owner/name, "
                          f"or \"\" for {empty_means}") from None


def read_teacher(cfg, root: Path):
    """The frozen Q-network of the `teacher` agent file on `cfg.device`, checked to see what the trainee
    sees (the same environment and observation pipeline, hence the same observation shape and actions)."""
    path, ckpt = read_named(cfg, "teacher", root, "no teacher")
    checkpoints.check_shape(ckpt["config"], cfg, f"the teacher {path}", "a teacher must see the same observations",
                            keys=OBSERVATION_KEYS, differs="other observations")
    _, net = build_network(ckpt, cfg.device, path)
    return net.requires_grad_(False), ckpt


def read_init_weights(cfg, root: Path, log: Callable[[str], None] = print) -> tuple[dict, Any]:
    """The checkpoint named by `init_weights` (relative to the working folder or `root`) and the config
    to build its network with (`cfg`, or with the former defaults the file was trained with), checked
    against the file's network shape; a plain head converted for a dueling config says so in
    `converted`."""
    path, ckpt = read_named(cfg, "init_weights", root, "random weights")
    saved = ckpt["config"]
    cfg = keep_former_defaults(saved, cfg, f"the init_weights file {path}", log)
    # a plain Q head may start a dueling one (models.plain_to_dueling: the same Q); not the reverse
    to_dueling = cfg.dueling and not saved.get("dueling", False)
    checkpoints.check_shape({**saved, "dueling": True} if to_dueling else saved, cfg,
                            f"the init_weights file {path}", "set {setting} in the config to start from this file")
    if to_dueling:
        ckpt = {**ckpt, "q_network": models.plain_to_dueling(ckpt["q_network"], ckpt["n_actions"]),
                "converted": "plain->dueling"}
    return ckpt, cfg
