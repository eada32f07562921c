"""The one place that knows the checkpoint format.

A training checkpoint is one dict (nanoGPT's shape): config, shapes, both networks, optimiser, counters,
history, every random state, the environments' state and the replay. It is written atomically as
`checkpoints/ckpt_<global_step:010d>.pt`; only the newest `keep_checkpoints` are kept. Reading falls
back past a file that cannot be loaded. The weights-only export (`pretrained/*.pt`) keeps what
evaluation and play need: config, shapes and the online network.

The replay's frames (nearly all of a checkpoint's bytes) are not in the checkpoint: they are saved
incrementally as append-only segments in `checkpoints/replay/`, each holding the frames added since
the previous checkpoint, written and verified before the checkpoint that references them (by name and
sha256). A segment no kept checkpoint references is ignored and then deleted; a referenced one that is
missing or damaged makes that checkpoint fall back like an unloadable file.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from config import SCHEMA, SHAPE_KEYS, ConfigError, as_trained, settings_text
from utils import atomic_write_bytes, atomic_write_json, read_json

FORMAT = 1
NAME_RE = re.compile(r"^ckpt_(\d+)\.pt$")
BEST_NAME = "best.pt"  # in the run folder: the policy with the best held-out evaluation so far
MANIFEST = ".manifest.json"  # {name: {"sha256", "bytes", "segments"}} of the checkpoints written and verified here
SEGMENT_DIR = "replay"  # checkpoints/replay/seg_<step>_<sha256 prefix>.bin: the replay's frames
SEGMENT_MAGIC = b"SNNDQN-REPLAY-SEGMENT-1\n"


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
    sha256 before the manifest names it (only then is it the newest), and prune to the newest `keep`
    (and the replay segments none of them references). Returns (path, bytes written)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    path = Path(ckpt_dir) / name_for(state["counters"]["global_step"])
    digest = _write_verified(path, data)
    replay = state.get("replay") or {}
    record(ckpt_dir, path.name, digest, len(data), [seg["name"] for seg in replay.get("segments", [])], keep)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    prune_segments(ckpt_dir)
    return path, len(data)


def _write_verified(path: Path, data) -> str:
    """Atomic write, then the file read back must have the sha256 of `data` (returned)."""
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    if sha256_of(path) != digest:
        path.unlink(missing_ok=True)
        raise OSError(f"{path.name} read back differently from what was written; disk or filesystem fault")
    return digest


def record(ckpt_dir: Path, name: str, digest: str, size: int, segments: list[str], keep: int) -> None:
    """Name a whole checkpoint in the manifest. Entries stay for the newest `keep` checkpoints, also
    those whose file lives only on the Hub (local_backup false): their segments are still needed."""
    manifest = _manifest(ckpt_dir)
    manifest[name] = {"sha256": digest, "bytes": size, "segments": segments}
    names = sorted(set(manifest) | {p.name for p in list_checkpoints(ckpt_dir)})[-keep:]
    atomic_write_json(Path(ckpt_dir) / MANIFEST, {n: manifest[n] for n in names if n in manifest})


def referenced_segments(ckpt_dir: Path, names) -> set[str] | None:
    """Replay segments the checkpoints `names` need, or None when one of them has no manifest entry
    (fetched, or written by an older version): then nothing may be deleted."""
    manifest = _manifest(ckpt_dir)
    if any(n not in manifest for n in names):
        return None
    return {seg for n in names for seg in manifest[n].get("segments", [])}


def prune_segments(ckpt_dir: Path) -> None:
    """Delete the segments that no kept checkpoint references (also those a crash left unreferenced)."""
    kept = set(_manifest(ckpt_dir)) | {p.name for p in list_checkpoints(ckpt_dir)}
    needed = referenced_segments(ckpt_dir, kept)
    if needed is None:
        return
    for path in (Path(ckpt_dir) / SEGMENT_DIR).glob("seg_*.bin"):
        if path.name not in needed:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- replay segments
def _encode_segment(parts, dtype, frame_shape) -> bytes:
    """MAGIC, header length, JSON header, then one zlib blob per environment (no pickle)."""
    header = {"dtype": str(dtype), "frame_shape": list(frame_shape), "envs": []}
    blobs = []
    for start, frames in parts:
        blob = zlib.compress(np.ascontiguousarray(frames).tobytes(), 1)
        header["envs"].append([int(start), len(frames), len(blob)])
        blobs.append(blob)
    head = json.dumps(header).encode()
    return SEGMENT_MAGIC + len(head).to_bytes(8, "little") + head + b"".join(blobs)


def _decode_segment(data: bytes) -> list[tuple[int, np.ndarray]]:
    if not data.startswith(SEGMENT_MAGIC):
        raise ValueError("not a replay segment")
    at = len(SEGMENT_MAGIC)
    size = int.from_bytes(data[at:at + 8], "little")
    header = json.loads(data[at + 8:at + 8 + size])
    at += 8 + size
    parts = []
    for start, n, nbytes in header["envs"]:
        raw = zlib.decompress(data[at:at + nbytes])
        parts.append((start, np.frombuffer(raw, dtype=header["dtype"]).reshape(n, *header["frame_shape"])))
        at += nbytes
    return parts


class ReplaySegments:
    """The replay's frames on disk as append-only segments, one per checkpoint (owned by the trainer)."""

    def __init__(self, ckpt_dir: Path):
        self.dir = Path(ckpt_dir) / SEGMENT_DIR
        self.segments: list[dict] = []  # {"name", "sha256", "bytes", "ranges": [[start, end] per env]}
        self.marks = None  # replay.written when the last segment was taken; None: nothing saved yet
        self.last_bytes = 0  # size of the segment the last capture wrote

    def capture(self, replay, step: int) -> dict:
        """Write the frames added since the last capture as a new segment (verified) and return the
        replay's state with the segments it needs instead of its frames."""
        marks = self.marks if self.marks is not None else np.zeros(replay.num_envs, dtype=np.int64)
        parts = replay.frames_since(marks)
        self.last_bytes = 0
        if any(len(frames) for _, frames in parts):
            data = _encode_segment(parts, replay.frames.dtype, replay.frame_shape)
            digest = hashlib.sha256(data).hexdigest()
            name = f"seg_{step:010d}_{digest[:12]}.bin"
            _write_verified(self.dir / name, data)
            self.last_bytes = len(data)
            self.segments.append({"name": name, "sha256": digest, "bytes": len(data),
                                  "ranges": [[start, start + len(frames)] for start, frames in parts]})
        self.marks = replay.written.copy()
        oldest_live = replay.written - replay.per_env
        self.segments = [seg for seg in self.segments  # a segment whose frames were all overwritten goes
                         if any(end > oldest_live[e] and end > start for e, (start, end) in enumerate(seg["ranges"]))]
        state = replay.state_dict(frames=False)
        state["segments"] = [dict(seg) for seg in self.segments]
        return state

    def reset(self) -> None:
        """Nothing saved yet: the next capture writes every frame the replay holds."""
        self.segments, self.marks = [], None

    def restore(self, replay, state: dict) -> None:
        """Load a replay state (segment data attached by `load_newest`, or frames inline from older versions)."""
        replay.load_state_dict(state)
        for data in state.get("segment_data", []):
            for e, (start, frames) in enumerate(_decode_segment(data)):
                replay.put_frames(e, start, frames)
        if "segments" in state:
            self.segments, self.marks = [dict(seg) for seg in state["segments"]], replay.written.copy()
        else:  # frames were inline: the next checkpoint saves them all once
            self.reset()


