"""Config schema and loading, run-folder storage helpers and small logging utilities.

Nothing here knows about DQN. The config part imports only the standard library so
that `run.py` can validate a config before the requirements are installed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping


class ConfigError(ValueError):
    """Bad configuration. The message is the one line a user sees."""


# --------------------------------------------------------------------------- schema
@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its default, accepted type, allowed values and meaning."""

    name: str
    default: Any
    kind: str  # "bool", "int", "float", "str", "int_list"
    doc: str
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    choices: tuple | None = None
    low_open: bool = False  # lower bound is exclusive
    length: int | None = None  # exact length for lists
    pattern: str | None = None  # regex a string must match in full


def _keys() -> list[Key]:
    K = Key
    return [
        # ---- keys of the original project (names and meanings kept)
        K("name", "carracing", "str", "Run name (folder under `runs_dir`); letters, digits, `.`, `_`, `-`.",
          pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"),
        K("continue_run", True, "bool", "Resume the newest checkpoint of the run if there is one; false starts the run anew."),
        K("agents", 1, "int", "Parallel environments stepped in lockstep (a vector env with worker processes when > 1).", low=1, high=256),
        K("hidden_layers", [512], "int_list", "Widths of the fully connected hidden layers (spiking layers for `snn`)."),
        K("learning_rate", 1e-4, "float", "Adam learning rate.", low=0, low_open=True, high=1),
        K("decay", 0.99, "float", "Multiplicative ε decay applied after every episode, down to `epsilon_min`.", low=0, low_open=True, high=1),
        K("batch", 64, "int", "Minibatch size of each update.", low=1, high=65536),
        K("gamma", 0.99, "float", "Discount factor.", low=0, high=1),
        K("extra_info", "", "str", "Tag appended to the run name (`<name>-<extra_info>`); empty for none.",
          pattern=r"[A-Za-z0-9._-]{0,100}"),
        K("max_run_time", 12600, "float", "Seconds one `train.py` bout may run before it checkpoints and exits.", low=1),
        K("stop_learning_at_win_percent", 90, "float",
          "Stop updating the networks once this share (0–100) of the last 100 episodes are wins; 0 = never.", low=0, high=100),
        K("train_max_time", 14000, "float", "Seconds the launcher keeps starting bouts, all bouts together.", low=1),
        K("upload_to_cloud", False, "bool", "Mirror the run folder to the Hugging Face Hub repo `repo_ID` of `.env`."),
        K("local_backup", True, "bool", "Keep the full run folder on local disk (false: only what the Hub needs)."),
        K("architecture", "snn", "str", "`snn` (spiking Q-network) or `ann` (ReLU Q-network).", choices=("snn", "ann")),
        K("snn_tSteps", 25, "int", "Time steps each spiking forward pass runs for.", low=1, high=1000),
        K("snn_beta", 0.95, "float", "Membrane decay of the leaky integrate-and-fire neurons.", low=0, low_open=True, high=1),
        K("debug", False, "bool", "Log extra diagnostics (firing rates, action histogram, gradient norms, frames)."),
        # ---- fixed new keys
        K("env_id", "CarRacing-v3", "str", "Gymnasium environment id (discrete action space)."),
        K("seed", 0, "int", "Seed of tracks, exploration and network initialisation.", low=0, high=2**31 - 1),
        K("total_steps", 0, "int", "Agent-step budget of the whole run; 0 = none.", low=0),
        K("max_episodes", 0, "int", "Episode budget of the whole run; 0 = none.", low=0),
        K("replay_size", 100_000, "int", "Transitions kept in the replay buffer.", low=1),
        K("learning_starts", 5_000, "int", "Agent steps of pure exploration before the first update.", low=0),
        K("checkpoint_every", 10, "int", "Episodes between checkpoints.", low=1),
        K("runs_dir", "runs", "str", "Folder holding the run folders."),
        K("device", "auto", "str", "`auto` (CUDA when present), `cpu` or `cuda`.", choices=("auto", "cpu", "cuda")),
        K("frame_skip", 4, "int", "Times each chosen action is repeated (image environments).", low=1, high=64),
        K("frame_stack", 4, "int", "Consecutive frames stacked into one observation (image environments).", low=1, high=64),
        K("win_threshold", 900.0, "float", "An episode whose return reaches this is a win."),
        K("snn_mode", "hybrid", "str", "`hybrid`: ANN conv encoder + spiking FC layers; `full`: every layer spiking.",
          choices=("hybrid", "full")),
        # ---- keys named by this project
        K("train_every", 4, "int", "Agent steps between updates.", low=1),
        K("target_update_every", 1000, "int", "Agent steps between target-network updates.", low=1),
        K("target_tau", 1.0, "float", "Target update weight: 1 copies the online network, < 1 is a soft (Polyak) update.",
          low=0, low_open=True, high=1),
        K("epsilon_start", 1.0, "float", "ε at the start of the run.", low=0, high=1),
        K("epsilon_min", 0.05, "float", "Floor of ε.", low=0, high=1),
        K("grad_clip", 10.0, "float", "Max gradient norm per update; 0 = no clipping.", low=0),
        K("obs_size", 84, "int", "Side of the square observation after resizing (image environments).", low=8, high=512),
        K("obs_grayscale", True, "bool", "Convert image observations to grayscale."),
        K("obs_crop", [0, 12, 0, 0], "int_list", "Pixels cut off the raw frame [top, bottom, left, right] before resizing "
          "(CarRacing's bottom 12 rows are the HUD).", length=4),
        K("lenient_termination", 0, "int", "End an episode after this many consecutive agent steps without reward progress; "
          "0 = off.", low=0),
        K("prioritized_replay", False, "bool", "Proportional prioritized replay (sum-tree)."),
        K("per_alpha", 0.6, "float", "Priority exponent of prioritized replay.", low=0, high=1),
        K("per_beta", 0.4, "float", "Initial importance-sampling exponent (annealed to 1 over the run).", low=0, high=1),
        K("reward_clip", 0.0, "float", "Clip rewards to [-reward_clip, reward_clip] for learning; 0 = off.", low=0),
        K("save_replay", True, "bool", "Store the replay buffer (compressed) in checkpoints for exact resume."),
        K("keep_checkpoints", 3, "int", "Newest checkpoints kept on disk (and on the Hub).", low=1, high=100),
        K("eval_every", 25, "int", "Episodes between greedy evaluations during training; 0 = off.", low=0),
        K("eval_episodes", 3, "int", "Episodes per evaluation during training.", low=1),
        K("record_every", 0, "int", "Episodes between GIF recordings into the run folder; 0 = off.", low=0),
        K("snn_readout", "mean", "str", "How Q-values are read from the output membrane: `mean`, `last` or `max` over "
          "steps (`mean` learns CarRacing best in short training runs, see bench/tune.py).",
          choices=("mean", "last", "max")),
        K("snn_surrogate", "atan", "str", "Surrogate gradient of the spike: `atan`, `fast_sigmoid`, `sigmoid`, `triangular`.",
          choices=("atan", "fast_sigmoid", "sigmoid", "triangular")),
        K("init_weights", "", "str", "Start a new run from trained weights: a `pretrained/*.pt` file or a checkpoint "
          "(its online network is copied into both networks; the shape keys must match). Empty = random "
          "initialisation. A resumed run keeps its own weights."),
    ]


SCHEMA: dict[str, Key] = {k.name: k for k in _keys()}


def _schema_fields():
    fields = []
    for key in SCHEMA.values():
        default = key.default
        factory = (lambda d=default: list(d)) if isinstance(default, list) else None
        if factory:
            fields.append((key.name, Any, dataclasses.field(default_factory=factory)))
        else:
            fields.append((key.name, Any, dataclasses.field(default=default)))
    return fields


def _config_methods():
    def to_dict(self) -> dict:
        """The config as a plain JSON-able dict (every key, in schema order)."""
        return {name: (list(v) if isinstance(v, list) else v)
                for name, v in ((n, getattr(self, n)) for n in SCHEMA)}

    def replace(self, **changes) -> "Config":
        """A new validated config with some keys changed."""
        return load_config({**self.to_dict(), **changes})

    def run_name(self) -> str:
        return f"{self.name}-{self.extra_info}" if self.extra_info else self.name

    def run_dir(self, base: str | os.PathLike | None = None) -> Path:
        root = Path(self.runs_dir)
        if base is not None and not root.is_absolute():
            root = Path(base) / root
        return root / self.run_name

    # Clear names for the seed's spellings, mapped once here.
    props = {
        "to_dict": to_dict,
        "replace": replace,
        "run_name": property(run_name),
        "run_dir": run_dir,
        "time_steps": property(lambda self: self.snn_tSteps),
        "beta": property(lambda self: self.snn_beta),
        "batch_size": property(lambda self: self.batch),
        "epsilon_decay": property(lambda self: self.decay),
        "num_envs": property(lambda self: self.agents),
    }
    return props


Config = dataclasses.make_dataclass("Config", _schema_fields(), namespace=_config_methods(), frozen=True)
Config.__doc__ = "Validated training configuration; attribute names are the `conf.json` keys."
Config.__module__ = __name__  # picklable (worker processes, env snapshots)


# --------------------------------------------------------------------------- validation
def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _check_value(key: Key, value: Any) -> Any:
    """Return the value normalised to the key's type, or raise ConfigError naming the key."""
    name = key.name
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}' must be true or false, got {_type_name(value)} ({json.dumps(value)})")
        return value
    if key.kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{name}' must be an integer, got {_type_name(value)} ({json.dumps(value)})")
    elif key.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{name}' must be a number, got {_type_name(value)} ({json.dumps(value)})")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"config key '{name}' must be a finite number")
    elif key.kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"config key '{name}' must be a string, got {_type_name(value)} ({json.dumps(value)})")
        if key.choices and value not in key.choices:
            hint = difflib.get_close_matches(value, key.choices, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"config key '{name}' must be one of {', '.join(map(repr, key.choices))}, "
                              f"got {value!r}{extra}")
        if key.pattern and not re.fullmatch(key.pattern, value):
            raise ConfigError(f"config key '{name}' has an invalid value {value!r}: use letters, digits, '.', '_' or '-'")
        return value
    elif key.kind == "int_list":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"config key '{name}' must be a list of integers, got {json.dumps(value)}")
        if key.length is not None and len(value) != key.length:
            raise ConfigError(f"config key '{name}' must have exactly {key.length} entries, got {len(value)}")
        return list(value)
    # numeric range checks
    if key.low is not None and (value < key.low or (key.low_open and value == key.low)):
        op = ">" if key.low_open else ">="
        raise ConfigError(f"config key '{name}' must be {op} {_fmt(key.low)}, got {_fmt(value)}")
    if key.high is not None and value > key.high:
        raise ConfigError(f"config key '{name}' must be <= {_fmt(key.high)}, got {_fmt(value)}")
    return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _check_combinations(values: dict) -> None:
    """Rules that involve several keys (contradictory values)."""
    if not values["hidden_layers"] or any(w < 1 for w in values["hidden_layers"]):
        raise ConfigError("config key 'hidden_layers' must be a non-empty list of positive widths, "
                          f"got {json.dumps(values['hidden_layers'])}")
    if any(c < 0 for c in values["obs_crop"]):
        raise ConfigError(f"config key 'obs_crop' must hold pixel counts >= 0, got {json.dumps(values['obs_crop'])}")
    if values["epsilon_min"] > values["epsilon_start"]:
        raise ConfigError(f"config keys 'epsilon_min' ({values['epsilon_min']}) and 'epsilon_start' "
                          f"({values['epsilon_start']}) contradict: epsilon_min must not exceed epsilon_start")
    if values["batch"] > values["replay_size"]:
        raise ConfigError(f"config keys 'batch' ({values['batch']}) and 'replay_size' ({values['replay_size']}) "
                          "contradict: a batch cannot be larger than the replay buffer")
    if not values["upload_to_cloud"] and not values["local_backup"]:
        raise ConfigError("config keys 'upload_to_cloud' and 'local_backup' are both false: checkpoints would be kept "
                          "nowhere; set one of them to true")


