"""The actor (`actor` key): the worker process against the same blocks stepped in-process, the lag is real,
budgets and stops with a block in flight, signals, no orphaned worker, the fallback and `auto`."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import actor as actors
import checkpoints
import heldout
import train
from config import load_config
from conftest import REPO, run_dir_of, write_config


def tiny(tmp_path, **keys):
    """CartPole with an update every 4 agent steps: blocks of 4 steps."""
    return write_config(tmp_path, **{"train_every": 4, "target_update_every": 50, "learning_rate": 1e-3, "decay": 0.9,
                                     "total_steps": 400, "checkpoint_every": 1000, **keys})


def rows(cfg_path):
    with open(run_dir_of(cfg_path) / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in csv.DictReader(f)]


def newest(cfg_path) -> dict:
    return checkpoints.load_newest(run_dir_of(cfg_path) / "checkpoints")[1]


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def children_of(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().split(") ")[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(proc.name))
    return out


def test_worker_process_learns_exactly_like_the_inline_actor_and_the_lag_is_real(tmp_path):
    """The worker (its own process, network copy and environments) against the same blocks stepped in the
    trainer's process: the same episodes, weights and counters. Against the plain loop they differ: the
    policy is one update behind."""
    runs = {}
    for mode in ("process", "inline", "off"):
        cfg = tiny(tmp_path, name=mode, actor=mode)
        assert train.main(["--config", str(cfg), "--new-run"]) == 0
        runs[mode] = (newest(cfg), rows(cfg))
    (p, p_rows), (i, i_rows), (o, _) = runs["process"], runs["inline"], runs["off"]
    assert p["counters"] == i["counters"] and p["counters"]["global_step"] == 400 and p["counters"]["updates"] > 50
    assert p_rows == i_rows and len(p_rows) > 10
    for net in ("q_network", "target_network"):
        assert same_weights(p[net], i[net])
    assert not same_weights(p["q_network"], o["q_network"])


def test_the_workers_target_q_is_the_trainers_own_for_images_too(tmp_path):
    """On the CPU the worker computes the target network's Q of each update's s' before it plays its block
    (the trainer runs the rest of the update meanwhile): CarRacing frames through the convolutional encoder
    (the bfloat16 one for the ANN), ANN and hybrid SNN, soft and hard target updates — the same weights, bit
    for bit, as the inline actor whose updates compute it in the trainer."""
    image = dict(env_id="CarRacing-v3", obs_size=40, obs_crop=[0, 0, 0, 0], hidden_layers=[16], batch=8,
                 replay_size=300, learning_starts=40, total_steps=160, target_update_every=24)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trainer's threads on a 2-core machine, where the worker takes the pass
    try:
        _compare_target_passes(tmp_path, image)
    finally:
        torch.set_num_threads(threads)


def test_the_worker_takes_no_target_pass_beside_a_trainer_with_several_threads(tmp_path, monkeypatch):
    """With several trainer threads a kernel may sum in another order than the worker's one thread, and the
    choice of who runs the pass follows the machine's timing: the trainer keeps it (a run's numbers must not
    depend on timing)."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(actors, "usable_cpus", lambda: 3)  # the trainer keeps 2 threads beside the worker
    try:
        for n, remote in ((2, False), (1, True)):
            torch.set_num_threads(n)
            cfg = load_config(tiny(tmp_path, name=f"threads{n}", actor="process"))
            t = train.Trainer(cfg, cfg.run_dir(), new_run=True)
            try:
                assert t.actor.kind == "process" and torch.get_num_threads() == n and (t.target_pass is not None) is remote
            finally:
                t.vec.close()
                t.metrics.close()
    finally:
        torch.set_num_threads(threads)


def _compare_target_passes(tmp_path, image):
    for arch, extra in (("ann", {"conv_precision": "bfloat16", "target_tau": 0.5}), ("snn", {"snn_tSteps": 4})):
        final = {}
        for mode in ("process", "inline"):
            cfg = load_config(tiny(tmp_path, name=f"img-{arch}-{mode}", architecture=arch, actor=mode, **image,
                                   **extra))
            t = train.Trainer(cfg, cfg.run_dir(), new_run=True)
            assert t.actor.kind == mode and (t.target_pass is not None) == (mode == "process")
            if mode == "process":  # every update's pass in the worker (tiny updates would keep it home)
                t.target_pass.split.force = True
            assert t.run() == 0
            assert t.state.updates > 20
            if mode == "process":  # the worker was asked, and followed the target's changes
                assert t.target_pass.version > 3 and t.actor.target_version >= 2
            final[mode] = {k: v.clone() for k, v in t.learner.q_network.state_dict().items()}, t.learner.target_network.state_dict()
        for a, b in zip(final["process"], final["inline"]):
            assert same_weights(a, b)


