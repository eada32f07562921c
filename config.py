"""The config schema: every `conf.json` key, its default, type, range and meaning; loading with one-line errors.
(`.env` is envfile.py.)

Standard library only: `run.py` validates a config with it before any requirement is installed. The
defaults are the values of `conf.json.example` (a test checks it). Keys marked `shape=True` change the
network's parameter shapes: a resume or `init_weights` with another value is refused, except where
the key's default changed (FORMER_DEFAULTS).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

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
    shape: bool = False  # changes the network's parameter shapes (a resume with another value is refused)


def _keys() -> list[Key]:
    K = Key
    return [
        # ---- keys of the original project (names and meanings kept)
        K("name", "carracing", "str", "Run name (folder under `runs_dir`); letters, digits, `.`, `_`, `-`.",
          pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"),
        K("continue_run", True, "bool", "Resume the newest checkpoint of the run if there is one; false starts the run anew."),
        K("agents", 1, "int", "Parallel environments stepped in lockstep (a vector env with worker processes when > 1).", low=1, high=256),
        K("hidden_layers", [512], "int_list", "Widths of the fully connected hidden layers (spiking layers for `snn`).", shape=True),
        K("learning_rate", 1e-4, "float", "Adam learning rate.", low=0, low_open=True, high=1),
        K("decay", 0.99, "float", "Multiplicative ε decay applied after every episode, down to `epsilon_min`.", low=0, low_open=True, high=1),
        K("batch", 64, "int", "Minibatch size of each update.", low=1, high=65536),
        K("gamma", 0.99, "float", "Discount factor (0.995 lost at 40k agent steps: docs/tuning.md#gamma).", low=0, high=1),
        K("extra_info", "", "str", "Tag appended to the run name (`<name>-<extra_info>`); empty for none.",
          pattern=r"[A-Za-z0-9._-]{0,100}"),
        K("max_run_time", 12600, "float", "Seconds one `train.py` bout may run before it checkpoints and exits.", low=1),
        K("stop_learning_at_win_percent", 90, "float",
          "Stop updating the networks once this share (0–100) of the last 100 episodes are wins; 0 = never.", low=0, high=100),
        K("train_max_time", 14000, "float", "Seconds the launcher keeps starting bouts, all bouts together.", low=1),
        K("upload_to_cloud", False, "bool", "Mirror the run folder to the Hugging Face Hub repo `repo_ID` of `.env`."),
        K("local_backup", True, "bool", "Keep the full run folder on local disk (false: only what the Hub needs)."),
        K("architecture", "snn", "str", "`snn` (spiking Q-network) or `ann` (ReLU Q-network).", choices=("snn", "ann"), shape=True),
        K("snn_tSteps", 25, "int", "Time steps each spiking forward pass runs for.", low=1, high=1000),
        K("snn_beta", 0.95, "float", "Membrane decay of the leaky integrate-and-fire neurons.", low=0, low_open=True, high=1),
        K("debug", False, "bool", "Log extra diagnostics (firing rates, action histogram, gradient norms, frames)."),
        # ---- fixed new keys
        K("env_id", "CarRacing-v3", "str", "Gymnasium environment id (discrete action space).", shape=True),
        K("seed", 0, "int", "Seed of tracks, exploration and network initialisation.", low=0, high=2**31 - 1),
        K("total_steps", 750_000, "int", "Agent-step budget of the whole run; 0 = none. The default, 750k agent steps, is 3M frames at "
          "`frame_skip` 4: the budget the recipe is built for (docs/results.md#from-scratch).", low=0),
        K("max_episodes", 0, "int", "Episode budget of the whole run; 0 = none.", low=0),
        K("replay_size", 100_000, "int", "Transitions kept in the replay buffer.", low=1),
        K("learning_starts", 5_000, "int", "Agent steps of pure exploration before the first update.", low=0),
        K("checkpoint_every", 10, "int", "Episodes between checkpoints.", low=1),
        K("runs_dir", "runs", "str", "Folder holding the run folders."),
        K("device", "auto", "str", "`auto` (CUDA when present), `cpu` or `cuda`.", choices=("auto", "cpu", "cuda")),
        K("frame_skip", 4, "int", "Times each chosen action is repeated (image environments).", low=1, high=64),
        K("frame_stack", 4, "int", "Consecutive frames stacked into one observation (image environments).", low=1, high=64, shape=True),
        K("win_threshold", 900.0, "float", "An episode whose return reaches this is a win."),
        K("snn_mode", "hybrid", "str", "`hybrid`: ANN conv encoder + spiking FC layers; `full`: every layer spiking.",
          choices=("hybrid", "full"), shape=True),
        # ---- keys named by this project
        K("train_every", 4, "int", "Agent steps between updates (8 halves the updates and nearly doubles the loop's speed, but learned less "
          "per wall-clock second: docs/tuning.md#train_every).", low=1),
        K("target_update_every", 1000, "int", "Agent steps between target-network updates (docs/tuning.md#target_update_every-target_tau).", low=1),
        K("target_tau", 1.0, "float", "Target update weight: 1 copies the online network, < 1 is a soft (Polyak) update "
          "(docs/tuning.md#target_update_every-target_tau).",
          low=0, low_open=True, high=1),
        K("epsilon_start", 1.0, "float", "ε at the start of the run.", low=0, high=1),
        K("epsilon_min", 0.05, "float", "Floor of ε.", low=0, high=1),
        K("epsilon_decay_steps", 50_000, "int", "Agent steps over which ε falls linearly from `epsilon_start` to `epsilon_min` (by agent steps: episode "
          "lengths vary with lenient termination); 0 = the per-episode `decay` instead. A run trained before the "
          "key keeps `decay` on resume.", low=0),
        K("learning_rate_final", 2.5e-5, "float", "Learning rate reached after `learning_rate_decay_steps` (linear from `learning_rate`, then held).", low=0, low_open=True, high=1),
        K("learning_rate_decay_steps", 750_000, "int", "Agent steps over which the learning rate falls linearly from `learning_rate` to `learning_rate_final` "
          "(the shipped agents were fine-tuned at half the first rate); 0 = `learning_rate` throughout. A run "
          "trained before the key keeps a fixed rate on resume.", low=0),
        K("grad_clip", 10.0, "float", "Max gradient norm per update; 0 = no clipping.", low=0),
        K("obs_size", 84, "int", "Side of the square observation after resizing (image environments; 64 runs the loop faster but"
          " its greedy policies were less reliable: docs/tuning.md#obs_size).", low=8, high=512, shape=True),
        K("obs_grayscale", True, "bool", "Convert image observations to grayscale.", shape=True),
        K("obs_crop", [0, 12, 0, 0], "int_list", "Pixels cut off the raw frame [top, bottom, left, right] before resizing "
          "(CarRacing's bottom 12 rows are the HUD).", length=4, shape=True),
        K("lenient_termination", 25, "int", "End an episode after this many consecutive agent steps without reward progress; 0 = off. A training aid "
          "only: evaluations always play full episodes (`evaluate.py --lenient` keeps the aids); the clearest win "
          "of the tuning sweep (docs/tuning.md#lenient_termination).", low=0),
        K("skip_penalty", 10.0, "float", "CarRacing only (other environments default to 0), a training aid: reward subtracted for every track tile"
          " the car passes without touching it. Only a lap with every tile ends early, so one cut corner costs the "
          "tile and the rest of the 1000 frames (docs/tuning.md#skip_penalty). 0 = off; evaluations never apply it;"
          " the tiles it charged are `metrics.csv`'s `skipped_tiles`. A run trained before it was on by default "
          "keeps 0 on resume.", low=0),
        K("augment_shift", 0, "int", "DrQ's random shifts of the update's s and s' (up to this many pixels, edges "
          "repeated); 0 = off. Not chosen by evidence yet (docs/tuning.md#augment_shift).", low=0, high=16),
        K("prioritized_replay", False, "bool", "Proportional prioritized replay (sum-tree); no better at 40k or 100k agent steps "
          "(docs/tuning.md#prioritized_replay)."),
        K("per_alpha", 0.6, "float", "Priority exponent of prioritized replay.", low=0, high=1),
        K("per_beta", 0.4, "float", "Initial importance-sampling exponent (annealed to 1 over the run).", low=0, high=1),
        K("reward_clip", 0.0, "float", "Clip rewards to [-reward_clip, reward_clip] for learning; 0 = off.", low=0),
        K("save_replay", True, "bool", "Save the replay for exact resume: each checkpoint writes only the frames "
          "added since the previous one (a compressed segment in `checkpoints/replay/`)."),
        K("keep_checkpoints", 3, "int", "Newest checkpoints kept on disk (and on the Hub).", low=1, high=100),
        K("eval_every", 25, "int", "Episodes between greedy evaluations during training; 0 = off.", low=0),
        K("eval_episodes", 10, "int", "Full greedy episodes (no lenient termination) per evaluation during training, on held-out tracks (seeds "
          "10000+, never the table's 0-49); with the actor process the worker plays half of them. The best mean so "
          "far is kept as `runs/<run>/best.pt` (weights + config, the `--export` format); `python evaluate.py --run"
          " DIR --best` plays it.", low=1),
        K("eval_candidates", 3, "int", "The best in-run evaluations whose weights are kept as candidates (in "
          "`candidates/`, mirrored with the run) for the confirmation at the run's end; 0 = off.", low=0, high=20),
        K("eval_confirm_episodes", 50, "int", "When the run finishes, each candidate plays this many more full greedy "
          "episodes on seeds 20000+, `best.pt` becomes the one with the best mean over both sets, and its score is its "
          "mean on as many fresh tracks (seeds 30000+; docs/results.md#from-scratch). 0 = off.", low=0, high=1000),
        K("record_every", 0, "int", "Episodes between GIF recordings into the run folder; 0 = off.", low=0),
        K("snn_readout", "mean", "str", "How Q-values are read from the output membrane: `mean`, `last` or `max` over steps "
          "(docs/tuning.md#snn_readout-snn_tsteps).",
          choices=("mean", "last", "max")),
        K("snn_surrogate", "atan", "str", "Surrogate gradient of the spike: `atan`, `fast_sigmoid`, `sigmoid`, `triangular`.",
          choices=("atan", "fast_sigmoid", "sigmoid", "triangular")),
        K("n_step", 1, "int", "Rewards summed before bootstrapping (n-step returns; 1 = plain DDQN): the target is r_t + γ r_t+1 + … + "
          "γ^m Q(s_t+m) with m ≤ n, cut at the episode's end (docs/tuning.md#n_step).", low=1, high=20),
        K("dueling", False, "bool", "Dueling head: the output layer gives a value V and advantages A, Q = V + A − mean(A) (for the SNN on its"
          " membrane readout; docs/tuning.md#dueling).", shape=True),
        K("conv_precision", "auto", "str", "Arithmetic of the convolutional encoder (ANN and hybrid SNN): `float32`, `bfloat16` (autocast; the "
          "layers after it stay float32; faster on CPUs with AVX512-BF16 or AMX, docs/benchmarks.md), or `auto`: "
          "bfloat16 on a CPU that has it, float32 on other CPUs, on CUDA and for a full SNN (which refuses an "
          "explicit `bfloat16`). The `start` log line says which. Not a shape key: it may change on resume; an "
          "agent file plays with its own value (files from before the key: float32).",
          choices=("auto", "float32", "bfloat16")),
        K("encoder", "nature", "str", "Convolutional encoder of image observations (every architecture): `nature` (Nature DQN: 32, 64, 64 "
          "channels) or `nips` (the first DQN: 16 and 32 channels, a third of the arithmetic, a faster loop but "
          "weaker greedy policies: docs/tuning.md#encoder). Files from before the key have `nature`.", choices=("nature", "nips"), shape=True),
        K("actor", "auto", "str", "Who steps the environments while the learner updates: `process` (a worker process with its own "
          "environments and a copy of the online network plays the next `train_every` agent steps while the trainer"
          " runs the update the previous ones paid for: the policy is one update behind the plain loop's; on the "
          "CPU the worker also runs the target network's pass of that update when it pays and the trainer has one "
          "torch thread: docs/training.md#the-actor-process), `inline` (the same blocks in the trainer's process; "
          "the fallback when a worker cannot start), `off` (the plain loop: act, step, update) or `auto`: `process`"
          " for image observations on the CPU with ≥ 2 cores, else `off`. Runs from before the key count it as "
          "`off` on resume.", choices=("auto", "process", "inline", "off")),
        K("wandb_project", "", "str", "Weights & Biases project to mirror the TensorBoard scalars to; empty = off (needs `pip install wandb`; "
          "the API key comes from `WANDB_API_KEY` or `wandb login`, never from here). One W&B run per toolkit run, "
          "resumed by every bout.",
          pattern=r"[A-Za-z0-9._-]{0,128}"),
        K("wandb_entity", "", "str", "W&B entity (user or team) of the project; empty = your default entity.",
          pattern=r"[A-Za-z0-9._-]{0,128}"),
        K("wandb_mode", "online", "str", "`online`, `offline` (written under the run folder, `wandb sync` later) or "
          "`disabled`.", choices=("online", "offline", "disabled")),
        K("init_weights", "", "str", "Start a new run from trained weights: a `pretrained/*.pt` file, a checkpoint or a published agent "
          "`hf://owner/name` (downloaded to the Hugging Face cache, loaded weights-only). Its online network is "
          "copied into both networks; the shape keys must match, but a plain head may start a dueling one with the "
          "same Q. Empty = random initialisation. A resumed run keeps its own weights."),
        K("teacher", "", "str", "Kickstarting: a trained agent (`pretrained/*.pt` file, checkpoint or `hf://owner/name`; any "
          "architecture, the same observations) whose Q-values this network is also trained to match on every "
          "replay batch (Huber loss between both networks' Q-values minus their mean over the actions: the gaps "
          "between actions, not the level; weighted by `teacher_weight`; docs/tuning.md#teacher-kickstarting). Empty = off."),
        K("teacher_weight", 1.0, "float", "Weight of the teacher's loss at agent step 0.", low=0),
        K("teacher_steps", 0, "int", "Agent steps over which `teacher_weight` falls linearly to 0 (then the teacher is "
          "no longer run); 0 = the weight stays.", low=0),
    ]


SCHEMA: dict[str, Key] = {k.name: k for k in _keys()}
# The training aids, off: evaluations play the environment's own episodes and rewards.
EVALUATION: dict[str, Any] = {"lenient_termination": 0, "skip_penalty": 0.0}
# Stored configs (checkpoints, exported agents) written before a key existed were trained with these values,
# where today's default differs: such a file plays as it was trained (docs/tuning.md#conv_precision).
PREDATING: dict[str, Any] = {"conv_precision": "float32", "actor": "off", "encoder": "nature",
                              "epsilon_decay_steps": 0, "learning_rate_decay_steps": 0}


def as_trained(saved: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the keys it predates filled in as it was trained (PREDATING)."""
    return {**PREDATING, **saved}


