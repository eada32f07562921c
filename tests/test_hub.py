"""Hub mirroring with the real huggingface_hub client against a local stand-in (HF_ENDPOINT)."""
import base64
import io
import shutil
import threading
import time
from pathlib import Path

import pytest

import bout
import checkpoints
import contract
import hub
import train
from config import load_config
from conftest import run_dir_of, write_config
from hub_standin import HubStandIn

WRITE, READ = "hf_write_good", "hf_read_good"
PREFIX = "studio-a/hubrun"


@pytest.fixture
def server(monkeypatch):
    srv = HubStandIn(write_tokens=(WRITE,), read_tokens=(READ,)).start()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("repo_ID", "tester/runs")
    monkeypatch.setenv("session_name", "studio-a")
    monkeypatch.setenv("huggingface_write", WRITE)
    monkeypatch.setenv("huggingface_read", READ)
    monkeypatch.setattr(bout, "HUB_FINAL_WAIT_S", 60.0)
    yield srv
    srv.stop()


def config(tmp_path, **keys):
    """A CartPole run mirrored to the stand-in, checkpointing every 4 episodes."""
    return write_config(tmp_path, **{"name": "hubrun", "checkpoint_every": 4, "keep_checkpoints": 2,
                                     "upload_to_cloud": True, **keys})


run_dir = run_dir_of


def remote_files(server):
    return server.repos["tester/runs"].files


def assert_no_secrets(server, *texts):
    blobs = list(server.bodies) + list(remote_files(server).values()) if "tester/runs" in server.repos else []
    for blob in blobs:
        for secret in (WRITE, READ):
            assert secret.encode() not in blob
            assert base64.b64encode(secret.encode()) not in blob
    for text in texts:
        assert WRITE not in text and READ not in text


def test_run_is_mirrored_and_pruned(server, tmp_path, capsys):
    cfg = config(tmp_path)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    files = remote_files(server)
    assert server.repos["tester/runs"].private
    local_ckpts = sorted(p.name for p in (run_dir(cfg) / "checkpoints").glob("*.pt"))
    remote_ckpts = sorted(Path(p).name for p in files if p.startswith(f"{PREFIX}/checkpoints/ckpt_"))
    assert remote_ckpts == local_ckpts and len(remote_ckpts) == 2  # old ones pruned on the Hub too
    # the replay segments the kept checkpoints reference, each once, and no other
    needed = checkpoints.referenced_segments(run_dir(cfg) / "checkpoints", local_ckpts)
    remote_segs = {Path(p).name for p in files if p.startswith(f"{PREFIX}/checkpoints/replay/")}
    assert needed and remote_segs == needed == {p.name for p in (run_dir(cfg) / "checkpoints/replay").iterdir()}
    assert files[f"{PREFIX}/metrics.csv"] == (run_dir(cfg) / "metrics.csv").read_bytes()
    assert f"{PREFIX}/config.json" in files and f"{PREFIX}/status.json" in files
    assert any(p.startswith(f"{PREFIX}/plots/") for p in files)
    assert all(p.startswith(PREFIX + "/") for p in files)  # nothing outside the run folder
    out = capsys.readouterr()
    everything = "".join(p.read_text(errors="ignore") for p in run_dir(cfg).rglob("*") if p.is_file()
                         and p.suffix in (".json", ".csv"))
    assert_no_secrets(server, out.out, out.err, everything)


def test_only_changed_files_are_sent(server, tmp_path):
    cfg = config(tmp_path)
    train.main(["--config", str(cfg), "--new-run"])
    mirror = hub.HubMirror(hub.hub_environment(), "hubrun", run_dir(cfg), keep_checkpoints=2)
    mirror._pushed = {}  # a fresh process: it relies on the Hub's oids to skip identical files
    commits_before = server.repos["tester/runs"].commits
    bodies_before = len(server.bodies)
    assert mirror.finish(30)
    # everything was already there: the client skips unchanged files, no commit is made
    assert server.repos["tester/runs"].commits == commits_before
    assert all(b"ckpt_" not in body or b'"key": "file"' not in body for body in server.bodies[bodies_before:])


