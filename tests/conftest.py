"""Helpers shared by the test files: tiny CartPole configs written to disk and their run folders; CarRacing
tiles marked as touched."""
import dataclasses
import json
from pathlib import Path

import pytest

import config
from config import load_config

REPO = Path(__file__).resolve().parents[1]

# A CartPole run that trains in a second or two: the base of most end-to-end tests.
TINY_CARTPOLE = {"name": "t", "env_id": "CartPole-v1", "architecture": "ann", "hidden_layers": [16],
                 "replay_size": 400, "learning_starts": 40, "batch": 16, "total_steps": 300, "eval_every": 0,
                 "max_run_time": 600, "train_max_time": 600, "snn_tSteps": 4,
                 "epsilon_decay_steps": 200, "learning_rate_decay_steps": 300}


def write_config(tmp_path: Path, **keys) -> Path:
    """TINY_CARTPOLE with `keys` applied, runs under tmp_path/runs, written to a new JSON file in tmp_path."""
    cfg = {**TINY_CARTPOLE, "runs_dir": str(tmp_path / "runs"), **keys}
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*.json')))}.json"
    path.write_text(json.dumps(cfg))
    return path


def run_dir_of(cfg_path: Path) -> Path:
    return load_config(cfg_path).run_dir(REPO)


@pytest.fixture
def encoder_default_changed(monkeypatch):
    """The schema as a studio sees it after run.py's git sync brought a changed default of a shape key:
    `encoder` defaults to nips, nature being the former default (config.FORMER_DEFAULTS)."""
    monkeypatch.setitem(config.SCHEMA, "encoder", dataclasses.replace(config.SCHEMA["encoder"], default="nips"))
    monkeypatch.setitem(config.FORMER_DEFAULTS, "encoder", "nature")


def touch_tiles(env, *tiles):
    """Mark CarRacing track tiles as touched the way the contact listener does (without their reward)."""
    u = env.unwrapped
    for i in tiles:
        u.road[i].road_visited = True
    u.tile_visited_count = sum(t.road_visited for t in u.road)