# Shape keys whose default changed, with the former default: a run (or an init_weights file) trained
# with the former value continues with it while the config holds today's default — a conf.json that
# leaves the key out, after run.py's git sync brought the new default, must not strand the run. Add a
# key here in the commit that changes its default.
FORMER_DEFAULTS: dict[str, Any] = {}
# The same for the training recipe's keys (not shape keys): a run trained under the former defaults
# (ε decayed per episode, a fixed learning rate, no skip penalty, no step budget) keeps them on resume
# while the config holds today's default; a new run, also one from init_weights, takes today's.
FORMER_RECIPE: dict[str, Any] = {"epsilon_decay_steps": 0, "learning_rate_decay_steps": 0, "skip_penalty": 0.0,
                                 "total_steps": 0}


def settings_text(keys: Mapping[str, Any]) -> str:  # as in conf.json: `"encoder": "nature", "dueling": true`
    return ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())


def keep_former_defaults(saved: dict[str, Any], cfg, what: str, log=print, recipe: bool = False):
    """`cfg` with the former defaults (FORMER_DEFAULTS, and FORMER_RECIPE with `recipe`: a resumed run) the
    stored config `saved` (a checkpoint's, `what`) was trained with, where `cfg` holds today's default, said
    in a note line; `cfg` itself when none."""
    saved = as_trained(saved)
    former = {**FORMER_DEFAULTS, **FORMER_RECIPE} if recipe else FORMER_DEFAULTS
    kept = {key: old for key, old in former.items()
            if getattr(cfg, key) == SCHEMA[key].default != old and saved.get(key, SCHEMA[key].default) == old}
    if not kept:
        return cfg
    settings, today = settings_text(kept), settings_text({k: getattr(cfg, k) for k in kept})
    log(f"note: {what} has {settings}, the former default; the run keeps it (the config holds today's default "
        f"{today}; write {settings} in the config to say so, or start a new run for the new default)")
    return cfg.replace(**kept)