def test_fresh_machine_resumes_from_the_hub(server, tmp_path, capsys):
    first = config(tmp_path, total_steps=200)
    train.main(["--config", str(first), "--new-run"])
    step = contract.read_status(run_dir(first))["global_step"]
    shutil.rmtree(run_dir(first))  # the studio's disk is gone
    second = config(tmp_path, total_steps=400)
    assert train.main(["--config", str(second)]) == 0
    out = capsys.readouterr().out
    assert f"took checkpoint ckpt_{step:010d}.pt (step {step})" in out and "no local checkpoint" in out
    assert f"resumed checkpoint=ckpt_{step:010d}.pt global_step={step}" in out
    assert "replay restored" in out  # its segments came down with it
    rows = (run_dir(second) / "metrics.csv").read_text().splitlines()
    assert rows[1].startswith("1,")  # the metrics came back with the checkpoint and continue
    assert contract.read_status(run_dir(second))["global_step"] == 400


def test_best_pt_and_its_candidates_are_mirrored_and_come_back_on_a_fresh_machine(server, tmp_path, capsys):
    keys = {"eval_every": 2, "eval_episodes": 1, "eval_candidates": 2, "eval_confirm_episodes": 2}
    first = config(tmp_path, total_steps=200, **keys)
    assert train.main(["--config", str(first), "--new-run"]) == 0
    prefix = "studio-a/hubrun/"
    local = sorted(p.name for p in (run_dir(first) / "candidates").glob("cand_*.pt"))
    remote = sorted(r[len(prefix + "candidates/"):] for r in remote_files(server) if r.startswith(prefix + "candidates/"))
    assert len(local) == 2 and remote == local  # the ones pruned on the way were deleted there too
    best = (run_dir(first) / "best.pt").read_bytes()
    shutil.rmtree(run_dir(first))  # the studio's disk is gone
    capsys.readouterr()
    second = config(tmp_path, total_steps=400, **{**keys, "eval_every": 1000})  # no evaluation of its own
    assert train.main(["--config", str(second)]) == 0
    out = capsys.readouterr().out
    for name in local:  # the first machine's candidates took part in the confirmation
        assert f"confirm candidate={name}" in out
    assert (run_dir(second) / "best.pt").read_bytes() == best  # the same winner, scored the same


def test_a_run_from_before_the_mirror_keeps_its_candidates(tmp_path):
    import heldout

    run = tmp_path / "run"
    former = run / heldout.FORMER_CANDIDATES
    former.mkdir(parents=True)
    small = {"config": {}, "obs_shape": [4], "n_actions": 2, "q_network": {}, "trained": {"global_step": 100}}
    checkpoints.write_best(former / "cand_0000000100.pt", small, {"mean": 7.0, "episodes": 1})
    (former / "cand_0000000200.pt").write_bytes(b"torn")  # a killed write: not a candidate
    (kept,) = heldout._candidates(run / heldout.CANDIDATES)
    assert kept[0] == run / heldout.CANDIDATES / "cand_0000000100.pt" and kept[1]["evaluation"]["mean"] == 7.0
    assert not former.exists()


def test_the_hub_down_at_start_never_restarts_the_run_or_archives_the_hubs(server, tmp_path, capsys, monkeypatch):
    """A fresh machine while the Hub answers 503: the trainer asks again, then stops with one line; it
    neither starts from step 0 nor archives the Hub's run. Once the Hub answers, the run resumes from it."""
    import types

    import huggingface_hub.utils._http as hf_http

    import runfolder

    monkeypatch.setattr(runfolder, "HUB_START_WAITS", (0.01, 0.01))
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=lambda s: None))  # the client's own back-off
    first = config(tmp_path, total_steps=200)
    assert train.main(["--config", str(first), "--new-run"]) == 0
    step = contract.read_status(run_dir(first))["global_step"]
    shutil.rmtree(run_dir(first))  # the studio's disk is gone
    before = dict(server.repos["tester/runs"].files)
    server.down = True
    capsys.readouterr()
    second = config(tmp_path, total_steps=400)
    assert train.main(["--config", str(second)]) == 1
    out, err = capsys.readouterr()
    assert out.count("asking again in") == 2 and "global_step=0" not in out and "new run" not in out
    (line,) = err.strip().splitlines()  # one line of ours, none of the client's retries
    assert "did not answer" in line and "not starting the run anew" in line
    server.down = False
    assert server.repos["tester/runs"].files == before  # nothing archived, nothing overwritten
    assert not (run_dir(second) / "checkpoints").exists() or not list((run_dir(second) / "checkpoints").glob("*.pt"))
    assert train.main(["--config", str(second)]) == 0
    assert f"resumed checkpoint=ckpt_{step:010d}.pt global_step={step}" in capsys.readouterr().out