def read_segments(ckpt_dir: Path, replay_state: dict) -> list[bytes]:
    """The bytes of every segment a checkpoint's replay references; ValueError naming one that is
    missing or does not match its sha256."""
    out = []
    for seg in replay_state.get("segments", []):
        path = Path(ckpt_dir) / SEGMENT_DIR / seg["name"]
        try:
            data = path.read_bytes()
        except OSError:
            raise ValueError(f"replay segment {seg['name']} is missing") from None
        if len(data) != seg["bytes"] or hashlib.sha256(data).hexdigest() != seg["sha256"]:
            raise ValueError(f"replay segment {seg['name']} is damaged (sha256 mismatch)")
        out.append(data)
    return out


def _manifest(ckpt_dir: Path) -> dict:
    m = read_json(Path(ckpt_dir) / MANIFEST, default={})
    return m if isinstance(m, dict) else {}


def segment_whole(path: Path) -> bool:
    """A replay segment's content still has the sha256 its name starts with."""
    digest = Path(path).stem.rsplit("_", 1)[-1]
    try:
        return len(digest) == 12 and sha256_of(path).startswith(digest)
    except OSError:
        return False


def sha256_of(path: Path) -> str:
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
        return path.stat().st_size == entry["bytes"] and sha256_of(path) == entry["sha256"]
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


def load_newest(ckpt_dir: Path, map_location="cpu", log: Callable[[str], None] = print, replay: bool = True):
    """(path, checkpoint) of the newest loadable checkpoint, or None; a newer file that cannot be
    loaded is skipped with a warning line. With `replay`, the replay segments are read and checked too
    (attached as replay["segment_data"]): a checkpoint whose segments are damaged falls back to the
    previous one, and when no checkpoint has its segments whole, the newest loads with an empty replay."""
    manifest = _manifest(ckpt_dir)
    without_replay = None
    for path in reversed(list_checkpoints(ckpt_dir)):
        entry = manifest.get(path.name)
        try:
            if entry is not None and not _matches(path, entry):
                raise ValueError("its sha256 does not match the manifest")
            ckpt = read(path, map_location)
        except Exception as e:
            log(f"warning: checkpoint {path.name} cannot be loaded ({type(e).__name__}: {str(e)[:120]}); "
                "falling back to the previous one")
            continue
        state = ckpt.get("replay")
        if not replay:
            ckpt["replay"] = None
        elif state is not None and "segments" in state:
            try:
                state["segment_data"] = read_segments(ckpt_dir, state)
            except ValueError as e:
                log(f"warning: checkpoint {path.name}: its {e}; falling back to the previous one")
                if without_replay is None:
                    ckpt["replay"] = {"missing": str(e)}
                    without_replay = (path, ckpt)
                continue
        return path, ckpt
    if without_replay is not None:
        log(f"warning: no checkpoint has its replay whole; continuing from {without_replay[0].name} with an empty "
            "replay (it refills before learning resumes)")
    return without_replay


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