CARRACING_IDS = ("CarRacing-v3", "FastCarRacing-v3")
SHAPE_KEYS: tuple[str, ...] = tuple(k.name for k in SCHEMA.values() if k.shape)


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

    def for_evaluation(self) -> "Config":
        """The config with the training aids off: how agents are judged."""
        return self.replace(**EVALUATION)

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
        "for_evaluation": for_evaluation,
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
    if values["conv_precision"] == "bfloat16" and values["architecture"] == "snn" and values["snn_mode"] == "full":
        raise ConfigError("config key 'conv_precision' applies to the ANN and hybrid SNN encoders; a full SNN's "
                          "convolutions are spiking layers: use \"float32\" with snn_mode \"full\"")
    if values["skip_penalty"] and values["env_id"] not in CARRACING_IDS:
        raise ConfigError(f"config key 'skip_penalty' counts CarRacing track tiles; {values['env_id']!r} has none: "
                          "set it to 0")
    if not values["upload_to_cloud"] and not values["local_backup"]:
        raise ConfigError("config keys 'upload_to_cloud' and 'local_backup' are both false: checkpoints would be kept "
                          "nowhere; set one of them to true")


def overrides(items: list[str]) -> dict[str, Any]:
    """Config keys from KEY=JSON strings (a bare string value may skip its quotes), checked against
    the schema; ConfigError names a mistyped key or a bad value."""
    keys: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            keys[key] = json.loads(value)
        except json.JSONDecodeError:
            keys[key] = value
    load_config(keys)
    return keys