def test_a_fresh_machine_keeps_the_former_default_of_the_hubs_checkpoint(server, tmp_path, capsys,
                                                                        encoder_default_changed):
    """The checkpoint a fresh machine resumes comes from the Hub; it still decides a former default
    (config.FORMER_DEFAULTS) before the networks are built."""
    first = config(tmp_path, total_steps=200, encoder="nature")  # trained with the former default
    assert train.main(["--config", str(first), "--new-run"]) == 0
    shutil.rmtree(run_dir(first))
    capsys.readouterr()
    second = config(tmp_path, total_steps=300)  # encoder left at today's default, nips
    assert train.main(["--config", str(second)]) == 0
    out = capsys.readouterr().out
    assert "no local checkpoint" in out and 'has "encoder": "nature", the former default' in out
    _, ckpt = checkpoints.load_newest(run_dir(second) / "checkpoints")
    assert ckpt["config"]["encoder"] == "nature" and ckpt["counters"]["global_step"] == 300


def test_newer_hub_checkpoint_is_preferred(server, tmp_path, capsys):
    cfg = config(tmp_path, total_steps=250)
    train.main(["--config", str(cfg), "--new-run"])
    ckpts = sorted((run_dir(cfg) / "checkpoints").glob("*.pt"))
    ckpts[-1].unlink()  # the local disk lost the newest checkpoint: the Hub has a newer one
    capsys.readouterr()
    more = config(tmp_path, total_steps=300)
    assert train.main(["--config", str(more)]) == 0
    out = capsys.readouterr().out
    assert f"took checkpoint {ckpts[-1].name}" in out and "the local one is at step" in out


def test_replay_segments_are_uploaded_once_and_unreferenced_ones_deleted(server, tmp_path):
    cfg = config(tmp_path, replay_size=100, keep_checkpoints=2)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    sent = [line for body in server.bodies for line in body.splitlines() if b"/checkpoints/replay/seg_" in line
            and b'"key": "file"' in line]
    names = [line.split(b"/checkpoints/replay/")[1].split(b'"')[0] for line in sent]
    assert names and len(names) == len(set(names))  # each segment went up once
    ckpt_dir = run_dir(cfg) / "checkpoints"
    needed = checkpoints.referenced_segments(ckpt_dir, [p.name for p in checkpoints.list_checkpoints(ckpt_dir)])
    remote = {Path(p).name for p in remote_files(server) if "/checkpoints/replay/" in p}
    assert remote == needed and len(set(names)) > len(needed)  # the ring overwrote some: deleted on the Hub


def test_a_new_run_under_the_same_name_archives_the_hub_folder(server, tmp_path, capsys):
    first = config(tmp_path, total_steps=150)
    assert train.main(["--config", str(first), "--new-run"]) == 0
    before = dict(remote_files(server))
    capsys.readouterr()
    second = config(tmp_path, total_steps=100)
    assert train.main(["--config", str(second), "--new-run"]) == 0
    out = capsys.readouterr().out
    assert f"new run: the previous run's {len(before)} files on the Hub were moved to {PREFIX}/archive/" in out
    files = remote_files(server)
    archived = {p: blob for p, blob in files.items() if p.startswith(f"{PREFIX}/archive/")}
    stamp = next(iter(archived)).split("/")[3]
    assert archived == {p.replace(PREFIX, f"{PREFIX}/archive/{stamp}", 1): blob for p, blob in before.items()}
    current = {p for p in files if not p.startswith(f"{PREFIX}/archive/")}
    ckpts = sorted(Path(p).name for p in current if "/checkpoints/ckpt_" in p)
    assert ckpts == sorted(p.name for p in checkpoints.list_checkpoints(run_dir(second) / "checkpoints"))
    assert files[f"{PREFIX}/metrics.csv"] == (run_dir(second) / "metrics.csv").read_bytes()  # the new run alone


