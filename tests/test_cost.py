"""cost.py: the arithmetic of a decision against a count by hand."""
import pytest
import torch

import cost
import models
from config import load_config


def net_of(**keys):
    cfg = load_config({"env_id": "CartPole-v1", "hidden_layers": [3], "snn_tSteps": 5, **keys})
    return models.build_q_network(cfg, (4,), 2)


def test_an_ann_decision_is_its_dense_macs():
    rows = cost.layer_costs(net_of(architecture="ann"), (4,))
    assert [(r.kind, r.input, r.macs, r.acs) for r in rows] == [("linear", "real", 12, 0), ("linear", "real", 6, 0)]
    total = cost.decision_cost(net_of(architecture="ann"), (4,))
    assert total["macs"] == 18 and total["acs"] == 0 and total["firing_rate"] is None
    assert total["energy_uj"] == pytest.approx(18 * 4.6e-6)


def test_a_spiking_decision_by_hand():
    # 4 -> 3 spiking -> 2 output integrators, T = 5, the hidden layer firing at 0.4:
    # layer 0: its real input's current once (4*3 = 12 MACs) + 3 neurons x 5 steps of membrane updates (15)
    # layer 1: 0.4 x (3*2 = 6) x 5 = 12 ACs from the spikes + 2 neurons x 5 steps (10 MACs)
    total = cost.decision_cost(net_of(architecture="snn"), (4,), {"spike0": 0.4})
    assert total["macs"] == 12 + 15 + 10 and total["acs"] == pytest.approx(12)
    assert total["firing_rate"] == pytest.approx(0.4)
    assert total["energy_uj"] == pytest.approx((4.6 * 37 + 0.9 * 12) / 1e6)


def test_the_convolutions_of_the_nature_encoder_by_hand():
    cfg = load_config({"hidden_layers": [8], "snn_tSteps": 2, "architecture": "snn"})
    rows = cost.layer_costs(models.build_q_network(cfg, (4, 84, 84), 5), (4, 84, 84), {"spike0": 0.5})
    convs = [r.dense_macs for r in rows if r.kind == "conv"]
    # 32 maps of 20x20 from 4x8x8 windows; 64 of 9x9 from 32x4x4; 64 of 7x7 from 64x3x3
    assert convs == [32 * 20 * 20 * 4 * 64, 64 * 9 * 9 * 32 * 16, 64 * 7 * 7 * 64 * 9]
    first, out = rows[3], rows[4]  # 3136 -> 8 spiking, 8 -> 5 integrators
    assert first.macs == 3136 * 8 + 8 * 2 and out.acs == pytest.approx(0.5 * 8 * 5 * 2) and out.macs == 5 * 2


def test_the_table_reports_the_cost_of_a_spiking_agents_decisions(tmp_path, capsys):
    import evaluate

    net = net_of(architecture="snn")
    agent = evaluate.Agent("snn", load_config({"env_id": "CartPole-v1", "architecture": "snn"}),
                           lambda env: (lambda obs: int(net(torch.as_tensor(obs)[None]).argmax(1))), net=net)
    row = evaluate.evaluate_agent(agent, 2, 0, lenient=False)
    rate = row["cost"]["firing_rate"]
    assert 0 <= rate <= 1 and row["cost"]["acs"] == pytest.approx(rate * 6 * 5)  # one spiking layer
    table = evaluate.markdown_table([row])
    assert "| MACs / decision | ACs / decision | firing rate | energy / decision (µJ, est.) |" in table
    assert f"| {rate:.3f} |" in table
