"""evaluate.py: tables on fixed seeds, baselines, GIF, plots and bad input."""
import csv
import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

import evaluate
import train
from config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = {"name": "ev", "runs_dir": str(tmp / "runs"), "env_id": "CartPole-v1", "architecture": "ann",
           "hidden_layers": [16], "replay_size": 300, "learning_starts": 30, "batch": 8, "total_steps": 200,
           "eval_every": 0, "max_run_time": 600, "train_max_time": 600, "win_threshold": 100}
    path = tmp / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert train.main(["--config", str(path), "--new-run"]) == 0
    return load_config(path).run_dir(REPO)


def test_table_for_a_run_is_written_and_repeatable(cartpole_run, capsys):
    assert evaluate.main(["--run", str(cartpole_run), "--episodes", "4", "--baseline", "random"]) == 0
    out = capsys.readouterr().out
    assert ("| method | average | max | min | std | win rate | mean length (frames) | episodes | frames trained |"
            in out)
    first = (cartpole_run / "evaluation.csv").read_text()
    rows = list(csv.DictReader(first.splitlines()))
    assert [r["method"] for r in rows] == ["ANN-DDQN (ev)", "random"]
    # the run's newest checkpoint trained 200 agent steps of CartPole (a frame each); a baseline none
    assert [r["frames_trained"] for r in rows] == ["200", ""] and "| 200 |" in out and "| – |" in out
    assert all(len(r["returns"].split()) == 4 for r in rows)
    assert (cartpole_run / "evaluation.md").exists()
    evaluate.main(["--run", str(cartpole_run), "--episodes", "4", "--baseline", "random"])
    assert (cartpole_run / "evaluation.csv").read_text() == first  # same seeds, same table


