"""convert.py: a hybrid agent's ANN convolutions carried over to spiking ones by rate coding."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import agents
import checkpoints
import convert
import models
from config import load_config

REPO = Path(__file__).resolve().parents[1]
KEYS = {"architecture": "snn", "env_id": "CarRacing-v3", "obs_size": 36, "obs_crop": [0, 0, 0, 0], "hidden_layers": [16],
        "conv_precision": "float32"}
FRAMES = torch.randint(0, 256, (64, 4, 36, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def hybrid(time_steps: int = 25, **keys) -> tuple[torch.nn.Module, dict]:
    """A hybrid agent with seeded weights whose hidden layer fires (~12%), and its agent file's contents."""
    config = {**KEYS, "snn_tSteps": time_steps, **keys}
    torch.manual_seed(0)
    net = models.build_q_network(load_config(config), (4, 36, 36), 5).eval()
    if config["architecture"] == "snn":
        with torch.no_grad():
            net.layers[0].weight.mul_(20)  # random weights alone barely reach the threshold
    ckpt = checkpoints.weights_only({"config": config, "obs_shape": [4, 36, 36], "n_actions": 5,
                                     "q_network": net.state_dict(), "trained": {"global_step": 100}})
    return net, ckpt


def test_the_scales_are_the_percentiles_and_the_first_current_is_the_hybrids_over_its_scale():
    net, ckpt = hybrid()
    out = convert.convert(ckpt, FRAMES, 99.0, 25, "tiny.pt")
    stage = out["lineage"][-1]
    acts, h = [], models._to_float(FRAMES)
    with torch.no_grad():
        for m in net.encoder:
            h = m(h)
            if isinstance(m, torch.nn.ReLU):
                acts.append(h)
    assert stage["conversion"]["scales"] == pytest.approx([float(torch.quantile(a.flatten(), 0.99)) for a in acts])
    _, full = agents.build_network(out, "cpu")
    x = models._to_float(FRAMES)
    with torch.no_grad():
        assert torch.allclose(full.layers[0](x), net.encoder[0](x) / stage["conversion"]["scales"][0], atol=1e-5)
    assert [float(lif.beta) for lif in full.lifs] == pytest.approx([1.0, 1.0, 1.0, 0.95, 0.95])  # IF convolutions, the rest kept
    assert out["config"]["snn_mode"] == "full" and "evaluation" not in out


def test_the_converted_network_approaches_the_hybrid_as_its_time_steps_grow():
    errors, rates = {}, {}
    frames = FRAMES[:16]
    for steps in (10, 200):
        net, ckpt = hybrid(steps)
        _, full = agents.build_network(convert.convert(ckpt, frames, 100.0, steps, "tiny.pt"), "cpu")
        net.record_firing = full.record_firing = True
        with torch.no_grad():
            q_hybrid, q_full = net(frames), full(frames)
        errors[steps] = float((q_full - q_hybrid).abs().mean() / (q_hybrid - q_hybrid.mean()).abs().mean())
        rates[steps] = float(full.firing_rates["spike3"]) - float(net.firing_rates["spike0"])
    # rate coding: the spike counts approximate the activations better the longer they are counted
    assert errors[200] < 0.1 and errors[200] < errors[10] / 4
    assert abs(rates[200]) < 0.005 < abs(rates[10])  # the hidden layer fires as in the hybrid


def test_auto_keeps_the_percentile_whose_network_keeps_most_of_the_hybrids_actions(monkeypatch):
    _, ckpt = hybrid()
    monkeypatch.setattr(convert, "PERCENTILES", (90.0, 99.0, 100.0))
    lines = []
    made = convert.convert_best(ckpt, FRAMES[:32], 25, "tiny.pt", log=lines.append)
    shares = {q: convert.agreement(ckpt, convert.convert(ckpt, FRAMES[:32], q, 25, "tiny.pt"), FRAMES[:32])
              for q in convert.PERCENTILES}
    assert made["lineage"][-1]["conversion"]["percentile"] == max(shares, key=shares.get)
    assert made["lineage"][-1]["conversion"]["agreement"] == max(shares.values())
    assert len(lines) == 3 and all("of the calibration frames" in ln for ln in lines)


def test_the_cli_writes_an_agent_file_with_its_lineage_and_refuses_what_it_cannot_convert(tmp_path, capsys):
    _, ckpt = hybrid()
    source = tmp_path / "hybrid.pt"
    checkpoints.write_best(source, ckpt, None)
    out = tmp_path / "full.pt"
    r = subprocess.run([sys.executable, str(REPO / "convert.py"), str(source), "--out", str(out), "--calibration-steps",
                        "30", "--time-steps", "8"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "calibration: 30 greedy decisions" in r.stdout and f"written: {out} (snn_mode full, T = 8" in r.stdout
    assert r.stdout.count("of the calibration frames") == len(convert.PERCENTILES)  # auto, the default
    made = checkpoints.read(out)
    cfg, full = agents.build_network(made, "cpu", out)
    assert cfg.snn_mode == "full" and cfg.snn_tSteps == 8
    stages = checkpoints.lineage(made)
    assert stages[:-1] == checkpoints.lineage(ckpt) and stages[-1]["conversion"]["calibration_decisions"] == 30
    assert checkpoints.lineage_total(stages)["frames"] == checkpoints.lineage_total(checkpoints.lineage(ckpt))["frames"]
    assert models.greedy_action(full, FRAMES[0].numpy()) in range(5)

    ann = tmp_path / "ann.pt"
    _, ann_ckpt = hybrid(architecture="ann")
    checkpoints.write_best(ann, ann_ckpt, None)
    for args, message in (([str(ann)], "is not a hybrid spiking agent"),
                          ([str(source), "--percentile", "10"], "--percentile must be between 50 and 100"),
                          ([str(source), "--percentile", "most"], "--percentile must be a number or auto"),
                          ([str(source), "--out", str(tmp_path)], "is a folder"),
                          ([str(tmp_path / "none.pt")], "none.pt")):
        argv = args if "--out" in args else [*args, "--out", str(tmp_path / "x.pt")]
        assert convert.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line
    assert not (tmp_path / "x.pt").exists()