def load_config(source: str | os.PathLike | Mapping[str, Any] | None = None) -> Config:
    """Load, fill defaults, validate and return the config.

    `source` is a path to a JSON file, a dict of keys, or None for all defaults.
    Bad input raises ConfigError whose message is one line naming the problem.
    """
    origin = "config"
    if source is None:
        raw: Any = {}
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; copy conf.json.example to start from") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from None
        raw = parse_json(text, origin)
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a JSON object of keys, got {_type_name(raw)}")
    values = {}
    for name, value in raw.items():
        key = SCHEMA.get(name)
        if key is None:
            hint = difflib.get_close_matches(name, SCHEMA.keys(), n=1, cutoff=0.6)
            if not hint:
                hint = [k for k in SCHEMA if k.lower() == str(name).lower()]
            extra = f"; did you mean '{hint[0]}'?" if hint else "; see the README for the list of keys"
            raise ConfigError(f"unknown config key '{name}'{extra}")
        values[name] = _check_value(key, value)
    for name, key in SCHEMA.items():
        if name not in values:
            values[name] = list(key.default) if isinstance(key.default, list) else key.default
    _check_combinations(values)
    return Config(**values)


def one_line_cli_errors(parser, prog: str) -> None:
    """Make an argparse parser raise ConfigError (one line, exit 2 by the caller) instead of printing usage."""

    def fail(message: str):
        raise ConfigError(f"{message} (see python {prog} --help)")

    parser.error = fail


