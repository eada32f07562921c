"""The Double-DQN update: the online and target networks, Adam, and the one gradient step of a batch.

    target = r + γ^m (1 - terminated) · Q_target(s', argmax_a Q_online(s', a))
    loss   = mean(w · Huber(Q_online(s, a), target))  [+ teacher_weight · the teacher's loss]

The replay hands over rewards already clipped and summed (n-step) with the discount γ^m of each sample
(replay.Batch), so the update is the same whatever `n_step` and `reward_clip` say.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

import models


def double_dqn_target(rewards: torch.Tensor, discounts: torch.Tensor, not_done: torch.Tensor,
                      next_q_online: torch.Tensor, next_q_target: torch.Tensor) -> torch.Tensor:
    """Double DQN's bootstrap target `[B]`: the online network picks the action at s' (`next_q_online`
    `[B, A]`), the target network evaluates it (`next_q_target` `[B, A]`)."""
    next_actions = next_q_online.argmax(1, keepdim=True)
    return rewards + discounts * not_done * next_q_target.gather(1, next_actions).squeeze(1)


def teacher_loss(q_all: torch.Tensor, teacher_q: torch.Tensor) -> torch.Tensor:
    """Kickstarting: Huber between the two networks' Q-values each minus its mean over the actions — the
    policy and the gaps between actions, not the teacher's level of Q, which another reward setting or
    network puts elsewhere (a pull on the level wrecks the TD fit)."""
    return F.smooth_l1_loss(q_all - q_all.mean(1, keepdim=True), teacher_q - teacher_q.mean(1, keepdim=True))


def random_shift(frames: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ's augmentation (Kostrikov et al. 2020): each image of `frames` [B, C, H, W] shifted by up to `pad`
    pixels each way, its edge pixels repeated — padding by replication and a random crop back to H x W, done
    as one gather, in the frames' own dtype (uint8 stays uint8)."""
    b, c, h, w = frames.shape
    dev = frames.device
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), device=dev) - pad
    rows = (torch.arange(h, device=dev)[None, :] + shifts[:, :1]).clamp(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=dev)[None, :] + shifts[:, 1:]).clamp(0, w - 1)  # [B, W]
    return frames[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class Losses(NamedTuple):
    td: torch.Tensor  # the weighted Huber loss of the TD error (a scalar on the device)
    teacher: torch.Tensor | None  # the teacher's loss, when a teacher pulled
    td_errors: torch.Tensor  # [B] target - Q, detached (prioritized replay's new priorities)
    grad_norm: torch.Tensor | None  # before clipping (grad_clip > 0)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch has the kernel for the parameters' device (one pass over the parameters
    per step instead of one per operation; the same arithmetic up to float rounding, tested)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


class Learner:
    """The online network, its target copy and Adam; `update` runs one Double-DQN step on a batch."""

    def __init__(self, cfg, obs_shape: tuple, n_actions: int, device: torch.device, teacher=None):
        self.cfg, self.device, self.teacher = cfg, device, teacher
        self.q_network = models.build_q_network(cfg, obs_shape, n_actions).to(device)
        self.target_network = models.build_q_network(cfg, obs_shape, n_actions).to(device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)
        self.optimizer = make_adam(self.q_network.parameters(), cfg.learning_rate)

    def update(self, batch, remote_target_q: Callable[[], torch.Tensor] | None = None,
               teacher_weight: float = 0.0) -> Losses:
        """One gradient step on `batch` (replay.Batch). `remote_target_q`: where someone else runs the target
        network's pass over the batch's s' (the actor's worker, on the same weights), a call that waits for
        its answer `[B, A]`, made once this step's own forward passes are done; None runs the pass here."""
        cfg, dev = self.cfg, self.device
        obs = torch.as_tensor(batch.observations, device=dev)
        next_frames = torch.as_tensor(batch.next_observations, device=dev)
        if cfg.augment_shift and obs.dim() == 4:  # s and s' shifted apart, as DrQ does
            obs, next_frames = random_shift(obs, cfg.augment_shift), random_shift(next_frames, cfg.augment_shift)
        actions = torch.as_tensor(batch.actions, device=dev)
        with torch.no_grad():
            # converted once for both networks
            next_obs = models.network_input(self.q_network, next_frames)
            next_q_online = self.q_network(next_obs)
            next_q_target = self.target_network(next_obs) if remote_target_q is None else None
        q_all = self.q_network(obs)
        q = q_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            if next_q_target is None:
                next_q_target = remote_target_q()
            target = double_dqn_target(torch.as_tensor(batch.rewards, device=dev),
                                       torch.as_tensor(batch.discounts, device=dev),
                                       1.0 - torch.as_tensor(batch.terminateds, device=dev), next_q_online,
                                       next_q_target)
        weights = torch.as_tensor(batch.weights, device=dev)
        td = loss = (weights * F.smooth_l1_loss(q, target, reduction="none")).mean()
        pull = None
        if teacher_weight > 0:
            with torch.no_grad():
                teacher_q = self.teacher(obs)
            pull = teacher_loss(q_all, teacher_q)
            loss = td + teacher_weight * pull
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.q_network.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return Losses(td, pull, (target - q).detach(), grad_norm)

    def update_target(self) -> None:
        """Copy the online network into the target (target_tau 1), or move it by `target_tau` (Polyak)."""
        tau = self.cfg.target_tau
        if tau >= 1.0:
            self.target_network.load_state_dict(self.q_network.state_dict())
            return
        with torch.no_grad():
            for t, o in zip(self.target_network.parameters(), self.q_network.parameters()):
                t.lerp_(o, tau)

    def start_from(self, weights: dict) -> None:
        """Both networks from trained weights (init_weights)."""
        for net in (self.q_network, self.target_network):
            net.load_state_dict(weights)

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"q_network": self.q_network.state_dict(), "target_network": self.target_network.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.q_network.load_state_dict(d["q_network"])
        self.target_network.load_state_dict(d["target_network"])
        # this machine's Adam kernel (fused or not: a checkpoint of another version or machine may differ) and
        # the config's learning rate apply; set before loading, so the step counters land where the kernel wants
        state = dict(d["optimizer"])
        state["param_groups"] = [{**saved, "lr": self.cfg.learning_rate, "fused": own.get("fused"),
                                  "foreach": own.get("foreach")}
                                 for saved, own in zip(state["param_groups"], self.optimizer.param_groups)]
        self.optimizer.load_state_dict(state)
        if self.cfg.architecture == "snn":  # a changed snn_beta applies (beta is a buffer of each layer)
            for net in (self.q_network, self.target_network):
                for lif in net.lifs:
                    lif.beta.fill_(self.cfg.snn_beta)