def check_shape(saved_config: dict, cfg, what: str, hint: str, keys=SHAPE_KEYS,
                differs: str = "another network shape") -> None:
    """ConfigError when a key that changes the network's shape (or another of `keys`) differs between a
    checkpoint and `cfg`. `hint` may name the stored setting as `{setting}` (e.g. `"encoder": "nature"`)."""
    saved_config = as_trained(saved_config)  # a key added later: files before it were trained as PREDATING says
    for key in keys:
        saved = saved_config.get(key, SCHEMA[key].default)  # ... or with the key's default
        if saved != getattr(cfg, key):
            setting = settings_text({key: saved})
            raise ConfigError(f"config key '{key}' is {json.dumps(getattr(cfg, key))} but {what} has "
                              f"{json.dumps(saved)}, {differs}; {hint.format(setting=setting)}")


# --------------------------------------------------------------------------- weights-only files
def weights_only(ckpt: dict, evaluation: dict | None = None) -> dict:
    """The --export format: config, shapes, the online network, what trained it (no replay, no optimiser)."""
    small = {"format": FORMAT, "config": ckpt["config"], "obs_shape": ckpt["obs_shape"],
             "n_actions": ckpt["n_actions"], "q_network": ckpt["q_network"],
             "trained": ckpt.get("trained") or {k: ckpt.get("counters", {}).get(k)
                                                for k in ("global_step", "episode", "updates")},
             "lineage": lineage(ckpt)}
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


# --------------------------------------------------------------------------- lineage
# Every checkpoint and weights file says how its weights were made: one stage per run that trained them (a run
# from random weights, then each fine-tune that started from the previous stage's file with init_weights), each
# with its config, agent steps and frames; a teacher is named in the stage it taught.
def stage(config: dict, agent_steps: int, frames_per_step: int) -> dict:
    """One run's share of a file's training."""
    kept = {k: v for k, v in config.items() if k not in ("runs_dir", "device", "continue_run")}
    return {"run": config.get("name"), "agent_steps": int(agent_steps), "frames": int(agent_steps) * frames_per_step,
            "init_weights": config.get("init_weights") or None, "teacher": config.get("teacher") or None,
            "config": kept}


def lineage(ckpt: dict) -> list[dict]:
    """The stages behind a checkpoint's or weights file's weights, oldest first. A file written before lineage
    existed gives its own stage (from its config and step counter) after an unknown one where its config
    names init_weights: what that file held cannot be known."""
    if ckpt.get("lineage"):
        return ckpt["lineage"]
    config = ckpt.get("config") or {}
    steps = trained_steps(ckpt)
    image = len(ckpt.get("obs_shape") or ()) == 3
    own = [stage(config, steps, config.get("frame_skip", 1) if image else 1)] if steps is not None else [
        {"run": config.get("name"), "agent_steps": None, "frames": None, "unknown": True}]
    earlier = [{"run": None, "agent_steps": None, "frames": None, "unknown": True,
                "init_weights": config.get("init_weights")}] if config.get("init_weights") else []
    return earlier + own


def lineage_total(stages: list[dict]) -> dict:
    """Agent steps and frames of all stages together; None where a stage is unknown."""
    known = all(st.get("agent_steps") is not None for st in stages)
    return {"agent_steps": sum(st["agent_steps"] for st in stages) if known else None,
            "frames": sum(st["frames"] for st in stages) if known else None, "stages": len(stages)}


def trained_steps(ckpt: dict) -> int | None:
    """Agent steps behind a checkpoint's weights (training or weights-only)."""
    return (ckpt.get("trained") or ckpt.get("counters") or {}).get("global_step")


# --------------------------------------------------------------------------- random states and the replay
def rng_state(trainer_rng: np.random.Generator) -> dict:
    """Every random generator a run draws from, for an exact resume."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "trainer": trainer_rng.bit_generator.state}


def restore_rng(r: dict, trainer_rng: np.random.Generator) -> None:
    random.setstate(r["python"])
    np.random.set_state(r["numpy"])
    torch.set_rng_state(r["torch"])
    if r["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(r["cuda"])
    trainer_rng.bit_generator.state = r["trainer"]


def restore_replay(segments: ReplaySegments, replay, saved: dict | None) -> str:
    """Fill `replay` from a checkpoint's replay section; a note on what happened (an empty replay refills
    before learning resumes)."""
    if saved is None:
        return "no replay in the checkpoint (save_replay was false); starting with an empty one"
    if "missing" in saved:
        return f"replay not restored (the checkpoint's {saved['missing']}); starting with an empty one"
    try:
        segments.restore(replay, saved)
    except (ValueError, KeyError, zlib.error) as e:
        replay.clear()
        segments.reset()
        return f"replay not restored ({e}); starting with an empty one"
    return "replay restored"
