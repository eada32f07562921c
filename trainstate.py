"""A run's progress in one object: the counters and the history a checkpoint carries besides the networks,
the optimiser, the random states, the environments and the replay.

`state_dict()` gives the checkpoint's `counters` and `history` sections as they have always been named, so
checkpoints of earlier versions load (a field they predate starts at its initial value).
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque

import numpy as np
import torch

COUNTERS = ("global_step", "episode", "updates", "update_credit", "epsilon", "learning_stopped")
PER_ENV = ("episode_return", "episode_length", "episode_skipped")  # the episodes in progress


@dataclasses.dataclass(eq=False)
class TrainState:
    agents: int
    n_actions: int
    epsilon: float
    device: torch.device = torch.device("cpu")
    frames_per_step: int = 1  # environment frames an agent step plays (frame_skip, for image environments)
    global_step: int = 0  # agent steps (transitions stored) of the whole run
    episode: int = 0  # episodes finished
    updates: int = 0  # gradient steps
    update_credit: float = 0.0  # updates paid for by agent steps and not yet run (train_every)
    learning_stopped: bool = False  # stop_learning_at_win_percent reached
    last_eval: float | None = None  # mean return of the last held-out evaluation
    best_eval: float | None = None  # ... and of the best so far (best.pt)

    def __post_init__(self):
        self.recent_wins: deque = deque(maxlen=100)
        self.recent_returns: deque = deque(maxlen=100)
        self.episode_return = np.zeros(self.agents)
        self.episode_length = np.zeros(self.agents, dtype=np.int64)
        self.episode_skipped = np.zeros(self.agents, dtype=np.int64)  # tiles cut (skip_penalty)
        self.action_counts = np.zeros(self.n_actions, dtype=np.int64)
        # the losses since the last episode's end, summed on the device (no synchronisation per update)
        self.loss_sum = torch.zeros((), device=self.device)
        self.teacher_loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0

    # ------------------------------------------------------------------ what the loop asks
    def add_losses(self, td_loss: torch.Tensor, teacher_loss: torch.Tensor | None) -> None:
        self.loss_sum += td_loss.detach()
        if teacher_loss is not None:
            self.teacher_loss_sum += teacher_loss.detach()
        self.loss_count += 1

    def take_losses(self) -> tuple[float | None, float | None]:
        """The mean TD and teacher losses since the last call (None without updates); the sums restart."""
        n = self.loss_count
        means = (float(self.loss_sum) / n, float(self.teacher_loss_sum) / n) if n else (None, None)
        self.loss_sum.zero_()
        self.teacher_loss_sum.zero_()
        self.loss_count = 0
        return means

    def mean_loss(self) -> float | None:
        return float(self.loss_sum) / self.loss_count if self.loss_count else None

    def mean_return_100(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    def end_episode(self, env: int, win: bool) -> None:
        """Episode `env` ended: count it, remember its return and win, and start its counts anew."""
        self.episode += 1
        self.recent_wins.append(win)
        self.recent_returns.append(float(self.episode_return[env]))
        for name in PER_ENV:
            getattr(self, name)[env] = 0

    def win_percent(self) -> float:
        """Wins among the last 100 episodes, in percent (fewer than 100 episodes count as losses)."""
        return 100.0 * sum(self.recent_wins) / 100

    def budget_reached(self, total_steps: int, max_episodes: int) -> str | None:
        if total_steps and self.global_step >= total_steps:
            return f"total_steps {total_steps} reached"
        if max_episodes and self.episode >= max_episodes:
            return f"max_episodes {max_episodes} reached"
        return None

    def progress(self) -> dict:
        """The run's progress as status.json reports it."""
        return {"global_step": self.global_step, "frames": self.global_step * self.frames_per_step,
                "episode": self.episode,
                "learning_stopped": self.learning_stopped, "last_eval": self.last_eval, "best_eval": self.best_eval,
                "mean_return_100": round(self.mean_return_100(), 2) if self.recent_returns else None,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"counters": {k: getattr(self, k) for k in COUNTERS},
                "history": {"recent_wins": list(self.recent_wins), "recent_returns": list(self.recent_returns),
                            **{k: getattr(self, k).tolist() for k in (*PER_ENV, "action_counts")},
                            "last_eval": self.last_eval, "best_eval": self.best_eval,
                            "loss_sum": float(self.loss_sum), "teacher_loss_sum": float(self.teacher_loss_sum),
                            "loss_count": self.loss_count}}

    def load_state_dict(self, d: dict, mid_episode: bool) -> None:
        """`mid_episode`: the environments were restored where they stopped, so the episodes in progress
        keep their return and length; otherwise they start anew."""
        for k in COUNTERS:
            setattr(self, k, d["counters"][k])
        h = d["history"]
        self.recent_wins.extend(h["recent_wins"])
        self.recent_returns.extend(h["recent_returns"])
        self.action_counts[:] = h["action_counts"]
        self.last_eval, self.best_eval = h["last_eval"], h.get("best_eval")
        self.loss_sum.fill_(h["loss_sum"])
        self.teacher_loss_sum.fill_(h.get("teacher_loss_sum", 0.0))
        self.loss_count = h["loss_count"]
        if mid_episode:
            for k in PER_ENV:
                if k in h:
                    getattr(self, k)[:] = h[k]
