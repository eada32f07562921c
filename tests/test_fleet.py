"""fleet.py against the local Hub stand-in: several sessions, a finished, a stale, a failed and an old run."""
import json
import time

import fleet
import train
from conftest import write_config
from hub_standin import Repo
from test_hub import server  # noqa: F401  (the Hub stand-in fixture, with .env's keys set)


def stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - seconds_ago))


def metrics_csv(n: int, start_wall: float, with_new_columns: bool = True) -> bytes:
    head = "episode,global_step,return,length,epsilon,win" + (",loss,sps,wall_time,eval_return" if with_new_columns
                                                            else "")
    rows = [f"{i},{20 * i},{10.0 * i},20,0.5,0" + (f",0.1,50.0,{start_wall + i},{5.0 * i if i % 5 == 0 else ''}"
                                                  if with_new_columns else "") for i in range(1, n + 1)]
    return ("\n".join([head, *rows]) + "\n").encode()


def put(server, run: str, files: dict) -> None:
    repo = server.repos.setdefault("tester/runs", Repo(private=True))
    for name, data in files.items():
        repo.files[f"{run}/{name}"] = data if isinstance(data, bytes) else json.dumps(data).encode()


def test_the_fleet_table_tells_each_runs_state(server, capsys):
    cfg = {"env_id": "CartPole-v1", "checkpoint_every": 5}
    put(server, "studio-a/done", {"status.json": {"finished": True, "reason": "total_steps 400 reached",
                                                  "global_step": 400, "frames": 400, "episode": 20, "best_eval": 52.0,
                                                  "best_score": 50.0, "updated": stamp(60)},
                                  "config.json": cfg, "metrics.csv": metrics_csv(20, time.time() - 100)})
    put(server, "studio-a/gone", {"status.json": {"finished": False, "reason": "training", "global_step": 300,
                                                  "frames": 300, "episode": 15, "updated": stamp(5 * 3600)},
                                  "config.json": cfg, "metrics.csv": metrics_csv(15, time.time() - 5 * 3600 - 15)})
    put(server, "studio-b/broke", {"status.json": {"finished": False, "reason": "cannot write to the run folder "
                                                   "(No space left on device: runs/broke)", "global_step": 100,
                                                   "updated": stamp(30)}})
    put(server, "studio-b/old", {"status.json": {"finished": False, "reason": "training"},
                                 "metrics.csv": metrics_csv(3, 0, with_new_columns=False)})
    put(server, "studio-b/old/archive/20260101-000000", {"status.json": {"finished": True, "reason": "x"}})
    assert fleet.main([]) == 0
    out = capsys.readouterr().out
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in out.splitlines()
            if ln.startswith("| studio-")}
    assert set(rows) == {"studio-a/done", "studio-a/gone", "studio-b/broke", "studio-b/old"}  # no archive
    assert rows["studio-a/done"][:4] == ["finished", "400", "400", "20"] and rows["studio-a/done"][5] == "50.0"
    # (a finished run's best is best.pt's score on fresh tracks, not the in-run maximum that chose it)
    assert rows["studio-a/done"][4] == f"{sum(10.0 * i for i in range(11, 21)) / 10:.1f}"  # the last 10 returns
    assert rows["studio-a/gone"][0] == "stale" and rows["studio-a/gone"][-1] == "5.0 h ago"
    assert rows["studio-b/broke"][0].startswith("failed: cannot write to the run folder")
    assert rows["studio-b/old"][0] == "training" and rows["studio-b/old"][-2:] == ["–", "–"]  # fields it predates


def test_the_fleet_plots_and_evaluates_real_runs(server, tmp_path, capsys):
    for name in ("one", "two"):
        cfg = write_config(tmp_path, name=name, total_steps=150, upload_to_cloud=True, eval_every=3, eval_episodes=1,
                           eval_candidates=0)
        assert train.main(["--config", str(cfg), "--new-run"]) == 0
    capsys.readouterr()
    png = tmp_path / "fleet.png"
    assert fleet.main(["--plot", str(png), "--evaluate", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "| studio-a/one | finished |" in out and "| studio-a/two | finished |" in out
    assert png.stat().st_size > 1000
    table = [ln for ln in out.splitlines() if ln.startswith("| ANN-DDQN")]
    assert len(table) == 2  # both runs' best.pt on the same tracks


def test_without_a_repo_it_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("repo_ID", "")
    monkeypatch.setattr(fleet.hub, "hub_environment", lambda: {"repo_ID": ""})
    assert fleet.main([]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "set repo_ID" in line
