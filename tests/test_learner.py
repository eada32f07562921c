"""learner.py: the Double-DQN target on a hand-computed batch, and the update built on it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import learner
from config import load_config
from replay import Batch


def test_double_dqn_target_by_hand():
    # three samples; the second ended its episode (no bootstrap); the third tells DDQN from DQN and from swapped roles
    rewards = torch.tensor([1.0, 0.5, -1.0])
    discounts = torch.tensor([0.9, 0.9, 0.81])  # the third an n-step sample: gamma**2
    not_done = torch.tensor([1.0, 0.0, 1.0])
    next_q_online = torch.tensor([[1.0, 5.0], [3.0, 2.0], [4.0, 1.0]])  # the online network picks 1, 0, 0
    next_q_target = torch.tensor([[10.0, 20.0], [30.0, 40.0], [2.0, 7.0]])  # ... and the target network values them
    target = learner.double_dqn_target(rewards, discounts, not_done, next_q_online, next_q_target)
    assert target.tolist() == pytest.approx([1 + 0.9 * 20, 0.5, -1 + 0.81 * 2])
    # the target network picking and the online network valuing (roles swapped), or DQN's max, differ
    swapped = learner.double_dqn_target(rewards, discounts, not_done, next_q_target, next_q_online)
    assert swapped[2] == pytest.approx(-1 + 0.81 * 1) and swapped[0] == pytest.approx(1 + 0.9 * 5)
    assert (-1 + 0.81 * 7) != pytest.approx(target[2].item())


def tiny_learner(**keys):
    cfg = load_config({"env_id": "CartPole-v1", "architecture": "ann", "hidden_layers": [8], "grad_clip": 0.0, **keys})
    torch.manual_seed(0)
    lrn = learner.Learner(cfg, (4,), 2, torch.device("cpu"))
    with torch.no_grad():  # a target network unlike the online one, as between two target updates
        for p in lrn.target_network.parameters():
            p.add_(torch.randn_like(p))
    return lrn


def batch_of(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return Batch(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n), rng.normal(size=(n, 4)).astype(
        np.float32), rng.normal(size=n).astype(np.float32), (rng.random(n) < 0.2).astype(np.float32),
        np.ones(n, np.float32), np.arange(n), np.full(n, 0.99, np.float32))


def test_the_update_bootstraps_from_the_online_networks_choice_valued_by_the_target_network():
    lrn, b = tiny_learner(), batch_of()
    online, target_net = lrn.q_network, lrn.target_network
    with torch.no_grad():
        s2 = torch.as_tensor(b.next_observations)
        picked = online(s2).argmax(1, keepdim=True)
        expected_target = (torch.as_tensor(b.rewards) + 0.99 * (1 - torch.as_tensor(b.terminateds))
                           * target_net(s2).gather(1, picked).squeeze(1))
        q = online(torch.as_tensor(b.observations)).gather(1, torch.as_tensor(b.actions)[:, None]).squeeze(1)
        expected_loss = F.smooth_l1_loss(q, expected_target)
    before = [p.clone() for p in online.parameters()]
    losses = lrn.update(b)
    assert losses.td.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert torch.allclose(losses.td_errors, expected_target - q, atol=1e-6)
    assert any(not torch.equal(a, p) for a, p in zip(before, online.parameters()))  # a step was taken
    assert all(not p.requires_grad for p in target_net.parameters())


def test_a_remote_target_pass_gives_the_same_step():
    b = batch_of()
    here, there = tiny_learner(), tiny_learner()
    with torch.no_grad():
        answer = there.target_network(torch.as_tensor(b.next_observations))
    asked = []
    losses_here = here.update(b)
    losses_there = there.update(b, remote_target_q=lambda: asked.append(1) or answer)
    assert asked == [1] and torch.equal(losses_here.td, losses_there.td)
    assert all(torch.equal(p, q) for p, q in zip(here.q_network.parameters(), there.q_network.parameters()))


def test_target_update_hard_and_soft():
    lrn = tiny_learner()
    lrn.update_target()
    assert all(torch.equal(t, o) for t, o in zip(lrn.target_network.parameters(), lrn.q_network.parameters()))
    soft = tiny_learner(target_tau=0.25)
    old = [t.clone() for t in soft.target_network.parameters()]
    soft.update_target()
    for t, o, q in zip(old, soft.target_network.parameters(), soft.q_network.parameters()):
        assert torch.allclose(o, t + 0.25 * (q - t))


def test_random_shift_equals_replicate_padding_and_a_crop():
    import torch.nn.functional as F

    torch.manual_seed(3)
    frames = torch.randint(0, 256, (6, 4, 12, 10), dtype=torch.uint8)
    torch.manual_seed(7)
    shifted = learner.random_shift(frames, 2)
    torch.manual_seed(7)  # the same draws, done the plain way: pad by replication, crop at the drawn offset
    shifts = torch.randint(0, 5, (6, 2)) - 2
    padded = F.pad(frames.float(), (2, 2, 2, 2), mode="replicate")
    for i, (dy, dx) in enumerate(shifts.tolist()):
        crop = padded[i, :, 2 + dy:2 + dy + 12, 2 + dx:2 + dx + 10]
        assert torch.equal(shifted[i].float(), crop)
    assert shifted.dtype == torch.uint8 and torch.equal(learner.random_shift(frames, 0), frames)


def test_an_augmented_update_shifts_what_the_networks_see():
    cfg_keys = {"architecture": "ann", "env_id": "CarRacing-v3", "hidden_layers": [8], "obs_size": 36,
                "augment_shift": 4}
    cfg = load_config(cfg_keys)
    torch.manual_seed(0)
    lrn = learner.Learner(cfg, (4, 36, 36), 5, torch.device("cpu"))
    rng = np.random.default_rng(0)
    b = Batch(rng.integers(0, 256, (8, 4, 36, 36), dtype=np.uint8), rng.integers(0, 5, 8),
              rng.integers(0, 256, (8, 4, 36, 36), dtype=np.uint8), rng.normal(size=8).astype(np.float32),
              np.zeros(8, np.float32), np.ones(8, np.float32), np.arange(8), np.full(8, 0.99, np.float32))
    plain = learner.Learner(load_config({**cfg_keys, "augment_shift": 0}), (4, 36, 36), 5, torch.device("cpu"))
    plain.load_state_dict(lrn.state_dict())
    assert not torch.equal(lrn.update(b).td, plain.update(b).td)  # other inputs, another loss