def test_wrong_token_is_one_line_and_training_goes_on(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("huggingface_write", "hf_wrong_token_value")
    cfg = config(tmp_path)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    out = capsys.readouterr()
    lines = [l for l in out.out.splitlines() if "token was rejected" in l]
    assert len(lines) == 1 and "uploads are off for this bout" in lines[0]
    assert "hf_wrong_token_value" not in out.out + out.err
    assert contract.read_status(run_dir(cfg))["finished"] is True
    assert "tester/runs" not in server.repos or not remote_files(server)


@pytest.mark.parametrize("repo", ["not a repo", "owner/name/extra", "https://huggingface.co/owner/name", "owner/"])
def test_a_malformed_repo_id_is_refused_before_training(server, tmp_path, capsys, monkeypatch, repo):
    monkeypatch.setenv("repo_ID", repo)
    assert train.main(["--config", str(config(tmp_path)), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "repo_ID in .env must be a Hub repo id" in err[0]
    assert server.requests == []


def test_upload_without_repo_or_token_is_a_config_error(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("repo_ID", "")
    cfg = config(tmp_path)
    assert train.main(["--config", str(cfg), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks repo_ID" in err[0]
    assert not (run_dir(cfg) / "checkpoints").exists()  # before training starts


def test_outage_during_training_then_pushes_resume(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub.HubMirror, "__init__", _fast_retry(hub.HubMirror.__init__))
    server.down = True
    threading.Timer(4.0, lambda: setattr(server, "down", False)).start()
    cfg = config(tmp_path, total_steps=1500, checkpoint_every=10)
    t0 = time.monotonic()
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    out = capsys.readouterr().out
    assert "push failed" in out and "retrying" in out
    assert contract.read_status(run_dir(cfg))["finished"] is True
    files = remote_files(server)
    newest = sorted((run_dir(cfg) / "checkpoints").glob("*.pt"))[-1].name
    assert f"{PREFIX}/checkpoints/{newest}" in files  # the final state reached the Hub once it was back
    assert time.monotonic() - t0 < 120


def _fast_retry(init):
    def wrapped(self, *args, **kwargs):
        kwargs.update(retry_base=0.5, max_retry_wait=1.0)
        init(self, *args, **kwargs)
    return wrapped


def test_local_backup_false_keeps_only_the_newest_checkpoint(server, tmp_path):
    cfg = config(tmp_path, local_backup=False, checkpoint_every=3)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    local = sorted(p.name for p in (run_dir(cfg) / "checkpoints").glob("*.pt"))
    remote = sorted(Path(p).name for p in remote_files(server) if "/checkpoints/ckpt_" in p)
    assert len(local) == 1 and local[0] == remote[-1] and len(remote) == 2


def test_half_written_files_are_never_uploaded(server, tmp_path):
    cfg = config(tmp_path, total_steps=100)
    train.main(["--config", str(cfg), "--new-run"])
    ckpt_dir = run_dir(cfg) / "checkpoints"
    (ckpt_dir / ".ckpt_0000009999.pt.partial.tmp").write_bytes(b"half")  # an atomic write in progress
    with open(run_dir(cfg) / "metrics.csv", "a") as f:
        f.write("99,999,1.0")  # a row being appended, no newline yet
    mirror = hub.HubMirror(hub.hub_environment(), "hubrun", run_dir(cfg), keep_checkpoints=2)
    assert mirror.finish(30)
    files = remote_files(server)
    assert not any(".tmp" in p for p in files)
    assert files[f"{PREFIX}/metrics.csv"].endswith(b"\n") and b"99,999" not in files[f"{PREFIX}/metrics.csv"]


def test_a_damaged_local_checkpoint_heals_from_the_hub_and_is_never_uploaded(server, tmp_path, capsys):
    """local_backup false: the only local checkpoint is truncated; resume takes the Hub's good copy
    (not step 0), and the damaged file never replaces the good one on the Hub."""
    first = config(tmp_path, total_steps=200, local_backup=False)
    assert train.main(["--config", str(first), "--new-run"]) == 0
    step = contract.read_status(run_dir(first))["global_step"]
    name = f"ckpt_{step:010d}.pt"
    local = run_dir(first) / "checkpoints" / name
    assert [p.name for p in (run_dir(first) / "checkpoints").glob("ckpt_*.pt")] == [name]
    good = remote_files(server)[f"studio-a/hubrun/checkpoints/{name}"]
    local.write_bytes(local.read_bytes()[:1000])
    capsys.readouterr()
    second = config(tmp_path, total_steps=300, local_backup=False)
    assert train.main(["--config", str(second)]) == 0
    out = capsys.readouterr().out
    assert f"took checkpoint {name} (step {step})" in out
    assert f"resumed checkpoint={name} global_step={step}" in out
    assert contract.read_status(run_dir(second))["global_step"] == 300
    # a damaged checkpoint is not uploaded: damage the newest local file before a push
    newest = max((run_dir(second) / "checkpoints").glob("ckpt_*.pt"))
    mirror = hub.HubMirror(hub.hub_environment(), "hubrun", run_dir(second), keep_checkpoints=2, log=print)
    newest.write_bytes(b"damaged")
    mirror.push()
    assert mirror.finish(60)
    assert remote_files(server).get(f"studio-a/hubrun/checkpoints/{newest.name}") != b"damaged"
    assert "does not match its manifest entry; not uploading it" in capsys.readouterr().out
    for rel, blob in remote_files(server).items():  # every checkpoint on the Hub is whole
        if "/checkpoints/ckpt_" in rel:
            assert checkpoints.read(io.BytesIO(blob))["counters"]["global_step"] >= step
    assert good


def test_push_an_agent_to_the_hub_and_load_it_back(server, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import torch

    import evaluate

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    cfg = config(tmp_path, total_steps=200, upload_to_cloud=False)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    ckpt = str(max((run_dir(cfg) / "checkpoints").glob("ckpt_*.pt")))
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", ckpt, "--episodes", "3", "--push-to-hub", "tester/cartpole-agent",
                          "--out", str(tmp_path / "table")]) == 0
    out = capsys.readouterr().out
    assert "pushed:" in out
    files = server.repos["tester/cartpole-agent"].files
    assert set(files) == {"README.md", "agent.pt", "replay.gif"}
    card = files["README.md"].decode()
    mean = float(next(ln for ln in out.splitlines() if ln.startswith("| ANN-DDQN")).split("|")[2])
    assert "model-index" in card and "mean_reward" in card and "CartPole-v1" in card and f"{mean:.2f} +/-" in card
    assert "hf://tester/cartpole-agent" in card and "weights_only=True" in card
    # its lineage: one stage of 200 agent steps (CartPole: a frame each), in all
    assert "Trained for 200 frames (200 agent steps) in all" in card and "| 1 | hubrun | 200 | 200 | – | – |" in card
    assert "What a decision costs" in card and "multiply-accumulates" in card and "µJ" in card
    weights = torch.load(io.BytesIO(files["agent.pt"]), weights_only=True)  # no pickled code needed
    assert weights["evaluation"]["episodes"] == 3 and "replay" not in weights and "optimizer" not in weights
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]  # the card's Python lines run as written
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "agent.pt").write_bytes(files["agent.pt"])
    monkeypatch.chdir(tmp_path / "card")  # undone by monkeypatch at the test's end
    scope: dict = {}
    exec(snippet, scope)
    assert scope["net"](torch.zeros(2, *weights["obs_shape"])).shape == (2, weights["n_actions"])
    assert files["replay.gif"][:6] in (b"GIF87a", b"GIF89a")
    assert_no_secrets(server, out, card)
    for blob in [*server.bodies, *files.values()]:
        assert WRITE.encode() not in blob and READ.encode() not in blob
    # and back: evaluate, GIF and play from hf://
    assert evaluate.main(["--checkpoint", "hf://tester/cartpole-agent", "--episodes", "3",
                          "--out", str(tmp_path / "again")]) == 0
    again = capsys.readouterr().out
    assert f"| ANN-DDQN (tester/cartpole-agent) | {mean:.2f} |" in again  # same seeds, same weights, same mean
    gif = tmp_path / "from-hub.gif"
    assert evaluate.main(["--checkpoint", "hf://tester/cartpole-agent", "--gif", str(gif), "--no-table"]) == 0
    assert gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # --play on a virtual display
    assert evaluate.main(["--checkpoint", "hf://tester/cartpole-agent", "--play"]) == 0
    assert "played one episode" in capsys.readouterr().out
    assert evaluate.main(["--checkpoint", "hf://tester/missing-agent", "--episodes", "1"]) == 2
    assert "cannot download agent.pt from tester/missing-agent" in capsys.readouterr().err


def test_a_published_agent_starts_or_teaches_a_new_run(server, tmp_path, capsys, monkeypatch):
    """init_weights and teacher take hf://owner/name: a fresh machine starts from what another published.
    Once downloaded, the Hub's cached copy serves when the Hub cannot be reached."""
    import huggingface_hub.constants as hf_constants
    import torch

    import evaluate

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    donor = config(tmp_path, name="donor", total_steps=200, upload_to_cloud=False)
    assert train.main(["--config", str(donor), "--new-run"]) == 0
    ckpt = str(max((run_dir(donor) / "checkpoints").glob("ckpt_*.pt")))
    assert evaluate.main(["--checkpoint", ckpt, "--episodes", "2", "--push-to-hub", "tester/cartpole-agent",
                          "--out", str(tmp_path / "table")]) == 0
    published = torch.load(io.BytesIO(server.repos["tester/cartpole-agent"].files["agent.pt"]), weights_only=True)
    keys = dict(upload_to_cloud=False, init_weights="hf://tester/cartpole-agent", teacher="hf://tester/cartpole-agent")
    t = train.Trainer(load_config(config(tmp_path, name="from-hub", **keys)), tmp_path / "from-hub", new_run=True)
    for net in (t.learner.q_network, t.learner.target_network, t.learner.teacher):
        assert all(torch.equal(v, published["q_network"][k]) for k, v in net.state_dict().items())
    t.vec.close()
    t.metrics.close()
    out = capsys.readouterr().out
    assert "init_weights path=hf://tester/cartpole-agent" in out and "teacher path=hf://tester/cartpole-agent" in out
    assert_no_secrets(server, out)
    # the Hub down: the cached copy starts the next run too
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    offline = config(tmp_path, name="offline", total_steps=60, **keys)
    assert train.main(["--config", str(offline), "--new-run"]) == 0
    # a repo that does not exist is one line, exit 2, and nothing of the run is written
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    capsys.readouterr()
    missing = config(tmp_path, name="missing", upload_to_cloud=False, init_weights="hf://tester/missing-agent")
    assert train.main(["--config", str(missing), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: config key 'init_weights': cannot download agent.pt from "
                                                        "tester/missing-agent")
    assert not (run_dir(missing) / "checkpoints").exists() and not (run_dir(missing) / "metrics.csv").exists()
    malformed = config(tmp_path, name="malformed", upload_to_cloud=False, teacher="hf://not a repo")
    assert train.main(["--config", str(malformed), "--new-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config key 'teacher': hf:// needs a Hub repo id like owner/name" in err[0]


def test_push_checks_its_token_first_and_a_short_evaluation_says_so(server, tmp_path, capsys, monkeypatch):
    import evaluate

    cfg = config(tmp_path, total_steps=120, upload_to_cloud=False)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    ckpt = str(max((run_dir(cfg) / "checkpoints").glob("ckpt_*.pt")))
    capsys.readouterr()
    monkeypatch.setenv("huggingface_write", "")
    assert evaluate.main(["--checkpoint", ckpt, "--episodes", "3", "--push-to-hub", "tester/nope",
                          "--out", str(tmp_path / "t0")]) == 2
    out, err = capsys.readouterr()
    assert "needs huggingface_write" in err and "episode 1/" not in out and not (tmp_path / "t0").exists()
    monkeypatch.setenv("huggingface_write", WRITE)
    assert evaluate.main(["--checkpoint", ckpt, "--episodes", "1", "--push-to-hub", "tester/one",
                          "--out", str(tmp_path / "t1")]) == 0
    assert "publishing a mean over 1 episode(s)" in capsys.readouterr().err
    card = server.repos["tester/one"].files["README.md"].decode()
    assert "1 full greedy episode on seed 0" in card and "no reliable mean" in card and "seeds 0–0" not in card
    assert "https://github.com/)" not in card  # no placeholder link


def test_an_unreachable_hub_is_one_line_or_the_cached_copy_said(server, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hf_constants

    import evaluate

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    cfg = config(tmp_path, total_steps=120, upload_to_cloud=False)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    ckpt = str(max((run_dir(cfg) / "checkpoints").glob("ckpt_*.pt")))
    assert evaluate.main(["--checkpoint", ckpt, "--episodes", "1", "--push-to-hub", "tester/agent",
                          "--out", str(tmp_path / "t")]) == 0
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    capsys.readouterr()
    started = time.monotonic()
    assert evaluate.main(["--checkpoint", "hf://tester/never-downloaded", "--episodes", "1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the Hub at http://127.0.0.1:9 cannot be reached" in line and "no copy of tester/never-downloaded" in line
    assert time.monotonic() - started < 15  # one quick question, not the client's retries
    assert evaluate.main(["--checkpoint", "hf://tester/agent", "--episodes", "1", "--out", str(tmp_path / "u")]) == 2
    capsys.readouterr()  # never downloaded here either: the push does not fill the cache
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    assert evaluate.main(["--checkpoint", "hf://tester/agent", "--episodes", "1", "--out", str(tmp_path / "v")]) == 0
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", "hf://tester/agent", "--episodes", "1", "--out", str(tmp_path / "w")]) == 0
    note = [ln for ln in capsys.readouterr().out.splitlines() if "cannot be reached" in ln]
    assert len(note) == 1 and "using the cached copy of tester/agent" in note[0]


def test_the_hub_stand_in_runs_from_the_command_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "hub_standin.py")], stdout=subprocess.PIPE,
                            text=True)
    try:
        first = proc.stdout.readline()
        url = first.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and "export HF_ENDPOINT=" in proc.stdout.readline()
        api = __import__("huggingface_hub").HfApi(endpoint=url)
        api.create_repo("you/agent", token=WRITE, exist_ok=True)
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="x.txt", repo_id="you/agent", token=WRITE)
        assert [f for f in api.list_repo_files("you/agent", token=READ)] == ["x.txt"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_a_checkpoint_deleted_on_the_hub_out_of_band_does_not_stop_the_mirror(server, tmp_path, capsys,
                                                                              monkeypatch):
    """A failed push reads the Hub's state anew: a stale list once made every later push fail (404)."""
    monkeypatch.setattr(hub.HubMirror, "__init__", _fast_retry(hub.HubMirror.__init__))
    original, deleted = hub.HubMirror._push_once, []

    def push_then_someone_deletes(self):
        original(self)
        if not deleted:  # after the bout's first push, a checkpoint vanishes from the Hub
            files = server.repos["tester/runs"].files
            deleted.append(next(p for p in sorted(files) if "/checkpoints/ckpt_" in p))
            del files[deleted[0]]

    monkeypatch.setattr(hub.HubMirror, "_push_once", push_then_someone_deletes)
    cfg = config(tmp_path, total_steps=400, checkpoint_every=2, keep_checkpoints=2)
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    out = capsys.readouterr().out
    assert deleted and out.count("push failed") <= 1
    local = sorted(p.name for p in (run_dir(cfg) / "checkpoints").glob("ckpt_*.pt"))
    remote = sorted(Path(p).name for p in remote_files(server) if "/checkpoints/ckpt_" in p)
    assert remote == local


def test_a_bout_ends_with_the_hub_down_cleanly_within_its_time(server, tmp_path):
    """A short bout's end with the Hub answering 503, real launcher and trainer: the trainer keeps its final push
    inside the bout and exits 0 before the launcher would kill it (it once waited 120 s for the Hub and ended in
    SIGKILL and exit 1)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO, TINY_CARTPOLE

    server.down = True
    keys = {**TINY_CARTPOLE, "name": "down-bout", "runs_dir": str(tmp_path / "runs"), "upload_to_cloud": True,
            "continue_run": False, "total_steps": 10**7, "checkpoint_every": 2, "max_run_time": 5,
            "train_max_time": 5}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "--no-sync", "--forceconfig", "--config",
                          json.dumps(keys)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    assert "killing it" not in out.stdout + out.stderr and "crash" not in out.stdout
    assert took < 25, (took, out.stdout)
    assert (tmp_path / "runs" / "down-bout" / "checkpoints").is_dir()  # the run is safe on disk


def test_a_stop_signal_with_the_hub_down_waits_for_the_push_only_briefly(server, tmp_path, monkeypatch):
    import signal

    monkeypatch.setattr(bout, "HUB_STOP_WAIT_S", 1.0)
    server.down = True
    cfg = config(tmp_path, name="down-signal", continue_run=False, total_steps=10**7, checkpoint_every=2)
    original = train.Trainer.save_checkpoint

    def then_a_stop(self):  # SIGTERM after the first checkpoint, as the launcher forwards it
        path = original(self)
        os.kill(os.getpid(), signal.SIGTERM)
        return path

    import os

    monkeypatch.setattr(train.Trainer, "save_checkpoint", then_a_stop)
    t0 = time.monotonic()
    assert train.main(["--config", str(cfg), "--new-run"]) == 0
    assert time.monotonic() - t0 < 20  # not the 60-120 s a push to a Hub that is down once took
    assert "interrupted by SIGTERM" in contract.read_status(run_dir(cfg))["reason"]
