"""Replay: frame-deduplicated uniform and prioritized (sum-tree) replay with typed batches.

Split out of utils.py (which keeps config, storage and metrics) when that grew past one screenful
of concerns; like utils, nothing here knows about DQN.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

class Batch(NamedTuple):
    """A sampled minibatch (numpy arrays; observations keep their stored dtype)."""

    observations: Any  # [B, *obs_shape]
    actions: Any  # [B] int64
    next_observations: Any  # [B, *obs_shape]
    rewards: Any  # [B] float32
    terminateds: Any  # [B] float32: 1 where the episode really ended (no bootstrap)
    weights: Any  # [B] float32 importance-sampling weights (ones for uniform replay)
    indices: Any  # [B] int64 global slot ids, for priority updates
    discounts: Any  # [B] float32 gamma**m: the discount of the bootstrap (m rewards summed; m = 1 for 1-step)


class SumTree:
    """Binary sum-tree over `capacity` leaves with vectorised update and prefix-sum search."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 1
        while self.size < capacity:
            self.size *= 2
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    def total(self) -> float:
        return float(self.tree[1])

    def max_leaf(self) -> float:
        return float(self.tree[self.size:self.size + self.capacity].max())

    def update(self, indices, values) -> None:
        idx = np.asarray(indices, dtype=np.int64) + self.size
        self.tree[idx] = values
        idx = np.unique(idx // 2)
        while idx[0] >= 1:
            self.tree[idx] = self.tree[2 * idx] + self.tree[2 * idx + 1]
            if idx[0] == 1:
                break
            idx = np.unique(idx // 2)

    def find(self, prefix) -> "np.ndarray":
        """Leaf index for each prefix sum in [0, total)."""
        prefix = np.array(prefix, dtype=np.float64)
        idx = np.ones(len(prefix), dtype=np.int64)
        while idx[0] < self.size:
            left = 2 * idx
            go_right = prefix >= self.tree[left]
            prefix = np.where(go_right, prefix - self.tree[left], prefix)
            idx = np.where(go_right, left + 1, left)
        return np.minimum(idx - self.size, self.capacity - 1)


class ReplayBuffer:
    """Replay that stores every observation frame once.

    One circular stream per environment (`replay_size / num_envs` slots each). Slot i holds the
    newest frame of one observation and, once the agent acted from it, that transition's action,
    reward and flags. Stacked observations are rebuilt from `stack` consecutive slots; a stack never
    reaches past its episode's first frame (that frame is repeated, as the frame-stack wrapper does
    at reset). Truncated episodes bootstrap, terminated ones do not.

    Usage per environment e: `start(e, obs)` at an episode's first observation, then
    `add(e, action, reward, terminated, next_obs)` for each step.
    """

    def __init__(self, capacity: int, obs_shape, num_envs: int = 1, stack: int = 1, dtype=np.uint8,
                 prioritized: bool = False, alpha: float = 0.6, eps: float = 1e-6):
        self.num_envs = num_envs
        self.per_env = max(capacity // num_envs, stack + 2)
        self.stack = stack
        self.obs_shape = tuple(obs_shape)
        channels = self.obs_shape[0] // stack if stack > 1 else None
        self.frame_shape = (channels, *self.obs_shape[1:]) if stack > 1 else self.obs_shape
        n = num_envs * self.per_env
        self.frames = np.zeros((n, *self.frame_shape), dtype=dtype)
        self.actions = np.zeros(n, dtype=np.int64)
        self.rewards = np.zeros(n, dtype=np.float32)
        self.terminated = np.zeros(n, dtype=bool)
        self.has_next = np.zeros(n, dtype=bool)  # a transition starts at this slot
        self.first = np.zeros(n, dtype=bool)  # first observation of an episode
        self.ptr = np.zeros(num_envs, dtype=np.int64)  # next slot to write, per env
        self.count = np.zeros(num_envs, dtype=np.int64)  # slots written, capped at per_env
        self.written = np.zeros(num_envs, dtype=np.int64)  # frames ever written per env (never wraps)
        self.prioritized = prioritized
        self.alpha = alpha
        self.eps = eps
        self.tree = SumTree(n) if prioritized else None
        self.max_priority = 1.0

    @staticmethod
    def bytes_needed(capacity: int, obs_shape, stack: int, itemsize: int) -> int:
        frame = int(np.prod(obs_shape)) // max(stack, 1)
        return capacity * (frame * itemsize + 8 + 4 + 3)

    def __len__(self) -> int:
        return int(self.has_next.sum())

    def _newest_frame(self, obs):
        return obs[-self.frame_shape[0]:] if self.stack > 1 else obs

    def _write(self, env: int, obs, first: bool) -> None:
        slot = env * self.per_env + int(self.ptr[env])
        self.frames[slot] = self._newest_frame(obs)
        self.first[slot] = first
        self.has_next[slot] = False
        if self.tree is not None:
            self.tree.update([slot], [0.0])
        self.ptr[env] = (self.ptr[env] + 1) % self.per_env
        self.count[env] = min(self.count[env] + 1, self.per_env)
        self.written[env] += 1

    def start(self, env: int, obs) -> None:
        self._write(env, obs, first=True)

    def add(self, env: int, action: int, reward: float, terminated: bool, next_obs) -> None:
        last = env * self.per_env + int((self.ptr[env] - 1) % self.per_env)
        self.actions[last] = action
        self.rewards[last] = reward
        self.terminated[last] = terminated
        self.has_next[last] = True
        if self.tree is not None:
            self.tree.update([last], [self.max_priority ** self.alpha])
        self._write(env, next_obs, first=False)

    def _sampleable(self, slots):
        """Slots whose transition is complete and whose stack history is still in the buffer."""
        env, local = np.divmod(slots, self.per_env)
        age = (self.ptr[env] - 1 - local) % self.per_env  # 0 = newest
        count = self.count[env]
        ok = age + self.stack - 1 < count  # the whole stack window is still stored
        for back in range(self.stack - 1):  # or the episode starts inside the stored part of it
            prev = env * self.per_env + (local - back) % self.per_env
            ok |= self.first[prev] & (age + back < count)
        return self.has_next[slots] & ok

    def stacked(self, slots):
        """Observations [B, *obs_shape] rebuilt for the given slots."""
        slots = np.asarray(slots, dtype=np.int64)
        if self.stack == 1:
            return self.frames[slots]
        k = self.stack
        env, local = np.divmod(slots, self.per_env)
        offsets = np.arange(-(k - 1), 1)  # oldest .. newest
        window = env[:, None] * self.per_env + (local[:, None] + offsets[None, :]) % self.per_env  # [B, k]
        starts = self.first[window]
        positions = np.arange(k)[None, :]
        last_start = np.where(starts, positions, -1).max(axis=1, keepdims=True)  # [B, 1]
        # positions before the episode's first frame take that first frame
        effective = np.maximum(positions, last_start)
        source = np.take_along_axis(window, effective, axis=1)  # [B, k]
        out = self.frames[source]  # [B, k, c, H, W]
        return out.reshape(len(slots), *self.obs_shape)

    def n_step_returns(self, slots, n: int, gamma: float, reward_clip: float = 0.0):
        """For each transition slot: the discounted sum of up to `n` rewards of its episode, gamma**m
        (m rewards summed), whether the episode terminated within them, and the slot of the observation
        to bootstrap from. The sum stops early at a termination, at a truncated episode's last
        observation and at the newest stored observation (no transition starts there)."""
        slots = np.asarray(slots, dtype=np.int64)
        env, local = np.divmod(slots, self.per_env)
        ret = np.zeros(len(slots), dtype=np.float64)
        disc = np.ones(len(slots), dtype=np.float64)
        done = np.zeros(len(slots), dtype=bool)
        last = slots.copy()
        alive = np.ones(len(slots), dtype=bool)
        for k in range(n):
            cur = env * self.per_env + (local + k) % self.per_env
            nxt = env * self.per_env + (local + k + 1) % self.per_env
            r = self.rewards[cur].astype(np.float64)
            if reward_clip > 0:
                r = np.clip(r, -reward_clip, reward_clip)
            ret += np.where(alive, disc * r, 0.0)
            disc = np.where(alive, disc * gamma, disc)
            last = np.where(alive, nxt, last)
            done |= alive & self.terminated[cur]
            alive &= ~self.terminated[cur] & self.has_next[nxt]
        return ret.astype(np.float32), disc.astype(np.float32), done, last

    def sample(self, batch_size: int, rng, beta: float = 0.4, n_step: int = 1, gamma: float = 0.99,
               reward_clip: float = 0.0) -> Batch:
        """A minibatch whose rewards are what the update bootstraps from: clipped to ±reward_clip (when
        > 0) per step, summed over n steps (n_step > 1), with `discounts` holding gamma**m per sample."""
        if self.tree is None:
            n = len(self.frames)
            chosen = np.empty(0, dtype=np.int64)
            while len(chosen) < batch_size:
                cand = rng.integers(0, n, size=2 * batch_size)
                chosen = np.concatenate([chosen, cand[self._sampleable(cand)]])
            slots = chosen[:batch_size]
            weights = np.ones(batch_size, dtype=np.float32)
        else:
            total = self.tree.total()
            edges = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
            slots = self.tree.find(edges)
            bad = ~self._sampleable(slots)
            while bad.any():  # rare: a zero-priority leaf reached through float rounding
                slots[bad] = self.tree.find(rng.random(int(bad.sum())) * total)
                bad = ~self._sampleable(slots)
            probs = self.tree.tree[slots + self.tree.size] / total
            weights = (len(self) * probs) ** (-beta)
            weights = (weights / weights.max()).astype(np.float32)
        if n_step > 1:
            rewards, discounts, done, nxt = self.n_step_returns(slots, n_step, gamma, reward_clip)
            return Batch(self.stacked(slots), self.actions[slots], self.stacked(nxt), rewards,
                         done.astype(np.float32), weights, slots, discounts)
        nxt = (slots // self.per_env) * self.per_env + (slots % self.per_env + 1) % self.per_env
        rewards = self.rewards[slots]
        if reward_clip > 0:
            rewards = np.clip(rewards, -reward_clip, reward_clip)
        return Batch(self.stacked(slots), self.actions[slots], self.stacked(nxt), rewards,
                     self.terminated[slots].astype(np.float32), weights, slots,
                     np.full(batch_size, gamma, dtype=np.float32))

    def update_priorities(self, slots, td_errors) -> None:
        if self.tree is None:
            return
        prio = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.eps
        self.max_priority = max(self.max_priority, float(prio.max()))
        self.tree.update(slots, prio ** self.alpha)

    def clear(self) -> None:
        """Empty, as built."""
        for array in (self.frames, self.actions, self.rewards, self.terminated, self.has_next, self.first,
                      self.ptr, self.count, self.written):
            array[...] = 0
        if self.tree is not None:
            self.tree.tree[...] = 0
        self.max_priority = 1.0

    # ------------------------------------------------------------------ saving
    # A frame never changes once written, until the ring overwrites its slot: the frames can be saved
    # incrementally, by write index (`written` counts every frame an environment's stream received).
    def frames_since(self, marks) -> list[tuple[int, "np.ndarray"]]:
        """Per environment, (first write index, frames) of the frames written after `marks` (write
        indices, one per env) that the ring still holds, oldest first."""
        out = []
        for e in range(self.num_envs):
            end = int(self.written[e])
            start = max(int(marks[e]), end - self.per_env, 0)
            slots = e * self.per_env + np.arange(start, end) % self.per_env
            out.append((start, self.frames[slots]))
        return out

    def put_frames(self, env: int, start: int, frames) -> None:
        """Write back frames saved by `frames_since` (after `load_state_dict(..., frames=False)`); the
        ones the ring has overwritten since are skipped."""
        end = int(self.written[env])
        first = max(start, end - self.per_env)
        stop = min(start + len(frames), end)
        if stop <= first:
            return
        slots = env * self.per_env + np.arange(first, stop) % self.per_env
        self.frames[slots] = frames[first - start:stop - start]

    def state_dict(self, compress: bool = True, frames: bool = True) -> dict:
        """Everything but, with `frames=False`, the frames (saved apart with `frames_since`)."""
        import zlib

        state = {"dtype": str(self.frames.dtype), "actions": self.actions.copy(), "rewards": self.rewards.copy(),
                 "terminated": self.terminated.copy(), "has_next": self.has_next.copy(), "first": self.first.copy(),
                 "ptr": self.ptr.copy(), "count": self.count.copy(), "written": self.written.copy(),
                 "max_priority": self.max_priority, "tree": None if self.tree is None else self.tree.tree.copy(),
                 "shape": self.frames.shape}
        if frames:
            raw = self.frames.tobytes()
            state.update(frames=zlib.compress(raw, 1) if compress else raw, compressed=compress)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; without frames in it, the frames are zeroed for `put_frames`."""
        import zlib

        if tuple(state["shape"]) != self.frames.shape:
            raise ValueError(f"replay shape {tuple(state['shape'])} does not match {self.frames.shape}")
        if "frames" in state:
            raw = zlib.decompress(state["frames"]) if state["compressed"] else state["frames"]
            self.frames[...] = np.frombuffer(raw, dtype=state["dtype"]).reshape(self.frames.shape)
        else:
            self.frames[...] = 0
        for key in ("actions", "rewards", "terminated", "has_next", "first", "ptr", "count"):
            getattr(self, key)[...] = state[key]
        if "written" in state:
            self.written[...] = state["written"]
        else:  # saved by an older version: any count consistent with the ring position will do
            self.written[...] = np.where(self.count < self.per_env, self.count, self.per_env + self.ptr)
        self.max_priority = state["max_priority"]
        if self.tree is not None and state["tree"] is not None:
            self.tree.tree[...] = state["tree"]
        elif self.tree is not None:  # prioritized now, uniform before: every stored transition at max priority
            self.tree.update(np.flatnonzero(self.has_next), np.ones(int(self.has_next.sum())))