def parse_bench_args(parser, argv: list[str] | None = None, what: str = "run") -> tuple[Any, dict[str, Any]]:
    """A benchmark's command line with its repeatable `--set KEY=JSON` config keys (`overrides`): (arguments,
    keys); a mistyped key or value is argparse's one-line error (exit 2) before anything runs."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help=f'a config key for every measured {what}, e.g. --set conv_precision=\"bfloat16\" (repeatable)')
    args = parser.parse_args(argv)
    try:
        return args, overrides(args.set)
    except ConfigError as e:
        parser.error(str(e))


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
            raise ConfigError(f"unknown config key {name!r}{extra}")
        values[name] = _check_value(key, value)
    for name, key in SCHEMA.items():
        if name not in values:
            values[name] = list(key.default) if isinstance(key.default, list) else key.default
    if "skip_penalty" not in raw and values["env_id"] not in CARRACING_IDS:
        values["skip_penalty"] = 0.0  # the default charges CarRacing's tiles; other environments have none
    _check_combinations(values)
    return Config(**values)


def one_line_cli_errors(parser, prog: str) -> None:
    """Make an argparse parser raise ConfigError (one line, exit 2 by the caller) instead of printing usage."""

    def fail(message: str):
        raise ConfigError(f"{message} (see python {prog} --help)")

    parser.error = fail


def parse_json(text: str, origin: str = "JSON") -> Any:
    """json.loads with a one-line ConfigError that gives the line and column; a key given twice in one object
    is refused (JSON would keep the last silently)."""
    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise ConfigError(f"{origin} gives key {json.dumps(key)} twice; keep one")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{origin} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


# --------------------------------------------------------------------------- the generated reference
REFERENCE = "docs/config.md"

def reference_markdown() -> str:
    """The config reference page (docs/config.md): every key, its default and its text, from SCHEMA."""
    def linked(doc: str) -> str:  # docs/x.md#y in a key's text: a link relative to docs/
        return re.sub(r"docs/([\w.-]+\.md(?:#[\w-]+)?)", r"[\1](\1)", doc)
    rows = "".join(f"| `{k.name}` | `{json.dumps(k.default)}` | {linked(k.doc)}{' (shape key)' if k.shape else ''} |\n"
                   for k in SCHEMA.values())
    return f"""# Config keys (`conf.json`)

Generated from `config.SCHEMA` by `python config.py --reference`; do not edit by hand. Every key, its default (as
in `conf.json.example`) and its meaning. Unknown keys are rejected with a did-you-mean suggestion; wrong types,
out-of-range values and contradictory combinations (`epsilon_min` > `epsilon_start`, `batch` > `replay_size`,
`upload_to_cloud` and `local_backup` both false) are rejected naming the key. A shape key changes the network's
parameter shapes: a resume or `init_weights` with another value is refused. Back to the [README](../README.md).

| key | default | meaning |
| --- | --- | --- |
{rows}"""


def _main(argv: list[str]) -> int:
    """`--reference` writes docs/config.md; `--check` turns a config's JSON on stdin into the resolved config's
    JSON, or one line and exit 2 (the scheduler checks studios.json's `config` objects with it)."""
    try:
        if argv == ["--reference"]:
            (Path(__file__).resolve().parent / REFERENCE).write_text(reference_markdown(), encoding="utf-8")
            return 0
        if argv == ["--check"]:
            print(json.dumps(load_config(parse_json(sys.stdin.read(), "config")).to_dict()))
            return 0
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print("usage: python config.py --reference | --check < config.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