def test_a_budget_mid_block_stops_on_the_step_and_a_stopped_run_resumes(tmp_path):
    first = tiny(tmp_path, name="split", actor="process", total_steps=173)  # not a multiple of the block
    assert train.main(["--config", str(first), "--new-run"]) == 0
    ckpt = newest(first)
    assert ckpt["counters"]["global_step"] == 173
    second = tiny(tmp_path, name="split", actor="process", total_steps=400)
    assert train.main(["--config", str(second)]) == 0
    assert newest(second)["counters"]["global_step"] == 400
    assert [int(r["episode"]) for r in rows(second)] == list(range(1, len(rows(second)) + 1))


def test_sigkill_after_an_episode_checkpoint_then_resume_is_bit_exact_with_a_worker(tmp_path):
    """The block after a checkpoint plays with the current weights in both runs, so a resume from an
    episode checkpoint continues exactly as the uninterrupted run."""
    keys = {"actor": "process", "total_steps": 500, "checkpoint_every": 5}
    straight = tiny(tmp_path, name="straight", **keys)
    assert train.main(["--config", str(straight), "--new-run"]) == 0
    split = tiny(tmp_path, name="split", **keys)
    proc = subprocess.Popen([sys.executable, "-u", str(REPO / "train.py"), "--config", str(split), "--new-run"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt_dir = run_dir_of(split) / "checkpoints"
    deadline = time.monotonic() + 120
    while not any(checkpoints.step_of(p.name) >= 250 for p in checkpoints.list_checkpoints(ckpt_dir)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()
    out = proc.communicate(timeout=10)[0]
    assert "finished" not in out, "too late to test a kill"
    assert train.main(["--config", str(split)]) == 0
    a, b = newest(straight), newest(split)
    assert a["counters"] == b["counters"] and a["counters"]["global_step"] == 500
    for net in ("q_network", "target_network"):
        assert same_weights(a[net], b[net])
    assert rows(straight) == rows(split)


def test_ctrl_c_reaches_the_worker_too_but_the_trainer_stops_cleanly_and_no_worker_outlives_a_kill(tmp_path):
    """Ctrl-C goes to the whole process group: the worker ignores it (a block in flight is finished and
    stored) and the trainer checkpoints and stops. A SIGKILLed trainer's worker exits on its own."""
    cfg = tiny(tmp_path, name="sig", actor="process", total_steps=10**7, checkpoint_every=5, max_run_time=600)
    for how in ("sigint", "sigkill"):
        proc = subprocess.Popen([sys.executable, "-u", str(REPO / "train.py"), "--config", str(cfg)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            line = proc.stdout.readline()
            while not line.startswith("checkpoint"):
                assert line, proc.communicate()[0]
                line = proc.stdout.readline()
            workers = children_of(proc.pid)  # the actor (and multiprocessing's resource tracker)
            assert any(b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes() for w in workers)
            if how == "sigint":
                os.killpg(proc.pid, signal.SIGINT)
                out = proc.communicate(timeout=60)[0]
                assert proc.returncode == 0, out
                assert "stopped reason=\"interrupted by SIGINT\"" in out and "Traceback" not in out
            else:
                proc.kill()
                proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split(") ")[1][:1]
                  for w in workers):
            assert time.monotonic() < deadline, f"the actor outlived its trainer ({how})"
            time.sleep(0.1)
    # the SIGKILLed bout resumes from its newest checkpoint
    resumed = tiny(tmp_path, name="sig", actor="process", total_steps=newest(cfg)["counters"]["global_step"] + 50)
    assert train.main(["--config", str(resumed)]) == 0


def test_a_worker_that_cannot_start_falls_back_to_the_inline_actor(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(actors, "START_TIMEOUT_S", 0.0)  # no worker answers within 0 s
    cfg = tiny(tmp_path, name="fallback", actor="process", total_steps=100)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: the actor process could not be started" in out and "actor=inline" in out
    assert newest(cfg)["counters"]["global_step"] == 100


def test_auto_takes_a_worker_for_images_on_the_cpu_only(tmp_path, monkeypatch):
    cfg = load_config(tiny(tmp_path, actor="auto"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(actors, "usable_cpus", lambda: 2)
    assert actors.wanted(cfg, (4, 84, 84), cpu) == "process"
    assert actors.wanted(cfg, (4,), cpu) == "off"
    assert actors.wanted(cfg, (4, 84, 84), cuda) == "off"
    monkeypatch.setattr(actors, "usable_cpus", lambda: 1)
    assert actors.wanted(cfg, (4, 84, 84), cpu) == "off"
    assert actors.wanted(load_config(tiny(tmp_path, actor="inline")), (4,), cuda) == "inline"


def test_a_plan_draws_what_act_draws(tmp_path):
    """A block's coins and random actions are the draws Trainer.act makes from the same generator: with
    epsilon 1 the plan's actions are act()'s, and at any epsilon both leave the generator in the same state."""
    cfg = load_config(tiny(tmp_path, name="plan", agents=2, actor="off"))
    t = train.Trainer(cfg, tmp_path / "plan", new_run=True)
    try:
        for epsilon in (1.0, 0.3, 0.0):
            t.state.epsilon = epsilon
            t.rng = np.random.default_rng(5)
            acted = [t.act(t.obs) for _ in range(3)]
            planner = np.random.default_rng(5)
            plan = actors.plan_block(planner, 3, 2, epsilon, t.n_actions)
            assert planner.bit_generator.state == t.rng.bit_generator.state
            if epsilon == 1.0:
                assert all(explore.all() and np.array_equal(a, r) for a, (explore, r) in zip(acted, plan))
            if epsilon == 0.0:
                assert not any(explore.any() for explore, _ in plan)
    finally:
        t.vec.close()
        t.metrics.close()


def test_a_trainer_that_fails_does_not_wait_forever_for_its_worker(tmp_path):
    """multiprocessing joins child processes at exit; a trainer ending in an exception (no close()) must
    still exit, and its worker with it."""
    cfg = tiny(tmp_path, name="boom", actor="process")
    script = ("import sys; sys.path.insert(0, '.'); import train; from config import load_config\n"
              f"cfg = load_config({str(cfg)!r})\n"
              "t = train.Trainer(cfg, cfg.run_dir(), new_run=True)\n"
              "t.step(0.0); t.step(0.0)\n"
              "raise RuntimeError('boom')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "RuntimeError: boom" in out
    assert not children_of(proc.pid)


def test_the_actor_plays_half_the_held_out_episodes_and_they_are_the_trainers_own(tmp_path):
    """With an actor, the held-out evaluation's second half of the tracks is played by the actor (in the
    worker process at the same time as the trainer's half) with the current weights: the same returns,
    in the same order, as the trainer playing every track itself."""
    import envs

    for arch in ("ann", "snn"):
        first = tiny(tmp_path, name=f"ev-{arch}", architecture=arch, actor="off", total_steps=400)
        assert train.main(["--config", str(first), "--new-run"]) == 0
        for mode in ("process", "inline"):
            cfg = load_config(tiny(tmp_path, name=f"ev-{arch}", architecture=arch, actor=mode, total_steps=400))
            t = train.Trainer(cfg, run_dir_of(first), new_run=False)
            try:
                assert t.actor.kind == mode
                alone = envs.evaluation_returns(cfg, t.greedy, [heldout.EVAL_SEED + i for i in range(5)])
                assert len(set(alone)) > 1  # the tracks differ, so an order mix-up would show
                assert heldout.returns(t.cfg, t.greedy, 5, t.actor) == alone
                assert heldout.returns(t.cfg, t.greedy, 1, t.actor) == alone[:1]  # one episode: the trainer's alone
                with torch.no_grad():  # the actor takes the weights of the moment
                    for p in t.learner.q_network.parameters():
                        p.mul_(-1.5)
                changed = envs.evaluation_returns(cfg, t.greedy, [heldout.EVAL_SEED + i for i in range(5)])
                assert changed != alone and heldout.returns(t.cfg, t.greedy, 5, t.actor) == changed
            finally:
                t.vec.close()
                t.metrics.close()


def test_the_worker_takes_the_target_pass_only_while_it_does_not_become_the_one_waited_for():
    """actor.TargetSplit: measure the worker's pass first; then it pays while the worker's block plus the
    pass (P + t) stays under the trainer's whole update (U); a forced choice wins (the bench's A/B)."""
    split = actors.TargetSplit()
    assert split.wanted()  # nothing measured yet: try the worker's pass
    split.block_played(0.030)
    split.update_done(0.060, answer_wait=0.001, target_seconds=0.015)  # U = 0.060 - 0.001 + 0.015
    assert split.update == pytest.approx(0.074) and split.target == 0.015
    assert split.wanted()  # 0.030 + 0.015 < 0.074: the trainer is the one waited for
    for _ in range(60):  # the environment slows down: the worker's blocks take 0.065
        split.block_played(0.065)
    assert not split.wanted()  # 0.065 + 0.015 > 0.074: the pass would make the trainer wait for the block
    for _ in range(60):  # the trainer's own updates (no pass in the worker) slow down too
        split.update_done(0.120)
    assert split.wanted()
    split.force = False
    assert not split.wanted()


def test_an_update_that_shifts_its_frames_keeps_the_target_pass(tmp_path):
    """augment_shift shifts s' inside the update: the worker, which would see it unshifted, is not asked."""
    threads = torch.get_num_threads()  # the worker takes a core from the trainer: give it back after
    try:
        for shift, asked in ((0, True), (2, False)):
            cfg = load_config(tiny(tmp_path, name=f"aug{shift}", actor="process", augment_shift=shift))
            t = train.Trainer(cfg, cfg.run_dir(), new_run=True)
            try:
                assert (t.target_pass is not None) == asked
            finally:
                t.vec.close()
                t.metrics.close()
    finally:
        torch.set_num_threads(threads)
