"""Incremental replay checkpoints: the frames saved as append-only segments restore exactly what the
full replay held; a checkpoint writes only new frames; crashes and damage fall back with a warning."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import contract
import train
from conftest import run_dir_of, write_config
from replay import ReplayBuffer


def fill(replay: ReplayBuffer, rng, steps: int, episode_len: int = 37) -> None:
    """`steps` transitions per environment of random image frames, episodes of `episode_len`."""
    for step in range(steps):
        for e in range(replay.num_envs):
            obs = rng.integers(0, 255, size=replay.obs_shape, dtype=np.uint8)
            if step % episode_len == 0:
                replay.start(e, obs)
            else:
                replay.add(e, int(rng.integers(5)), float(rng.normal()), step % episode_len == episode_len - 1, obs)


def assert_same(a: ReplayBuffer, b: ReplayBuffer) -> None:
    for key in ("frames", "actions", "rewards", "terminated", "has_next", "first", "ptr", "count", "written"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    if a.tree is not None:
        np.testing.assert_array_equal(a.tree.tree, b.tree.tree)


def restored_from(state: dict, ckpt_dir, like: ReplayBuffer) -> ReplayBuffer:
    out = ReplayBuffer(like.num_envs * like.per_env, like.obs_shape, like.num_envs, like.stack,
                       prioritized=like.prioritized)
    state = dict(state, segment_data=checkpoints.read_segments(ckpt_dir, state))
    checkpoints.ReplaySegments(ckpt_dir).restore(out, state)
    return out


@pytest.mark.parametrize("num_envs,prioritized", [(1, False), (2, True)])
def test_segments_restore_exactly_what_the_full_replay_holds(tmp_path, num_envs, prioritized):
    """Equivalence with the plain path: after captures spread over several ring wraps, the replay
    rebuilt from its segments equals the one restored from a full state_dict, array for array."""
    rng = np.random.default_rng(0)
    replay = ReplayBuffer(120 * num_envs, (4, 6, 6), num_envs, stack=4, prioritized=prioritized)
    store = checkpoints.ReplaySegments(tmp_path)
    for i, steps in enumerate([50, 7, 0, 130, 33, 260, 1]):  # includes a gap longer than the ring
        fill(replay, rng, steps)
        if prioritized:
            replay.update_priorities(np.flatnonzero(replay.has_next)[:9], rng.random(9))
        state = store.capture(replay, step=i)
        full = ReplayBuffer(120 * num_envs, (4, 6, 6), num_envs, stack=4, prioritized=prioritized)
        full.load_state_dict(replay.state_dict())
        assert_same(restored_from(state, tmp_path, replay), full)
        assert_same(full, replay)
        # only segments that still hold live frames are referenced
        assert len(state["segments"]) <= 1 + sum(1 for s in [50, 7, 0, 130, 33, 260, 1][:i + 1] if s)
    # batches sampled from the restored replay equal the original's
    again = restored_from(state, tmp_path, replay)
    a, b = replay.sample(8, np.random.default_rng(5)), again.sample(8, np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_a_checkpoint_writes_only_the_frames_added_since_the_last(tmp_path):
    rng = np.random.default_rng(1)
    replay = ReplayBuffer(1000, (1, 16, 16), stack=1)
    store = checkpoints.ReplaySegments(tmp_path)
    fill(replay, rng, 900)
    store.capture(replay, step=1)
    first = store.segments[-1]["bytes"]
    fill(replay, rng, 30)
    state = store.capture(replay, step=2)
    newest = state["segments"][-1]
    assert newest["ranges"] == [[900, 930]] and newest["bytes"] < first / 20
    state = store.capture(replay, step=3)  # nothing new: no segment
    assert [s["name"] for s in state["segments"]] == [s["name"] for s in store.segments] and len(store.segments) == 2
    fill(replay, rng, 1000)  # the ring wrapped: the old segments hold nothing live any more
    state = store.capture(replay, step=4)
    assert [s["ranges"] for s in state["segments"]] == [[[930, 1930]]]


def test_old_checkpoints_with_the_replay_inside_still_load(tmp_path):
    rng = np.random.default_rng(2)
    replay = ReplayBuffer(100, (2, 5, 5), stack=2)
    fill(replay, rng, 150)
    old = replay.state_dict()
    del old["written"]  # written by a version without segments
    again = ReplayBuffer(100, (2, 5, 5), stack=2)
    store = checkpoints.ReplaySegments(tmp_path)
    store.restore(again, old)
    assert store.marks is None  # the next capture saves every live frame once
    state = store.capture(again, step=9)
    assert_same(restored_from(state, tmp_path, again), again)
    np.testing.assert_array_equal(again.frames, replay.frames)


def run_with_segments(tmp_path, **keys):
    """A CartPole run whose replay wraps (replay_size 100) with a checkpoint every 3 episodes."""
    cfg = write_config(tmp_path, replay_size=100, checkpoint_every=3, keep_checkpoints=3, **keys)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    return cfg, run_dir_of(cfg) / "checkpoints"


def test_only_referenced_segments_are_kept_on_disk_and_a_stray_one_is_ignored(tmp_path, capsys):
    cfg, ckpt_dir = run_with_segments(tmp_path)
    on_disk = {p.name for p in (ckpt_dir / "replay").iterdir()}
    kept = [p.name for p in checkpoints.list_checkpoints(ckpt_dir)]
    assert on_disk == checkpoints.referenced_segments(ckpt_dir, kept)
    # a crash between writing a segment and its checkpoint leaves a segment nothing references
    stray = ckpt_dir / "replay" / "seg_0000099999_0123456789ab.bin"
    stray.write_bytes(b"written, never referenced")
    more = write_config(tmp_path, replay_size=100, checkpoint_every=3, keep_checkpoints=3, total_steps=400)
    assert train.main(["--config", str(more)]) == 0
    out = capsys.readouterr().out
    assert "replay restored" in out and "warning" not in out
    assert not stray.exists()  # deleted at the next checkpoint


def test_a_missing_or_damaged_segment_falls_back_with_a_warning(tmp_path, capsys):
    cfg, ckpt_dir = run_with_segments(tmp_path)
    ckpts = checkpoints.list_checkpoints(ckpt_dir)
    newest_only = checkpoints.referenced_segments(ckpt_dir, [ckpts[-1].name]) - \
        checkpoints.referenced_segments(ckpt_dir, [ckpts[-2].name])
    (ckpt_dir / "replay" / sorted(newest_only)[0]).write_bytes(b"damaged")
    capsys.readouterr()
    more = write_config(tmp_path, replay_size=100, checkpoint_every=3, keep_checkpoints=3, total_steps=350)
    assert train.main(["--config", str(more)]) == 0
    out = capsys.readouterr().out
    assert f"warning: checkpoint {ckpts[-1].name}: its replay segment" in out and "is damaged" in out
    assert f"resumed checkpoint={ckpts[-2].name}" in out and "replay restored" in out
    assert contract.read_status(run_dir_of(more))["global_step"] == 350


def test_no_checkpoint_with_its_segments_whole_resumes_the_newest_with_an_empty_replay(tmp_path, capsys):
    cfg, ckpt_dir = run_with_segments(tmp_path)
    for seg in (ckpt_dir / "replay").iterdir():
        seg.unlink()
    newest = checkpoints.list_checkpoints(ckpt_dir)[-1].name
    capsys.readouterr()
    more = write_config(tmp_path, replay_size=100, checkpoint_every=3, keep_checkpoints=3, total_steps=350)
    assert train.main(["--config", str(more)]) == 0
    out = capsys.readouterr().out
    assert f"no checkpoint has its replay whole; continuing from {newest} with an empty replay" in out
    assert f"resumed checkpoint={newest}" in out and "replay not restored (the checkpoint's replay segment" in out
    assert contract.read_status(run_dir_of(more))["global_step"] == 350
    assert any((ckpt_dir / "replay").iterdir())  # the new checkpoints saved their replay again


@pytest.mark.parametrize("arch", ["ann", "snn"])
def test_a_checkpoint_of_the_previous_code_resumes_to_the_same_weights(tmp_path, arch):
    """tests/data/checkpoint_v1: a run stopped at agent step 150 by the code before the trainer's state moved
    into one object (commit 2445821), and the online network that code reached at 300 when resumed. Today's
    trainer resumes the same folder and must reach the same weights, bit for bit (ANN with n-step returns and
    prioritized replay; hybrid SNN)."""
    data = Path(__file__).parent / "data" / "checkpoint_v1" / arch
    runs = tmp_path / "runs"
    shutil.copytree(data, runs / "old", ignore=shutil.ignore_patterns("final-300.pt", "resume.json"))
    cfg = {**json.loads((data / "resume.json").read_text()), "runs_dir": str(runs)}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert train.main(["--config", str(tmp_path / "cfg.json")]) == 0
    _, ckpt = checkpoints.load_newest(runs / "old" / "checkpoints")
    then = torch.load(data / "final-300.pt", weights_only=True)
    assert ckpt["counters"]["global_step"] == then["counters"]["global_step"] == 300
    assert all(torch.equal(ckpt["q_network"][k], then["q_network"][k]) for k in then["q_network"])


def test_files_carry_their_lineage_through_fine_tunes_and_resumes(tmp_path):
    first = write_config(tmp_path, name="first", total_steps=120)
    assert train.main(["--config", str(first), "--new-run"]) == 0
    exported = tmp_path / "first.pt"
    checkpoints.export_weights(max((run_dir_of(first) / "checkpoints").glob("ckpt_*.pt")), exported)
    one = checkpoints.read(exported)["lineage"]
    assert [(st["run"], st["agent_steps"], st["frames"], st["init_weights"]) for st in one] == [("first", 120, 120, None)]
    # a fine-tune from that file: its stage follows, and a resume of it adds no stage
    tune = write_config(tmp_path, name="tune", init_weights=str(exported), total_steps=80)
    assert train.main(["--config", str(tune), "--new-run"]) == 0
    more = write_config(tmp_path, name="tune", init_weights=str(exported), total_steps=150)
    assert train.main(["--config", str(more)]) == 0
    _, ckpt = checkpoints.load_newest(run_dir_of(more) / "checkpoints")
    stages = ckpt["lineage"]
    assert [(st["run"], st["agent_steps"], st["init_weights"]) for st in stages] == [
        ("first", 120, None), ("tune", 150, str(exported))]
    assert stages[1]["config"]["total_steps"] == 150 and "runs_dir" not in stages[1]["config"]
    assert checkpoints.lineage_total(stages) == {"agent_steps": 270, "frames": 270, "stages": 2}
    assert checkpoints.weights_only(ckpt)["lineage"] == stages  # --export and best.pt keep it
    best = checkpoints.read(run_dir_of(more) / "best.pt") if (run_dir_of(more) / "best.pt").exists() else None
    assert best is None or best["lineage"][0]["run"] == "first"


def test_a_file_from_before_lineage_says_unknown_for_what_it_cannot_know():
    old = {"config": {"name": "snn-solve", "init_weights": "pretrained/x.pt", "frame_skip": 4},
           "obs_shape": [4, 84, 84], "trained": {"global_step": 1000}}
    stages = checkpoints.lineage(old)
    assert stages[0]["unknown"] and stages[1]["agent_steps"] == 1000 and stages[1]["frames"] == 4000
    assert checkpoints.lineage_total(stages)["frames"] is None
    fresh = {"config": {"name": "carracing", "init_weights": "", "frame_skip": 4}, "obs_shape": [4, 84, 84],
             "trained": {"global_step": 1000}}
    assert checkpoints.lineage_total(checkpoints.lineage(fresh)) == {"agent_steps": 1000, "frames": 4000, "stages": 1}


@pytest.mark.parametrize("name, agent_steps, stages", [("snn_hybrid_ddqn", 685_919, 3), ("ann_ddqn", 578_297, 4),
                                                        ("ann_kickstarted_ddqn", 666_964, 5)])
def test_the_shipped_agents_say_how_they_were_made(name, agent_steps, stages):
    """The lineage of each shipped file, from the stage files in git history (docs/results.md's table)."""
    ckpt = checkpoints.read(Path(__file__).resolve().parents[1] / "pretrained" / f"{name}.pt")
    total = checkpoints.lineage_total(ckpt["lineage"])
    assert total == {"agent_steps": agent_steps, "frames": 4 * agent_steps, "stages": stages}
    assert ckpt["lineage"][-1]["agent_steps"] == ckpt["trained"]["global_step"]
