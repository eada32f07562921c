"""Environments: the preprocessing wrappers, `make_env(cfg)` and vector envs (the fast CarRacing is in carracing_fast).

`make_env(cfg)` builds what training uses: for CarRacing, `carracing_fast.FastCarRacing` with frame skip
and render elision, crop/grayscale/resize, frame stack and lenient termination. Any other Gymnasium id
with a discrete action space works too.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from carracing_fast import CARRACING_FRAMES, FastCarRacing  # noqa: F401  (envs.FastCarRacing is a public name)
from config import CARRACING_IDS, ConfigError  # noqa: F401  (envs.CARRACING_IDS is a public name)


# ---------------------------------------------------------------------------- wrappers
class FrameSkip(gym.Wrapper):
    """Repeat each action `skip` frames, summing rewards; ends the episode (truncated) after
    `max_frames` frames when given. Uses the environment's `step_repeat` when it has one."""

    def __init__(self, env: gym.Env, skip: int, max_frames: int | None = None):
        super().__init__(env)
        self.skip = skip
        self.max_frames = max_frames
        self.frames = 0
        self._fast = hasattr(env.unwrapped, "step_repeat")

    def reset(self, **kwargs):
        self.frames = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        repeat = self.skip if self.max_frames is None else min(self.skip, self.max_frames - self.frames)
        if self._fast:
            obs, reward, terminated, truncated, info = self.env.unwrapped.step_repeat(action, repeat)
            self.frames += self.env.unwrapped.last_repeat_frames
        else:
            reward = 0.0
            for _ in range(repeat):
                obs, r, terminated, truncated, info = self.env.step(action)
                reward += r
                self.frames += 1
                if terminated or truncated:
                    break
        if self.max_frames is not None and self.frames >= self.max_frames:
            truncated = True
        return obs, reward, terminated, truncated, info