def test_several_agents_in_one_table(cartpole_run, tmp_path, capsys):
    ckpt = sorted((cartpole_run / "checkpoints").glob("*.pt"))[-1]
    assert evaluate.main(["--run", str(cartpole_run), "--checkpoint", str(ckpt), "--episodes", "2",
                          "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "evaluation.csv").read_text().splitlines()))
    assert len(rows) == 2 and rows[0]["returns"] == rows[1]["returns"]  # the same agent twice, same tracks
    step = int(ckpt.stem.split("_")[1])
    assert [r["method"] for r in rows] == [f"ANN-DDQN (ev @ {step})"] * 2  # told apart only where they coincide


def test_files_of_one_name_in_two_folders_are_told_apart(cartpole_run, tmp_path, capsys):
    for folder in ("a", "b"):
        evaluate.main(["--checkpoint", str(sorted((cartpole_run / "checkpoints").glob("*.pt"))[-1]),
                       "--export", str(tmp_path / folder / "final.pt"), "--no-table"])
    assert evaluate.main(["--checkpoint", str(tmp_path / "a" / "final.pt"), "--checkpoint",
                          str(tmp_path / "b" / "final.pt"), "--episodes", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "evaluation.csv").read_text().splitlines()))
    assert [r["method"] for r in rows] == ["ANN-DDQN (final, final.pt in a)", "ANN-DDQN (final, final.pt in b)"]


def test_carracing_baselines_pid_beats_random(tmp_path, capsys):
    assert evaluate.main(["--baseline", "random", "--baseline", "pid", "--episodes", "1", "--out", str(tmp_path)]) == 0
    rows = {r["method"]: float(r["average"]) for r in csv.DictReader((tmp_path / "evaluation.csv").open())}
    assert rows["pid"] > rows["random"] + 100


def test_gif_is_an_animation_with_every_step(cartpole_run, tmp_path, capsys):
    gif = tmp_path / "ep.gif"
    assert evaluate.main(["--run", str(cartpole_run), "--gif", str(gif), "--no-table"]) == 0
    steps = int(capsys.readouterr().out.split("(")[1].split()[0])
    with Image.open(gif) as im:
        assert im.is_animated
        total = 0
        for i in range(im.n_frames):  # Pillow merges identical consecutive frames: count their time
            im.seek(i)
            total += im.info["duration"]
    assert total == (steps + 1) * 50  # 20 fps: the reset frame and one per step


def test_carracing_gif_shows_agent_view_beside_render(tmp_path):
    cfg = load_config({"obs_size": 48})
    ret, steps = __import__("envs").record_gif(cfg, lambda env: (lambda obs: 3), tmp_path / "c.gif", max_steps=5)
    band = __import__("envs").GIF_LABEL_BAND
    with Image.open(tmp_path / "c.gif") as im:
        assert im.n_frames == 6 and im.size == (200 + 300, 200 + band)  # driving: every frame differs
        frame = np.asarray(im.convert("RGB"))
    # the band names both halves: white text over black on the left (agent's view) and on the right
    for left, right in ((0, 200), (200, 500)):
        text = frame[:band, left:right]
        assert (text.max(axis=2) > 200).sum() > 20 and (text.max(axis=2) < 30).sum() > text.shape[0] * text.shape[1] // 2


def test_the_training_plot_says_what_each_return_measures(tmp_path):
    import metrics

    rows = "episode,global_step,return,length,epsilon,win,loss,sps,wall_time,eval_return\n" + "".join(
        f"{i},{10 * i},{50 + i},10,0.5,0,0.1,1,0,{-90 if i % 5 == 0 else ''}\n" for i in range(1, 21))
    (tmp_path / "metrics.csv").write_text(rows)
    fig = metrics.training_figure({"run": tmp_path / "metrics.csv"}, 900)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("training (ε-greedy, lenient ends" in lb for lb in labels)
    assert any("held-out eval (greedy, full episodes)" in lb for lb in labels)


def test_plot_of_training_curves(cartpole_run, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert evaluate.main(["--run", str(cartpole_run), "--plot", str(png), "--no-table"]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 600


def test_plot_panels_share_the_episode_axis_and_say_when_empty(tmp_path):
    import matplotlib.pyplot as plt

    import metrics

    csv_path = tmp_path / "metrics.csv"
    rows = ["episode,global_step,return,length,epsilon,win,loss,sps,wall_time,eval_return"]
    rows += [f"{e},{10 * e},{-5 + e},10,0.9,0,,1,0," for e in range(1, 31)]  # no update has run yet
    csv_path.write_text("\n".join(rows) + "\n")
    fig = metrics.training_figure({"run": csv_path}, 900)
    ret, eps, loss, win = fig.axes
    assert ret.get_xlim() == loss.get_xlim() == win.get_xlim() == eps.get_xlim()
    assert win.get_ylim() == (0, 100)  # no wins: the axis still reads 0-100 %
    assert [t.get_text() for t in loss.texts] == ["no updates yet"]
    plt.close(fig)


def test_an_older_metrics_csv_gets_the_new_columns_and_a_skipped_tiles_curve(tmp_path):
    import matplotlib.pyplot as plt

    import metrics

    old = "episode,global_step,return,length,epsilon,win,loss,sps,wall_time,eval_return"
    (tmp_path / "metrics.csv").write_text(old + "\r\n" + "1,250,600.5,250,0.05,0,0.1,40,0,\r\n")
    log = metrics.MetricsLog(tmp_path, tensorboard=False)  # a resume by code that logs skipped tiles
    log.row({"episode": 2, "global_step": 500, "return": 700.0, "length": 250, "epsilon": 0.05, "win": 0,
             "skipped_tiles": 4})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(metrics.METRIC_FIELDS) and lines[1] == "1,250,600.5,250,0.05,0,0.1,40,0,"
    m = metrics.read_metrics(tmp_path / "metrics.csv")
    assert m["return"] == [600.5, 700.0] and m["skipped_tiles"][1] == 4 and m["skipped_tiles"][0] != m["skipped_tiles"][0]
    fig = metrics.training_figure({"run": tmp_path / "metrics.csv"})
    skip_axis = fig.axes[-1]  # the ε panel's right axis
    assert [line.get_ydata().tolist() for line in skip_axis.lines] == [[4.0]]
    plt.close(fig)


@pytest.mark.parametrize("args,message", [
    (["--run", "/no/such/run"], "does not exist"),
    (["--checkpoint", "/no/such.pt"], "does not exist"),
    (["--baseline", "human"], "invalid choice"),
    ([], "nothing to evaluate"),
    (["--baseline", "pid", "--env-id", "CartPole-v1"], "drives CarRacing only"),
])
def test_bad_input_exit_2(args, message, capsys):
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_outputs_and_seeds_are_one_line_before_any_episode(cartpole_run, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    (tmp_path / "a-dir").mkdir()
    not_an_agent = tmp_path / "plain.pt"
    torch.save({"config": {"architecture": "ann"}, "q_network": {}}, not_an_agent)
    for args, message in ((["--seed", "-1"], "--seed must be a track seed >= 0"),
                          (["--out", str(a_file)], "is a file; give a folder"),
                          (["--out", "/proc/snn-ddqn-table"], "cannot write there"),
                          (["--export", str(tmp_path / "a-dir")], "is a folder; give a file name"),
                          (["--checkpoint", str(not_an_agent)], "is not an agent file or checkpoint")):
        first = [] if "--checkpoint" in args else ["--run", str(cartpole_run)]
        assert evaluate.main([*first, *args, "--episodes", "2"]) == 2, args
        out, err = capsys.readouterr()
        (line,) = err.strip().splitlines()
        assert message in line and "episode 1/" not in out, (args, line)


def test_an_unwritable_output_path_is_one_line_before_any_episode(cartpole_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for option in ("--gif", "--plot", "--export"):
        args = ["--run", str(cartpole_run), option, str(blocker / "out.bin"), "--no-table"]
        assert evaluate.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{option} {blocker / 'out.bin'}: cannot write there" in err[0]


def test_run_without_checkpoint_and_foreign_files(tmp_path, cartpole_run, capsys):
    (tmp_path / "empty").mkdir()
    assert evaluate.main(["--run", str(tmp_path / "empty")]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert evaluate.main(["--checkpoint", str(junk)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    ckpt = sorted((cartpole_run / "checkpoints").glob("*.pt"))[-1]
    assert evaluate.main(["--checkpoint", str(ckpt), "--env-id", "CarRacing-v3"]) == 2
    assert "trained on CartPole-v1, not CarRacing-v3" in capsys.readouterr().err
    import torch

    bad = torch.load(ckpt, weights_only=False)
    bad["config"]["architecture"] = "snn"
    torch.save(bad, tmp_path / "other_arch.pt")
    assert evaluate.main(["--checkpoint", str(tmp_path / "other_arch.pt")]) == 2
    assert "does not match" in capsys.readouterr().err


def test_play_drives_an_episode_in_a_window(cartpole_run, monkeypatch, capsys):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # pygame's window, without a screen
    assert evaluate.main(["--run", str(cartpole_run), "--play"]) == 0
    assert "played one episode: return" in capsys.readouterr().out


def test_play_without_display_is_a_clear_error(cartpole_run, monkeypatch, capsys):
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert evaluate.main(["--run", str(cartpole_run), "--play"]) == 2
    assert "needs a display" in capsys.readouterr().err


def test_exported_weights_give_the_same_table(cartpole_run, tmp_path, capsys):
    small = tmp_path / "pretrained.pt"
    assert evaluate.main(["--run", str(cartpole_run), "--export", str(small), "--no-table"]) == 0
    ckpt = sorted((cartpole_run / "checkpoints").glob("*.pt"))[-1]
    assert small.stat().st_size < ckpt.stat().st_size / 2  # no replay, no optimiser
    assert evaluate.main(["--checkpoint", str(small), "--episodes", "3", "--out", str(tmp_path / "a")]) == 0
    assert evaluate.main(["--checkpoint", str(ckpt), "--episodes", "3", "--out", str(tmp_path / "b")]) == 0
    returns = [list(csv.DictReader((tmp_path / d / "evaluation.csv").open()))[0]["returns"] for d in "ab"]
    assert returns[0] == returns[1]


def test_gif_of_a_baseline_that_reads_the_environment(tmp_path, capsys):
    # the pid controller reads the environment it drives (not only the observation): the GIF's own env
    import envs
    from config import load_config as load

    agent = evaluate.pid_agent(load())
    gif = tmp_path / "pid.gif"
    ret, steps = envs.record_gif(agent.cfg.for_evaluation(), agent.policy, gif, seed=0, max_steps=60)
    assert steps == 60 and ret > 0  # it drives: tiles collected in 60 frames
    with Image.open(gif) as im:
        assert im.is_animated


def test_pid_starts_every_episode_afresh(capsys, tmp_path):
    # the same seed twice in one table gives the same return: no controller state leaks between episodes
    import utils as u

    agent = evaluate.pid_agent(u.load_config())
    a = evaluate.evaluate_agent(agent, 1, 3, lenient=False)
    b = evaluate.evaluate_agent(agent, 1, 3, lenient=False)
    assert a["returns"] == b["returns"]


def test_lenient_keeps_the_training_aids_and_the_default_drops_them(tmp_path, capsys):
    # a random driver earns nothing for long stretches: the default's lenient termination (25 idle steps)
    # ends its episode early with --lenient, and the table's full episode runs to the time limit without
    lengths = []
    for extra in ([], ["--lenient"]):
        assert evaluate.main(["--baseline", "random", "--episodes", "1", "--out", str(tmp_path), *extra]) == 0
        lengths.append(float(next(csv.DictReader((tmp_path / "evaluation.csv").open()))["mean_length_frames"]))
    assert lengths[0] == 1000 and lengths[1] < 1000  # frames: 250 agent steps of 4 frames


def test_a_loaded_agent_keeps_its_training_config(cartpole_run):
    # --lenient can only keep what the agent was trained with: loading must not drop it (it once did)
    agent = evaluate.load_agent(sorted((cartpole_run / "checkpoints").glob("*.pt"))[-1], device="cpu")
    assert agent.cfg.lenient_termination == 25 and agent.cfg.for_evaluation().lenient_termination == 0


@pytest.mark.parametrize("stored", [None, "float32", "auto"])
def test_a_stored_agent_plays_with_the_encoder_it_was_trained_with(tmp_path, stored):
    """A file written before conv_precision existed was trained in float32 and plays so, whatever
    today's default; a file that says `auto` resolves on the machine that plays it."""
    import torch

    import models

    weights = torch.load(REPO / "pretrained" / "ann_ddqn.pt", weights_only=True)
    weights["config"].pop("conv_precision")
    if stored is not None:
        weights["config"]["conv_precision"] = stored
    torch.save(weights, tmp_path / "agent.pt")
    cfg, net, _ = evaluate.load_network(tmp_path / "agent.pt", device="cpu")
    bf16 = stored == "auto" and models.native_bfloat16()
    assert cfg.conv_precision == (stored or "float32") and net.conv_bf16 == bf16


def test_averaged_weights_are_the_mean_and_play_like_any_file(cartpole_run, tmp_path, capsys):
    import sys

    import torch

    import checkpoints
    sys.path.insert(0, str(REPO / "bench"))
    import average

    ckpt = checkpoints.read_for_user(sorted((cartpole_run / "checkpoints").glob("*.pt"))[-1])
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    checkpoints.write_best(a, ckpt, None)
    checkpoints.write_best(b, {**ckpt, "q_network": {k: v + 1 for k, v in ckpt["q_network"].items()}}, None)
    out = tmp_path / "avg.pt"
    assert average.main([str(a), str(b), "--out", str(out)]) == 0
    mean = torch.load(out, weights_only=True)
    for name, tensor in ckpt["q_network"].items():
        assert torch.allclose(mean["q_network"][name], tensor + 0.5)
    assert mean["trained"]["averaged"] == [str(a), str(b)]
    assert evaluate.main(["--checkpoint", str(out), "--episodes", "2", "--out", str(tmp_path / "t")]) == 0
    other = tmp_path / "other.pt"
    checkpoints.write_best(other, {**ckpt, "config": {**ckpt["config"], "hidden_layers": [8]}}, None)
    capsys.readouterr()
    assert average.main([str(a), str(other), "--out", str(tmp_path / "x.pt")]) == 2
    assert "hidden_layers" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_every_shipped_agent_loads_as_a_weights_only_file_and_acts():
    """pretrained/*.pt: plain tensors and a config today's schema accepts (a teacher named in it is only a
    record of how it was trained; playing never loads the teacher)."""
    import torch

    files = sorted((REPO / "pretrained").glob("*.pt"))
    assert len(files) >= 3
    for path in files:
        stored = torch.load(path, weights_only=True)  # no pickled code
        agent = evaluate.load_agent(path, device="cpu")
        obs = np.zeros(stored["obs_shape"], dtype=np.uint8)
        assert 0 <= agent.policy(None)(obs) < 5


def test_runs_compared_at_equal_training_time_without_the_pause_between_bouts(tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import compare_runs

    header = "episode,global_step,return,length,epsilon,win,loss,sps,wall_time,eval_return,skipped_tiles\n"
    # run a: 10 s per episode of 100 steps, a 2-hour pause after episode 3 (a stopped and resumed run)
    walls_a = [0, 10, 20, 7220, 7230, 7240]
    # run b: 20 s per episode of 100 steps, no pause
    walls_b = [0, 20, 40, 60, 80, 100]
    for name, walls in (("a", walls_a), ("b", walls_b)):
        (tmp_path / name).mkdir()
        rows = [f"{i + 1},{100 * (i + 1)},{10 * (i + 1) + (name == 'a')},100,0.1,0,,1,{w},{'5' if i == 1 else ''},\n"
                for i, w in enumerate(walls)]
        (tmp_path / name / "metrics.csv").write_text(header + "".join(rows))
    curve = compare_runs.training_curve(tmp_path / "a" / "metrics.csv", gap=300)
    assert [r["seconds"] for r in curve] == [0, 10, 20, 20, 30, 40]  # the pause is not training time
    png = tmp_path / "cmp.png"
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--points", "2", "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # equal time (40 s, the shorter run's): a played 6 episodes (600 steps), b 3 (300 steps)
    assert report["equal_time"][1]["a"]["step"] == 600 and report["equal_time"][1]["b"]["step"] == 300
    # equal steps (600, both runs' end): a took 40 s, b 100 s; b's best eval came at step 200
    assert report["equal_steps"][1]["a"]["seconds"] == 40 and report["equal_steps"][1]["b"]["seconds"] == 100
    assert report["equal_steps"][1]["b"]["best_eval"] == 5 and report["equal_steps"][1]["a"]["train_mean_100"] == 36
    assert png.stat().st_size > 0
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_each_episode_is_reported_and_a_replaced_table_is_said(cartpole_run, tmp_path, capsys):
    out_dir = tmp_path / "table"
    assert evaluate.main(["--run", str(cartpole_run), "--episodes", "3", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("episode ")]
    assert [ln.split(":")[0] for ln in lines] == [f"episode {i}/3 ANN-DDQN (ev)" for i in (1, 2, 3)]
    assert "replacing" not in out
    assert evaluate.main(["--run", str(cartpole_run), "--episodes", "3", "--out", str(out_dir)]) == 0
    assert "(replacing the previous table there)" in capsys.readouterr().out


def test_an_output_alone_plays_no_table_unless_episodes_are_asked_for(cartpole_run, tmp_path, capsys):
    gif = tmp_path / "drive.gif"
    assert evaluate.main(["--run", str(cartpole_run), "--gif", str(gif), "--out", str(tmp_path / "t1")]) == 0
    out = capsys.readouterr().out
    assert gif.exists() and "| method |" not in out and not (tmp_path / "t1" / "evaluation.md").exists()
    assert evaluate.main(["--run", str(cartpole_run), "--gif", str(gif), "--episodes", "2",
                          "--out", str(tmp_path / "t2")]) == 0
    assert "| method |" in capsys.readouterr().out and (tmp_path / "t2" / "evaluation.md").exists()