def parse_json(text: str, origin: str = "JSON") -> Any:
    """json.loads with a one-line ConfigError that gives the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{origin} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


# --------------------------------------------------------------------------- storage
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes private files; keep the permissions a plain write gives
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file, returning `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_status(run_dir: str | os.PathLike, finished: bool, reason: str, **extra: Any) -> None:
    """`status.json` of the run-folder contract: `finished` and `reason` (+ extra fields)."""
    atomic_write_json(Path(run_dir) / "status.json", {"finished": bool(finished), "reason": reason, **extra})


def read_status(run_dir: str | os.PathLike) -> dict:
    status = read_json(Path(run_dir) / "status.json", default=None)
    return status if isinstance(status, dict) else {}


# --------------------------------------------------------------------------- logging
def kv_line(event: str, **fields: Any) -> str:
    """One machine-readable log line: `event key=value key=value`."""
    parts = [event]
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        v = str(v)
        if not v or any(c.isspace() for c in v) or '"' in v:
            v = json.dumps(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


def config_table(values: Mapping[str, Any]) -> str:
    """A Markdown table of the hyperparameters, written once at the start of a run."""
    rows = "\n".join(f"|{k}|{json.dumps(v)}|" for k, v in values.items())
    return "|key|value|\n|-|-|\n" + rows


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """`key: old -> new` for every key whose value differs."""
    skip = set(ignore)
    return [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
            for k in new if k not in skip and old.get(k) != new.get(k)]


# --------------------------------------------------------------------------- metrics
METRIC_FIELDS = ["episode", "global_step", "return", "length", "epsilon", "win", "loss", "sps", "wall_time",
                 "eval_return"]


class MetricsLog:
    """`metrics.csv` (one row per episode, appended and flushed) plus optional TensorBoard scalars."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self.writer = None

    def truncate_to(self, episodes: int) -> None:
        """Drop rows past `episodes` (rows written after the checkpoint being resumed)."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        if len(lines) > episodes + 1:
            atomic_write_bytes(self.path, ("\n".join(lines[:episodes + 1]) + "\n").encode())

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

    def text(self, tag: str, value: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, value)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_ret, ax_eps), (ax_loss, ax_win) = axes
    for label, path in runs.items():
        m = read_metrics(path)
        if not m.get("episode"):
            continue
        ep = m["episode"]
        line, = ax_ret.plot(ep, m["return"], alpha=0.25)
        ax_ret.plot(ep, rolling_mean(m["return"]), color=line.get_color(), label=f"{label} (100-ep mean)")
        ev = [(e, r) for e, r in zip(ep, m.get("eval_return", [])) if not math.isnan(r)]
        if ev:
            ax_ret.plot(*zip(*ev), "o", color=line.get_color(), markersize=3, label=f"{label} eval")
        ax_eps.plot(ep, m["epsilon"], label=label)
        loss = [(e, v) for e, v in zip(ep, m.get("loss", [])) if not math.isnan(v)]
        if loss:
            ax_loss.plot(*zip(*loss), label=label)
        ax_win.plot(ep, [100 * w for w in rolling_mean(m["win"])], label=label)
    if win_threshold is not None:
        ax_ret.axhline(win_threshold, color="gray", linestyle="--", linewidth=1, label="win threshold")
    for ax, title in ((ax_ret, "episodic return"), (ax_eps, "ε"), (ax_loss, "TD loss (episode mean)"),
                      (ax_win, "wins in the last 100 episodes (%)")):
        ax.set_title(title)
        ax.set_xlabel("episode")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_loss.set_yscale("log")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