class Preprocess(gym.ObservationWrapper):
    """Crop [top, bottom, left, right] pixels, optionally grayscale, resize to size x size; uint8,
    channel-first `[C, size, size]` (C = 1 gray, 3 colour)."""

    def __init__(self, env: gym.Env, size: int, grayscale: bool, crop=(0, 0, 0, 0)):
        super().__init__(env)
        h, w = env.observation_space.shape[:2]
        top, bottom, left, right = crop
        if top + bottom >= h or left + right >= w:
            raise ConfigError(f"config key 'obs_crop' {list(crop)} removes the whole {h}x{w} frame")
        self.crop = (top, h - bottom, left, w - right)
        self.size = size
        self.grayscale = grayscale
        channels = 1 if grayscale else 3
        self.observation_space = spaces.Box(0, 255, (channels, size, size), np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        from PIL import Image

        t, b, l, r = self.crop
        frame = obs[t:b, l:r]
        img = Image.fromarray(frame)
        if self.grayscale:
            img = img.convert("L")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if self.grayscale else np.ascontiguousarray(arr.transpose(2, 0, 1))


class FrameStack(gym.Wrapper):
    """Stack the last k frames along the channel axis without copying the stack each step.

    Frames live twice in a 2k ring (slot i and i+k), so the newest k are always one contiguous
    slice. The observation returned is a view, valid until the next step or reset: copy it to keep it.
    """

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        self.k = k
        c, h, w = env.observation_space.shape
        self._ring = np.zeros((2 * k, c, h, w), dtype=np.uint8)
        self._i = 0
        self.observation_space = spaces.Box(0, 255, (k * c, h, w), np.uint8)

    def _push(self, frame: np.ndarray) -> np.ndarray:
        self._ring[self._i] = frame
        self._ring[self._i + self.k] = frame
        self._i = (self._i + 1) % self.k
        return self._ring[self._i:self._i + self.k].reshape(self.observation_space.shape)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._ring[:] = obs  # no stack crosses a reset: the first frame fills it
        self._i = 0
        return self._ring[0:self.k].reshape(self.observation_space.shape), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._push(obs), reward, terminated, truncated, info


class LenientTermination(gym.Wrapper):
    """End the episode (truncated, so it bootstraps) after `patience` agent steps in a row without
    a positive reward; `info["lenient_termination"]` says so."""

    def __init__(self, env: gym.Env, patience: int):
        super().__init__(env)
        self.patience = patience
        self.idle = 0

    def reset(self, **kwargs):
        self.idle = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.idle = 0 if reward > 0 else self.idle + 1
        if self.idle >= self.patience and not (terminated or truncated):
            truncated = True
            info = {**info, "lenient_termination": True}
        return obs, reward, terminated, truncated, info


class SkipPenalty(gym.Wrapper):
    """CarRacing training aid: `penalty` off the reward for every track tile the car passes without
    touching it. Only a lap with every tile ends early (the start tile is touched at the first frame,
    so stock's 95% rule never fires), so one cut corner costs the tile and the rest of the 1000 frames
    at -0.1 each; with gamma 0.99 the agent barely sees the second part. The car's progress is the
    newest tile touched up to `window` tiles ahead (backwards driving and long jumps are not cuts); the
    untouched tiles it jumps over are the skipped ones. `info["skipped_tiles"]` counts them."""

    def __init__(self, env: gym.Env, penalty: float, window: int = 30):
        super().__init__(env)
        self.penalty, self.window = float(penalty), window
        self.front, self.seen = 0, np.zeros(0, bool)

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.seen = self._visited()
        self.front = 0
        self._advance(np.flatnonzero(self.seen))
        return out

    def _visited(self) -> np.ndarray:
        return np.array([tile.road_visited for tile in self.env.unwrapped.road], bool)

    def _advance(self, new: np.ndarray) -> int:
        """Move the progress mark over the newly touched tiles (in track order from the mark); return
        how many untouched tiles it jumped."""
        n, start, skipped = len(self.seen), self.front, 0
        for dist in sorted((int(i) - start) % n for i in new):
            ahead = dist - (self.front - start) % n
            if 0 < ahead <= self.window:
                between = (self.front + np.arange(1, ahead)) % n
                skipped += int((~self.seen[between]).sum())
                self.front = (self.front + ahead) % n
        return skipped

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.env.unwrapped.tile_visited_count != self.seen.sum():  # tiles touched since the last look
            visited = self._visited()
            new = np.flatnonzero(visited & ~self.seen)
            self.seen = visited
            skipped = self._advance(new)
            if skipped:
                reward -= self.penalty * skipped
                info = {**info, "skipped_tiles": skipped}
        return obs, reward, terminated, truncated, info


class FloatObservation(gym.ObservationWrapper):
    """Vector observations as float32 (the dtype the networks take)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32),
                                            space.shape, np.float32)

    def observation(self, obs):
        return np.asarray(obs, dtype=np.float32)


# ---------------------------------------------------------------------------- factories
def is_carracing(env_id: str) -> bool:
    return env_id in CARRACING_IDS


def make_env(cfg, render_mode: str | None = None) -> gym.Env:
    """The fully wrapped environment training uses.

    CarRacing: FastCarRacing (discrete actions) → frame skip with render elision and the 1000-frame
    time limit → crop/grayscale/resize → frame stack. Other image environments get the same
    pipeline; vector observations pass through as float32. The training aids (lenient termination,
    CarRacing's skip penalty) when configured: `cfg.for_evaluation()` turns them off.
    """
    if is_carracing(cfg.env_id):
        env: gym.Env = FastCarRacing(continuous=False, render_mode=render_mode)
        env = FrameSkip(env, cfg.frame_skip, max_frames=CARRACING_FRAMES)
    else:
        try:
            env = gym.make(cfg.env_id, render_mode=render_mode)
        except Exception as e:  # unknown id, a module that does not import, a missing dependency
            detail = (str(e).splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"config key 'env_id': {cfg.env_id!r} cannot be made by Gymnasium "
                              f"({type(e).__name__}: {detail}); use a registered id such as CarRacing-v3") from None
        if not isinstance(env.action_space, spaces.Discrete):
            env.close()
            raise ConfigError(f"config key 'env_id': {cfg.env_id} has a {type(env.action_space).__name__} action "
                              "space; DQN needs a discrete one")
    shape = env.observation_space.shape
    if shape is not None and len(shape) == 3:
        if not is_carracing(cfg.env_id) and cfg.frame_skip > 1:
            env = FrameSkip(env, cfg.frame_skip)
        env = Preprocess(env, cfg.obs_size, cfg.obs_grayscale, cfg.obs_crop)
        env = FrameStack(env, cfg.frame_stack)
    elif shape is not None and len(shape) == 1:
        env = FloatObservation(env)
    else:
        raise ConfigError(f"config key 'env_id': {cfg.env_id} observations of shape {shape} are neither images "
                          "nor vectors")
    if cfg.lenient_termination:
        env = LenientTermination(env, cfg.lenient_termination)
    if cfg.skip_penalty and is_carracing(cfg.env_id):
        env = SkipPenalty(env, cfg.skip_penalty)
    return env


def make_vector_env(cfg) -> gym.vector.VectorEnv:
    """`agents` copies of `make_env(cfg)` stepped in lockstep: in this process for one agent, in
    worker processes for more. Gymnasium 1.x autoreset (next step): the step after an episode
    ended returns that environment's reset observation, with reward 0 — not a real transition."""
    fns = [partial(make_env, cfg) for _ in range(cfg.agents)]
    if cfg.agents == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    return gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


# ---------------------------------------------------------------------------- state and episodes
_SKIP_KEYS = {"env", "_env", "spec", "_cached_spec", "metadata", "_metadata"}


def _layers(env: gym.Env):
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


def snapshot_vector_env(vec) -> bytes | None:
    """The full state of an in-process vector env (every wrapper and the base env), pickled, for
    an exact resume mid-episode; None when it cannot be captured (Box2D worlds, worker processes)."""
    import pickle

    if not isinstance(vec, gym.vector.SyncVectorEnv):
        return None
    try:
        chains = [[{k: v for k, v in layer.__dict__.items() if k not in _SKIP_KEYS} for layer in _layers(env)]
                  for env in vec.envs]
        own = {k: v for k, v in vec.__dict__.items() if k not in _SKIP_KEYS | {"envs", "env_fns"}}
        return pickle.dumps((chains, own))
    except Exception:  # e.g. Box2D objects cannot be pickled
        return None


def restore_vector_env(vec, blob: bytes) -> None:
    import pickle

    chains, own = pickle.loads(blob)
    for env, chain in zip(vec.envs, chains):
        for layer, state in zip(_layers(env), chain):
            layer.__dict__.update(state)
    vec.__dict__.update(own)


def play_episode(env: gym.Env, act, seed: int | None = None, record=None, max_steps: int = 100_000):
    """One episode with `act(obs) -> action`; returns (return, agent steps). `record(env, obs)` is
    called after every step (for GIFs)."""
    obs, _ = env.reset(seed=seed)
    if record:
        record(env, obs)
    total, steps = 0.0, 0
    while steps < max_steps:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += float(reward)
        steps += 1
        if record:
            record(env, obs)
        if terminated or truncated:
            break
    return total, steps


def evaluation_returns(cfg, act, seeds) -> list[float]:
    """Returns of one full episode per seed (no lenient termination), `act(obs) -> action`, in a fresh
    evaluation environment: the same episodes wherever they are played (trainer or actor process)."""
    env = make_env(cfg.for_evaluation())
    try:
        return [play_episode(env, act, seed=seed)[0] for seed in seeds]
    finally:
        env.close()


GIF_LABEL_BAND = 12  # pixels above a GIF's two halves that name them


def record_gif(cfg, policy, path, seed: int = 0, fps: int = 20, max_steps: int = 2_000) -> tuple[float, int]:
    """Play one episode with `policy(env) -> act(obs)` and save it as an animated GIF: the agent's
    view (its newest preprocessed frame) beside the full-resolution render, each named in a band above.
    Returns (return, steps)."""
    from PIL import Image, ImageDraw

    env = make_env(cfg, render_mode="rgb_array")
    frames: list = []

    def grab(env_, obs):
        view = np.asarray(obs)
        if view.ndim == 3:  # [C, H, W] stack: the newest frame (gray) or the newest 3 channels
            view = view[-1] if cfg.obs_grayscale else view[-3:].transpose(1, 2, 0)
        full = env_.render()
        if full is None:
            return
        full_img = Image.fromarray(full)
        h = full_img.height // 2
        full_img = full_img.resize((full_img.width // 2, h))
        if view.ndim >= 2:  # a band of labels above the two halves
            agent = Image.fromarray(view.astype(np.uint8)).convert("RGB").resize((h, h), Image.NEAREST)
            canvas = Image.new("RGB", (h + full_img.width, h + GIF_LABEL_BAND))
            canvas.paste(agent, (0, GIF_LABEL_BAND))
            canvas.paste(full_img, (h, GIF_LABEL_BAND))
            draw = ImageDraw.Draw(canvas)
            draw.text((2, 1), f"agent's view {view.shape[1]}x{view.shape[0]}", fill=(255, 255, 255))
            draw.text((h + 2, 1), "environment frame", fill=(255, 255, 255))
        else:
            canvas = full_img
        frames.append(canvas.convert("P", palette=Image.ADAPTIVE))

    try:
        result = play_episode(env, policy(env), seed=seed, record=grab, max_steps=max_steps)
    finally:
        env.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # GIF stores durations in centiseconds: round to them so the timing stays exact
    duration = 10 * max(1, round(100 / fps))
    frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)
    os.replace(tmp, path)
    return result
