"""train.py: determinism, exact resume, checkpoint fallback, signals, budgets, win rule, resume errors."""
import csv
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import bout
import agents
import checkpoints
import contract
import learner
import models
import train
import utils
from config import load_config
from conftest import REPO, run_dir_of, touch_tiles, write_config



def tiny(tmp_path, **keys):
    """The training tests' CartPole: an update every step, a quick target copy and ε decay."""
    return write_config(tmp_path, **{"train_every": 1, "target_update_every": 50, "checkpoint_every": 1000,
                                     "learning_rate": 1e-3, **keys})


run_dir = run_dir_of


def rows(cfg_path):
    with open(run_dir(cfg_path) / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("sps", "wall_time")} for r in csv.DictReader(f)]


def final_weights(cfg_path):
    _, ckpt = checkpoints.load_newest(run_dir(cfg_path) / "checkpoints")
    return ckpt


def test_same_seed_same_episodes(tmp_path):
    a = tiny(tmp_path, name="a")
    b = tiny(tmp_path, name="b")
    assert train.main(["--config", str(a), "--new-run"]) == 0
    assert train.main(["--config", str(b), "--new-run"]) == 0
    assert rows(a) == rows(b) and len(rows(a)) > 5
    wa, wb = final_weights(a)["q_network"], final_weights(b)["q_network"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = tiny(tmp_path, name="c", seed=1)
    train.main(["--config", str(c), "--new-run"])
    assert rows(c) != rows(a)


@pytest.mark.parametrize("arch", [{"architecture": "ann"}, {"architecture": "snn"},
                                  {"architecture": "ann", "n_step": 3, "prioritized_replay": True, "dueling": True}],
                         ids=["ann", "snn", "ann-n_step-per-dueling"])
def test_straight_run_equals_stop_and_resume(tmp_path, arch):
    straight = tiny(tmp_path, name="straight", total_steps=400, **arch)
    assert train.main(["--config", str(straight), "--new-run"]) == 0
    first = tiny(tmp_path, name="split", total_steps=173, **arch)  # stops mid-episode
    assert train.main(["--config", str(first), "--new-run"]) == 0
    assert contract.read_status(run_dir(first))["finished"] is True
    second = tiny(tmp_path, name="split", total_steps=400, **arch)  # a larger budget: the run continues
    assert train.main(["--config", str(second)]) == 0
    a, b = final_weights(straight), final_weights(second)
    assert a["counters"] == b["counters"]
    for key in ("q_network", "target_network"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert rows(straight) == rows(second)


# torch's fused Adam kernel for the CPU came with torch 2.4; requirements.txt admits 2.1, where make_adam falls back
CPU_FUSED_ADAM = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)


def test_fused_adam_steps_like_plain_adam(tmp_path):
    """make_adam's fused kernel (one pass over the parameters per step) against torch's plain Adam on
    the same network and the same gradients of real Q-network losses: equal up to float rounding."""
    cfg = load_config(tiny(tmp_path, name="adam", architecture="snn"))
    t = train.Trainer(cfg, tmp_path / "adam", new_run=True)
    assert bool(t.learner.optimizer.param_groups[0]["fused"]) == CPU_FUSED_ADAM
    if not CPU_FUSED_ADAM:
        t.vec.close()
        t.metrics.close()
        pytest.skip(f"torch {torch.__version__} has no fused Adam for the CPU: make_adam gave plain Adam")
    plain_net = models.build_q_network(cfg, t.obs_shape, t.n_actions)
    plain_net.load_state_dict(t.learner.q_network.state_dict())
    plain = torch.optim.Adam(plain_net.parameters(), lr=cfg.learning_rate)
    assert not plain.param_groups[0]["fused"]  # two kernels, not one (their rounding may or may not differ)
    start = {k: v.clone() for k, v in plain_net.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        obs = torch.randn((32, *t.obs_shape), generator=g)
        target = 10 * torch.randn((32, t.n_actions), generator=g)
        for net, opt in ((t.learner.q_network, t.learner.optimizer), (plain_net, plain)):
            opt.zero_grad()
            torch.nn.functional.smooth_l1_loss(net(obs), target).backward()
            opt.step()
    fused_w, plain_w = t.learner.q_network.state_dict(), plain_net.state_dict()
    assert any(not torch.equal(plain_w[k], start[k]) for k in plain_w)  # the steps moved the weights
    for k in fused_w:
        assert torch.allclose(fused_w[k], plain_w[k], rtol=1e-5, atol=1e-6), k
    t.vec.close()
    t.metrics.close()


def test_a_checkpoint_of_plain_adam_resumes_with_the_fused_kernel(tmp_path, monkeypatch):
    """Checkpoints written before Adam was fused (or on a torch without the kernel) resume into this
    trainer's fused Adam, moments and step counts carried over, a changed learning rate applied."""
    with monkeypatch.context() as m:
        m.setattr(learner, "make_adam", lambda params, lr: torch.optim.Adam(params, lr=lr))
        first = tiny(tmp_path, name="older", total_steps=150)
        assert train.main(["--config", str(first), "--new-run"]) == 0
    saved = final_weights(first)
    assert saved["optimizer"]["param_groups"][0]["fused"] is None
    cfg = load_config(tiny(tmp_path, name="older", total_steps=300, learning_rate=5e-4))
    t = train.Trainer(cfg, run_dir(first), new_run=False)
    group = t.learner.optimizer.param_groups[0]
    assert bool(group["fused"]) == CPU_FUSED_ADAM and group["lr"] == 5e-4
    for p in t.learner.q_network.parameters():
        state = t.learner.optimizer.state[p]
        assert state["step"].dtype == torch.float32 and state["step"].device == p.device
        assert int(state["step"]) == saved["counters"]["updates"]
    assert torch.equal(t.learner.optimizer.state[next(t.learner.q_network.parameters())]["exp_avg"],
                       saved["optimizer"]["state"][0]["exp_avg"])
    t.vec.close()
    t.metrics.close()
    assert train.main(["--config", str(tiny(tmp_path, name="older", total_steps=300))]) == 0
    assert final_weights(first)["counters"]["global_step"] == 300


def test_truncated_newest_checkpoint_falls_back(tmp_path, capsys):
    cfg = tiny(tmp_path, total_steps=200, checkpoint_every=3)
    train.main(["--config", str(cfg), "--new-run"])
    ckpts = sorted((run_dir(cfg) / "checkpoints").glob("ckpt_*.pt"))
    assert len(ckpts) == 3  # keep_checkpoints
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    path, ckpt = checkpoints.load_newest(ckpts[0].parent)
    assert path == ckpts[-2]
    assert "cannot be loaded" in capsys.readouterr().out
    more = tiny(tmp_path, total_steps=260, checkpoint_every=3)
    assert train.main(["--config", str(more)]) == 0
    assert final_weights(more)["counters"]["global_step"] == 260


def test_shape_change_on_resume_is_a_config_error(tmp_path, capsys):
    cfg = tiny(tmp_path, total_steps=100)
    train.main(["--config", str(cfg), "--new-run"])
    changed = tiny(tmp_path, total_steps=200, hidden_layers=[32])
    capsys.readouterr()
    assert train.main(["--config", str(changed)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hidden_layers" in err[0] and "--forcenewrun" in err[0]
    assert 'set "hidden_layers": [16] in the config to resume it' in err[0]
    # other changes apply and are listed in one line
    lr = tiny(tmp_path, total_steps=200, learning_rate=5e-4, batch=8)
    assert train.main(["--config", str(lr)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("config changes on resume"))
    assert "learning_rate: 0.001 -> 0.0005" in line and "batch: 16 -> 8" in line and "total_steps" in line


def test_a_key_the_checkpoint_predates_is_listed_when_it_changes_behaviour(tmp_path, capsys, monkeypatch):
    capture = train.Trainer.state_dict

    def before_the_key(t, snapshot):  # a checkpoint written before conv_precision existed
        ckpt = capture(t, snapshot)
        ckpt["config"].pop("conv_precision")
        return ckpt

    monkeypatch.setattr(train.Trainer, "state_dict", before_the_key)
    cfg = tiny(tmp_path, total_steps=100)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    monkeypatch.undo()
    capsys.readouterr()
    assert train.main(["--config", str(tiny(tmp_path, total_steps=200))]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("config changes on resume"))
    assert 'conv_precision: "float32" -> "auto"' in line


def test_new_run_archives_everything_the_previous_run_left(tmp_path):
    # best.pt and videos/ too (they used to stay and be overwritten), and whatever else the folder holds
    cfg = tiny(tmp_path, total_steps=100, eval_every=2, eval_episodes=1, record_every=4)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    folder = run_dir(cfg)
    for name in contract.RUN_FOLDER:  # the contract's entries the run did not make (evaluate.py's, W&B's)
        if not (folder / name).exists():
            (folder / name).write_text("made by another tool")
    (folder / "notes.txt").write_text("the user's own")
    before = {p.name: (p.read_bytes() if p.is_file() else sorted(q.name for q in p.rglob("*")))
              for p in folder.iterdir() if p.name not in ("archive", ".lock")}
    assert {"best.pt", "videos", "checkpoints", "config.json", "notes.txt"} <= set(before)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    (archive,) = (folder / "archive").iterdir()
    moved = {p.name: (p.read_bytes() if p.is_file() else sorted(q.name for q in p.rglob("*"))) for p in archive.iterdir()}
    assert moved == before  # every file, byte for byte
    assert (folder / "config.json").exists() and not (folder / "notes.txt").exists()


def test_budgets_and_status(tmp_path):
    cfg = tiny(tmp_path, total_steps=0, max_episodes=7)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    status = contract.read_status(run_dir(cfg))
    assert status["finished"] and "max_episodes 7" in status["reason"] and len(rows(cfg)) == 7


def test_bout_budget_stops_without_finishing(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, total_steps=0)
    monkeypatch.setenv(contract.BOUT_SECONDS_ENV, "1.5")
    t0 = time.monotonic()
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    assert time.monotonic() - t0 < 30
    status = contract.read_status(run_dir(cfg))
    assert status["finished"] is False and "bout time budget" in status["reason"]
    assert list((run_dir(cfg) / "checkpoints").glob("ckpt_*.pt"))


def test_win_rule_stops_learning_but_not_acting(tmp_path, monkeypatch):
    import runfolder

    seen, save = [], runfolder.RunFolder.save

    def spy(self, *args, **kw):  # status.json as each checkpoint leaves it
        path = save(self, *args, **kw)
        seen.append(contract.read_status(self.run_dir))
        return path

    monkeypatch.setattr(runfolder.RunFolder, "save", spy)
    cfg = tiny(tmp_path, total_steps=600, win_threshold=15, stop_learning_at_win_percent=5, learning_starts=20,
               epsilon_decay_steps=0, decay=0.9, checkpoint_every=5)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    ckpt = final_weights(cfg)
    status = contract.read_status(run_dir(cfg))
    assert ckpt["counters"]["learning_stopped"] is True and status["learning_stopped"] is True
    stopped = [st for st in seen if st["learning_stopped"]]
    assert stopped and all(st["reason"].startswith("learning stopped") for st in stopped)
    assert ckpt["counters"]["global_step"] == 600  # it kept acting to the budget
    assert ckpt["counters"]["updates"] < 600 - 20  # but stopped updating


def test_two_agents_step_in_lockstep(tmp_path):
    cfg = tiny(tmp_path, agents=2, total_steps=300)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    ckpt = final_weights(cfg)
    assert 300 <= ckpt["counters"]["global_step"] <= 301  # lockstep: at most agents-1 past the budget
    r = rows(cfg)
    assert sum(int(x["length"]) for x in r) <= 301 and len(r) > 5
    # autoreset steps are not transitions: the replay holds exactly one per agent step
    assert int(ckpt["replay"]["has_next"].sum()) == ckpt["counters"]["global_step"]


def test_prioritized_replay_and_reward_clip_train(tmp_path):
    cfg = tiny(tmp_path, prioritized_replay=True, reward_clip=0.5, save_replay=False)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    assert final_weights(cfg)["replay"] is None


def test_n_step_returns_train_and_change_the_targets(tmp_path):
    """n_step 3 trains with finite losses, and it is not the 1-step run under another name."""
    one = tiny(tmp_path, name="one", total_steps=600)
    three = tiny(tmp_path, name="three", total_steps=600, n_step=3)
    for cfg in (one, three):
        assert train.main(["--config", str(cfg), "--new-run"]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(run_dir(three) / "metrics.csv")) if r["loss"]]
    assert losses and all(np.isfinite(losses))
    w1, w3 = final_weights(one)["q_network"], final_weights(three)["q_network"]
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_sigterm_checkpoints_and_exits_within_seconds(tmp_path):
    cfg = tiny(tmp_path, total_steps=0)
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(cfg), "--new-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    metrics = run_dir(cfg) / "metrics.csv"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.stat().st_size > 200):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.time() - t0 < 10
    assert "interrupted by SIGTERM" in contract.read_status(run_dir(cfg))["reason"]
    assert list((run_dir(cfg) / "checkpoints").glob("ckpt_*.pt"))


def test_bad_config_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.json"
    p.write_text('{"batch": "x"}')
    assert train.main(["--config", str(p)]) == 2
    assert "'batch' must be an integer" in capsys.readouterr().err


def test_carracing_smoke(tmp_path):
    cfg = tiny(tmp_path, env_id="CarRacing-v3", architecture="snn", total_steps=60, learning_starts=30,
               replay_size=200, obs_size=40, obs_crop=[0, 0, 0, 0], batch=4, hidden_layers=[16])
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    ckpt = final_weights(cfg)
    assert ckpt["counters"]["global_step"] == 60 and ckpt["counters"]["updates"] > 0
    assert ckpt["obs_shape"] == [4, 40, 40]


def test_eval_gif_and_debug_extras(tmp_path):
    cfg = tiny(tmp_path, architecture="snn", total_steps=250, eval_every=4, eval_episodes=1, record_every=8,
               debug=True)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    r = rows(cfg)
    evals = [x["eval_return"] for x in r]
    assert all(v != "" for i, v in enumerate(evals, 1) if i % 4 == 0) and evals[0] == ""
    assert list((run_dir(cfg) / "videos").glob("episode_*.gif"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir(cfg) / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"charts/episodic_return", "charts/SPS", "charts/epsilon", "losses/td_loss", "eval/episodic_return",
            "debug/firing_rate_spike0", "debug/grad_norm"} <= tags


def test_bad_arguments_are_one_line(capsys):
    assert train.main(["--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required: --config" in err[0]


def test_warns_when_the_replay_will_not_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train.utils, "available_memory", lambda: 40 * 2**20)  # 40 MiB free
    cfg = tiny(tmp_path, env_id="CarRacing-v3", replay_size=5000, total_steps=1, learning_starts=1000)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0  # 34 MiB: tight but possible
    out = capsys.readouterr().out
    assert "warning: the replay buffer needs" in out and "lower replay_size" in out


@pytest.mark.parametrize("keys, named", [({"replay_size": 10**11}, "replay_size"),
                                         ({"hidden_layers": [200_000, 200_000]}, "hidden_layers"),
                                         # few parameters, but an update's activations would not fit
                                         ({"hidden_layers": [100_000_000], "batch": 64}, "batch 64")])
def test_a_config_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, capsys, keys, named):
    cfg = tiny(tmp_path, total_steps=100)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    files = sorted(p.name for p in run_dir(cfg).rglob("*"))
    capsys.readouterr()
    huge = tiny(tmp_path, total_steps=100, **keys)
    assert train.main(["--config", str(huge), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need more memory than" in err[0] and named in err[0]
    assert sorted(p.name for p in run_dir(cfg).rglob("*")) == files  # nothing archived or written


def test_init_weights_starts_a_new_run_from_trained_weights(tmp_path, capsys):
    donor = tiny(tmp_path, name="donor", total_steps=200)
    assert train.main(["--config", str(donor), "--new-run"]) == 0
    src = sorted((run_dir(donor) / "checkpoints").glob("ckpt_*.pt"))[-1]
    warm = tiny(tmp_path, name="warm", total_steps=1, learning_starts=1000, init_weights=str(src))
    assert train.main(["--config", str(warm), "--new-run"]) == 0
    assert "init_weights path=" in capsys.readouterr().out
    got, want = final_weights(warm), final_weights(donor)["q_network"]
    for net in ("q_network", "target_network"):  # no update ran: both networks are the donor's online one
        assert all(torch.equal(got[net][k], want[k]) for k in want)
    assert got["counters"]["global_step"] == 1  # a new run: counters start at zero
    # a shape mismatch or a missing file is one line, exit 2, and the warm run's files stay
    kept = sorted((run_dir(warm) / "checkpoints").glob("ckpt_*.pt"))
    before = [p.read_bytes() for p in kept]
    for bad, says in ((tiny(tmp_path, name="warm", init_weights=str(src), hidden_layers=[32]),
                       'set "hidden_layers": [16] in the config'),  # what to set, not just what differs
                      (tiny(tmp_path, name="warm", init_weights=str(tmp_path / "nope.pt")), "nope.pt")):
        assert train.main(["--config", str(bad), "--new-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "init_weights" in err[0] and says in err[0]
    assert [p.read_bytes() for p in sorted((run_dir(warm) / "checkpoints").glob("ckpt_*.pt"))] == before
    assert not (run_dir(warm) / "archive").exists()


def test_a_run_or_file_trained_with_a_former_default_keeps_it(tmp_path, capsys, encoder_default_changed):
    """A shape key's default changed (here encoder, nature -> nips, listed in config.FORMER_DEFAULTS): a
    run trained with the former value resumes under a config that leaves the key out and builds the
    network it was trained with; an init_weights file does the same for a new run. A value that is not
    the former default (or set against a run trained with today's default) is still another network
    shape: one line, exit 2."""
    image = dict(env_id="CarRacing-v3", architecture="snn", learning_starts=30, replay_size=200, obs_size=40,
                 obs_crop=[0, 0, 0, 0], batch=4, hidden_layers=[16])
    old = tiny(tmp_path, name="old", encoder="nature", total_steps=40, **image)  # trained with the former default
    assert train.main(["--config", str(old), "--new-run"]) == 0
    assert load_config(tiny(tmp_path, **image)).encoder == "nips"  # today's default
    capsys.readouterr()
    later = tiny(tmp_path, name="old", total_steps=60, **image)  # the key left out: today's default
    assert train.main(["--config", str(later)]) == 0
    out = capsys.readouterr().out
    assert "note: the run's checkpoint has \"encoder\": \"nature\", the former default; the run keeps it" in out
    assert "resumed checkpoint=" in out and "encoder=nature" in out
    ckpt = final_weights(later)
    assert ckpt["counters"]["global_step"] == 60 and ckpt["config"]["encoder"] == "nature"
    assert "encoder.0.weight" in ckpt["q_network"] and ckpt["q_network"]["encoder.0.weight"].shape[0] == 32
    assert utils.read_json(run_dir(later) / "config.json")["encoder"] == "nature"
    src = sorted((run_dir(later) / "checkpoints").glob("ckpt_*.pt"))[-1]
    warm = tiny(tmp_path, name="warm", total_steps=1, learning_starts=1000, init_weights=str(src),
                **{k: v for k, v in image.items() if k != "learning_starts"})
    assert train.main(["--config", str(warm), "--new-run"]) == 0
    out = capsys.readouterr().out
    assert f"note: the init_weights file {src} has \"encoder\": \"nature\"" in out and "init_weights path=" in out
    assert all(torch.equal(final_weights(warm)["q_network"][k], v) for k, v in ckpt["q_network"].items())
    # today's default against a run trained with it: set otherwise, the resume is refused as before
    new = tiny(tmp_path, name="new", total_steps=40, **image)
    assert train.main(["--config", str(new), "--new-run"]) == 0
    capsys.readouterr()
    assert train.main(["--config", str(tiny(tmp_path, name="new", encoder="nature", total_steps=60, **image))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'set "encoder": "nips" in the config to resume it' in err[0]


def test_init_weights_from_a_plain_head_starts_a_dueling_run_with_the_same_q(tmp_path, capsys):
    donor = tiny(tmp_path, name="donor", total_steps=200)
    assert train.main(["--config", str(donor), "--new-run"]) == 0
    src = sorted((run_dir(donor) / "checkpoints").glob("ckpt_*.pt"))[-1]
    warm = tiny(tmp_path, name="duel", total_steps=1, learning_starts=1000, init_weights=str(src), dueling=True)
    assert train.main(["--config", str(warm), "--new-run"]) == 0
    assert "head=plain->dueling" in capsys.readouterr().out
    cfg_d, cfg_p = load_config(warm), load_config(donor)
    plain, duel = (models.build_q_network(c, (4,), 2) for c in (cfg_p, cfg_d))
    plain.load_state_dict(final_weights(donor)["q_network"])
    duel.load_state_dict(final_weights(warm)["q_network"])
    obs = torch.randn(16, 4)
    with torch.no_grad():
        assert torch.allclose(duel(obs), plain(obs), atol=1e-5)
    # the reverse (a dueling file into a plain head) is still another network shape: one line, exit 2
    back = tiny(tmp_path, name="back", init_weights=str(sorted((run_dir(warm) / "checkpoints").glob("ckpt_*.pt"))[-1]))
    assert train.main(["--config", str(back), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'dueling'" in err[0] and "init_weights" in err[0]


def teacher_gap(student_cfg, teacher_file) -> tuple[float, float]:
    """Mean |gap student − gap teacher| over states of CartPole, a gap being Q minus its mean over actions,
    and the student's mean Q (its level)."""
    import gymnasium as gym

    _, teacher = agents.build_network(checkpoints.read(teacher_file), "cpu")
    _, student = agents.build_network(final_weights(student_cfg), "cpu")
    env, states = gym.make("CartPole-v1"), []
    obs, _ = env.reset(seed=0)
    for i in range(200):  # the states a wavering policy visits
        states.append(obs)
        obs, _, term, trunc, _ = env.step(i // 3 % 2)
        if term or trunc:
            obs, _ = env.reset(seed=i)
    obs = torch.as_tensor(np.array(states))
    with torch.no_grad():
        qs, qt = student(obs), teacher(obs)
    return float(((qs - qs.mean(1, keepdim=True)) - (qt - qt.mean(1, keepdim=True))).abs().mean()), float(qs.mean())


def test_teacher_pulls_the_q_values_towards_its_own(tmp_path, capsys):
    donor = tiny(tmp_path, name="donor", architecture="snn", total_steps=300)  # any architecture may teach
    assert train.main(["--config", str(donor), "--new-run"]) == 0
    ckpt = final_weights(donor)
    last_bias = [k for k in ckpt["q_network"] if k.endswith(".bias")][-1]
    ckpt["q_network"][last_bias] += 100.0  # a teacher whose Q sits at another level: only its gaps are taught
    src = tmp_path / "teacher.pt"
    checkpoints.write_best(src, ckpt, None)
    alone = tiny(tmp_path, name="alone", seed=3)
    taught = tiny(tmp_path, name="taught", seed=3, teacher=str(src), teacher_weight=20.0)
    for cfg in (alone, taught):
        assert train.main(["--config", str(cfg), "--new-run"]) == 0
    assert "teacher path=" in capsys.readouterr().out
    (gap_alone, level_alone), (gap_taught, level_taught) = teacher_gap(alone, src), teacher_gap(taught, src)
    assert gap_taught < 0.5 * gap_alone
    assert abs(level_taught - level_alone) < 5.0  # not pulled 100 up


def test_an_annealed_teacher_leaves_the_plain_update(tmp_path):
    donor = tiny(tmp_path, name="donor", total_steps=200)
    assert train.main(["--config", str(donor), "--new-run"]) == 0
    src = sorted((run_dir(donor) / "checkpoints").glob("ckpt_*.pt"))[-1]
    plain = tiny(tmp_path, name="plain", seed=5)
    # the weight reaches 0 at agent step 40, where learning starts: the teacher never enters an update
    gone = tiny(tmp_path, name="gone", seed=5, teacher=str(src), teacher_weight=3.0, teacher_steps=40)
    for cfg in (plain, gone):
        assert train.main(["--config", str(cfg), "--new-run"]) == 0
    a, b = final_weights(plain)["q_network"], final_weights(gone)["q_network"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(plain) == rows(gone)
    # the schedule: linear from teacher_weight to 0 over teacher_steps; 0 steps keeps it
    t = train.Trainer(load_config(tiny(tmp_path, name="sched", teacher=str(src), teacher_weight=2.0,
                                       teacher_steps=100)), tmp_path / "sched", new_run=True)
    weights = []
    for step in (0, 50, 100, 150):
        t.state.global_step = step
        weights.append(t.teacher_weight())
    assert weights == [2.0, 1.0, 0.0, 0.0]
    t.cfg = t.cfg.replace(teacher_steps=0)
    assert t.teacher_weight() == 2.0
    t.vec.close()
    t.metrics.close()


def test_a_teacher_that_cannot_teach_is_one_line_and_touches_nothing(tmp_path, capsys):
    other = tiny(tmp_path, name="acrobot", env_id="Acrobot-v1", total_steps=60)
    assert train.main(["--config", str(other), "--new-run"]) == 0
    wrong_env = sorted((run_dir(other) / "checkpoints").glob("ckpt_*.pt"))[-1]
    for teacher, says in ((tmp_path / "nope.pt", "does not exist"), (wrong_env, "'env_id'")):
        cfg = tiny(tmp_path, name="pupil", teacher=str(teacher))
        assert train.main(["--config", str(cfg), "--new-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "teacher" in err[0]
        assert not (run_dir(cfg) / "checkpoints").exists() and not (run_dir(cfg) / "metrics.csv").exists()


def test_best_policy_is_kept_from_held_out_evaluations(tmp_path, capsys):
    import evaluate

    cfg = tiny(tmp_path, total_steps=600, eval_every=5, eval_episodes=2, checkpoint_every=5, eval_candidates=0)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    out = capsys.readouterr().out
    evals = [float(line.split(" mean=")[1].split()[0]) for line in out.splitlines() if line.startswith("eval ")]
    assert len(evals) >= 3
    best = torch.load(run_dir(cfg) / "best.pt", weights_only=False)
    assert best["evaluation"]["mean"] == pytest.approx(max(evals), abs=0.01)
    assert best["evaluation"]["episodes"] == 2 and "target_network" not in best and "replay" not in best
    rows = [r for r in csv.DictReader(open(run_dir(cfg) / "metrics.csv")) if r["eval_return"]]
    assert [round(float(r["eval_return"]), 2) for r in rows] == [round(e, 2) for e in evals]
    # a resume keeps the best so far: best.pt changes only for a better mean
    assert checkpoints.load_newest(run_dir(cfg) / "checkpoints")[1]["history"]["best_eval"] == pytest.approx(
        max(evals), abs=0.01)
    assert evaluate.main(["--run", str(run_dir(cfg)), "--best", "--episodes", "2"]) == 0
    assert "ANN-DDQN (t, best)" in capsys.readouterr().out
    # another eval_episodes: the old best is not comparable, it is archived and the next evaluation sets it
    more = tiny(tmp_path, total_steps=700, eval_every=5, eval_episodes=3, checkpoint_every=5, eval_candidates=0)
    assert train.main(["--config", str(more)]) == 0
    out = capsys.readouterr().out
    assert "best.pt was scored over 2 episodes, eval_episodes is now 3" in out
    assert list((run_dir(cfg) / "archive").glob("*/best.pt"))
    assert torch.load(run_dir(cfg) / "best.pt", weights_only=False)["evaluation"]["episodes"] == 3


def test_evaluate_best_without_best_pt_is_one_line(tmp_path, capsys):
    import evaluate

    cfg = tiny(tmp_path, total_steps=100)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    capsys.readouterr()
    assert evaluate.main(["--run", str(run_dir(cfg)), "--best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no best.pt yet" in err[0]


def test_progress_bar_with_budget_and_eta_and_lines_never_glued(tmp_path):
    cfg = tiny(tmp_path, total_steps=200, checkpoint_every=3, learning_starts=100)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(cfg), "--new-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, bout.FORCE_BAR_ENV: "1", "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    segments = [seg for line in proc.stdout.split("\n") for seg in line.split("\r")]
    assert any(re.match(r"filling replay \d+/100", seg) for seg in segments)  # the share of learning_starts
    assert any(seg.startswith("training") for seg in segments) and not any(": :" in seg for seg in segments)
    assert any("/200" in seg and "<" in seg for seg in segments)  # the budget and the ETA
    for seg in segments:
        for word in ("checkpoint path=", "eval ", "finished reason="):
            if word in seg:
                assert seg.startswith(word.split()[0]), f"glued to the bar: {seg!r}"
    assert any(seg.startswith("run folder: ") and "tensorboard --logdir" in seg for seg in segments)


def test_without_a_step_budget_the_bar_is_the_bouts_time_and_reads_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(bout.FORCE_BAR_ENV, "1")
    monkeypatch.setenv("COLUMNS", "160")
    cfg = tiny(tmp_path, total_steps=0, max_episodes=12, learning_starts=60)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    segments = [seg for line in capsys.readouterr().out.split("\n") for seg in line.split("\r")]
    assert any("s of this bout" in seg for seg in segments) and not any(": :" in seg for seg in segments)


def test_a_terminal_of_zero_columns_gets_the_progress_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bout, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(bout, "_columns", lambda: 0)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert train.main(["--config", str(tiny(tmp_path, total_steps=120, learning_starts=60)), "--new-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("progress ")]
    assert any("phase=filling_replay" in ln and re.search(r"fill=\d+/60", ln) for ln in lines)


def test_progress_lines_without_a_terminal_carry_time_and_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bout, "PROGRESS_EVERY_S", 0.0)
    cfg = tiny(tmp_path, total_steps=120, learning_starts=60)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("progress ")]
    assert any("phase=filling_replay" in ln and "loss=-" in ln for ln in lines)
    assert any("phase=training" in ln and re.search(r"loss=\d", ln) for ln in lines)
    assert all(re.search(r"time=\d\d:\d\d:\d\d", ln) for ln in lines)


def test_weights_and_biases_gets_the_tensorboard_scalars_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    key = "wandb-secret-key-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny(tmp_path, total_steps=150, wandb_project="snn-ddqn-test", wandb_mode="offline", name="wb")
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    logs = list((run_dir(cfg) / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    deadline = time.monotonic() + 30  # wandb's service process may still be writing after finish()
    while b"losses/td_loss" not in logs[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    data = logs[0].read_bytes()
    for tag in (b"charts/episodic_return", b"charts/epsilon", b"losses/td_loss", b"global_step"):
        assert tag in data
    out = capsys.readouterr()
    everything = b"".join(p.read_bytes() for p in run_dir(cfg).rglob("*") if p.is_file())
    assert key.encode() not in everything and key not in out.out + out.err


def test_weights_and_biases_not_installed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    cfg = tiny(tmp_path, total_steps=50, wandb_project="p")
    assert train.main(["--config", str(cfg), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0]
    assert not (run_dir(cfg) / "metrics.csv").exists()


def test_skipped_tiles_are_logged_per_episode(tmp_path):
    # no checkpoint field: the skip penalty is CarRacing's, whose episodes restart on resume (Box2D)
    from config import load_config

    cfg = load_config(tiny(tmp_path, env_id="CarRacing-v3", skip_penalty=2.0, lenient_termination=3, obs_size=40,
                           obs_crop=[0, 0, 0, 0], hidden_layers=[16], learning_starts=10**6, replay_size=500,
                           actor="off"))  # the plain loop: the test touches tiles of the in-process env
    t = train.Trainer(cfg, cfg.run_dir(REPO), new_run=True)
    touch_tiles(t.vec.envs[0], *range(2, 11), 14)  # a corner cut: 11-13 jumped over
    t.step(0.0)
    assert t.state.episode_skipped[0] == 3
    for _ in range(300):  # lenient termination (3 steps without progress) ends the episode soon
        if t.state.episode:
            break
        t.step(0.0)
    t.metrics.close()
    t.vec.close()
    assert t.state.episode == 1
    with open(cfg.run_dir(REPO) / "metrics.csv") as f:
        first = next(csv.DictReader(f))
    assert int(first["skipped_tiles"]) >= 3 and t.state.episode_skipped[0] == 0


def test_metrics_without_the_skip_penalty_leave_the_column_empty(tmp_path):
    cfg = tiny(tmp_path, total_steps=120)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    assert rows(cfg) and all(r["skipped_tiles"] == "" for r in rows(cfg))


def test_epsilon_and_learning_rate_follow_their_step_schedules(tmp_path):
    cfg = tiny(tmp_path, total_steps=300, learning_starts=20, epsilon_start=1.0, epsilon_min=0.1,
               epsilon_decay_steps=100, learning_rate=1e-3, learning_rate_final=1e-4, learning_rate_decay_steps=200)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    # each row's ε is the schedule's at the step before the episode's last (set after every step)
    for r in rows(cfg):
        assert float(r["epsilon"]) == round(train.linear(1.0, 0.1, int(r["global_step"]) - 1, 100), 6)
    assert [float(r["epsilon"]) for r in rows(cfg)][-1] == 0.1
    ckpt = final_weights(cfg)
    assert ckpt["counters"]["epsilon"] == pytest.approx(0.1)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert train.linear(1e-3, 1e-4, 100, 200) == pytest.approx(5.5e-4)


def test_status_json_follows_the_run_at_every_checkpoint(tmp_path, monkeypatch):
    import runfolder

    seen = []
    save = runfolder.RunFolder.save

    def spy(self, state, *args, **kw):
        path = save(self, state, *args, **kw)
        seen.append((state["counters"]["global_step"], contract.read_status(self.run_dir)))
        return path

    monkeypatch.setattr(runfolder.RunFolder, "save", spy)
    cfg = tiny(tmp_path, total_steps=200, checkpoint_every=3, eval_every=6, eval_episodes=1)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    assert len(seen) >= 4
    for step, status in seen:
        assert status["global_step"] == step and status["frames"] == step  # CartPole: frame_skip 1
        assert status["reason"] == "training" and status["finished"] is False and status["updated"]
    assert any(status["last_eval"] is not None and status["best_eval"] is not None for _, status in seen)
    final = contract.read_status(run_dir(cfg))
    assert final["finished"] is True and final["global_step"] == 200 and final["episode"] == seen[-1][1]["episode"]


def test_a_finished_run_confirms_its_best_on_a_second_track_set(tmp_path, capsys):
    import agents
    import envs
    import heldout

    cfg = tiny(tmp_path, total_steps=300, eval_every=3, eval_episodes=2, eval_candidates=2, eval_confirm_episodes=3)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    out = capsys.readouterr().out
    evals = sorted((float(ln.split(" mean=")[1].split()[0]) for ln in out.splitlines() if ln.startswith("eval ")),
                   reverse=True)
    kept = [checkpoints.read(p) for p in sorted((run_dir(cfg) / heldout.CANDIDATES).glob("cand_*.pt"))]
    assert len(evals) >= 4 and len(kept) == 2
    assert sorted((c["evaluation"]["mean"] for c in kept), reverse=True) == pytest.approx(evals[:2], abs=0.01)
    for cand in kept:  # each played the second set, as anyone can repeat
        _, net = agents.build_network(cand, "cpu")
        again = envs.evaluation_returns(load_config(cfg), lambda obs: models.greedy_action(net, obs),
                                        [heldout.CONFIRM_SEED + i for i in range(3)])
        ev = cand["evaluation"]
        assert ev["confirm_mean"] == pytest.approx(np.mean(again)) and ev["confirm_episodes"] == 3
        assert ev["combined_mean"] == pytest.approx((2 * ev["mean"] + 3 * ev["confirm_mean"]) / 5)
    best = checkpoints.read(run_dir(cfg) / "best.pt")
    winner = max(kept, key=lambda c: c["evaluation"]["combined_mean"])
    assert best["evaluation"] == winner["evaluation"] and best["trained"] == winner["trained"]
    # the winner's score: tracks of a third set that chose nothing, and the number status.json reports
    _, net = agents.build_network(best, "cpu")
    fresh = envs.evaluation_returns(load_config(cfg), lambda obs: models.greedy_action(net, obs),
                                    [heldout.SCORE_SEED + i for i in range(3)])
    assert best["evaluation"]["score_mean"] == pytest.approx(np.mean(fresh)) and best["evaluation"]["score_episodes"] == 3
    assert contract.read_status(run_dir(cfg))["best_score"] == pytest.approx(np.mean(fresh))
    assert out.count("confirm candidate=") == 2 and f"score={round(float(np.mean(fresh)), 2)}" in out
    again = heldout.confirm_best(load_config(cfg), run_dir(cfg), lambda msg: None)  # nothing left to play
    assert again == best["evaluation"]


def test_a_metrics_csv_that_is_not_text_is_one_line_and_nothing_is_touched(tmp_path, capsys):
    cfg = tiny(tmp_path, total_steps=100)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    (run_dir(cfg) / "metrics.csv").write_bytes(b"episode,global_step\n\xff\xfe\x00\n")
    before = {p: p.read_bytes() for p in run_dir(cfg).rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train.main(["--config", str(tiny(tmp_path, total_steps=200))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "metrics.csv is not UTF-8 text" in line and "move it aside" in line
    assert {p: p.read_bytes() for p in run_dir(cfg).rglob("*") if p.is_file()} == before
