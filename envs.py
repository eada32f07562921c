"""Environments: a pixel-identical fast CarRacing, the preprocessing wrappers and `make_env(cfg)`.

`FastCarRacing` is Gymnasium's CarRacing with the drawing made cheap: every grass and road polygon
is transformed and culled in one numpy pass (bit-for-bit the arithmetic of pygame's
`Vector2.rotate_rad` and of the stock culling test), the survivors are drawn in stock order, the
font and the rendered score text are cached, the drawing surface is reused and the background is
filled instead of drawn when the window lies well inside the playfield. `step_repeat` repeats an
action and renders only the sub-step whose observation is returned.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.box2d import car_dynamics as cd
from gymnasium.envs.box2d import car_racing as cr
from gymnasium.error import InvalidAction

from utils import ConfigError

pygame = cr.pygame
gfxdraw = cr.gfxdraw

CARRACING_IDS = ("CarRacing-v3", "FastCarRacing-v3")
CARRACING_FRAMES = 1000  # CarRacing-v3's time limit, in physics frames

_TWO_PI = 2 * math.pi
_HALF_PI = math.pi / 2
_VECTOR_EPSILON = 1e-6


def rotation(angle: float):
    """(kind, sin, cos) reproducing pygame's `Vector2.rotate_rad(angle)` exactly.

    pygame reduces the angle with fmod into [0, 2π), treats angles within 1e-6 of a multiple of π/2
    as exact quarter turns (coordinate swaps), and otherwise uses libm's sin and cos of the reduced
    angle. `kind` is 0..3 for a quarter turn, None for a general rotation.
    """
    a = math.fmod(angle, _TWO_PI)
    if a < 0:
        a += _TWO_PI
    if math.fmod(a + _VECTOR_EPSILON, _HALF_PI) < 2 * _VECTOR_EPSILON:
        return int((a + _VECTOR_EPSILON) / _HALF_PI) % 4, 0.0, 1.0
    return None, math.sin(a), math.cos(a)


def rotate(x: np.ndarray, y: np.ndarray, rot) -> tuple[np.ndarray, np.ndarray]:
    kind, s, c = rot
    if kind is None:
        return c * x - s * y, s * x + c * y
    return ((x, y), (-y, x), (-x, -y), (y, -x))[kind]


def _grass_polygons() -> np.ndarray:
    d = cr.GRASS_DIM
    polys = [[(d * x + d, d * y + 0), (d * x + 0, d * y + 0), (d * x + 0, d * y + d), (d * x + d, d * y + d)]
             for x in range(-20, 20, 2) for y in range(-20, 20, 2)]
    return np.array(polys, dtype=np.float64)  # [400, 4, 2], the stock grass in stock order


_GRASS = _grass_polygons()
_FIELD = np.array([(cr.PLAYFIELD, cr.PLAYFIELD), (cr.PLAYFIELD, -cr.PLAYFIELD), (-cr.PLAYFIELD, -cr.PLAYFIELD),
                   (-cr.PLAYFIELD, cr.PLAYFIELD)], dtype=np.float64)
_WINDOW_CORNERS = ((0, 0), (cr.WINDOW_W, 0), (cr.WINDOW_W, cr.WINDOW_H), (0, cr.WINDOW_H))
_OFFSCREEN_MARGIN = 4.0  # px beyond the window edge that anti-aliasing and integer rounding could still touch
_HUD_ROWS = round(5 * cr.WINDOW_H / 40)  # bottom rows the HUD's black polygon paints over
_FILL_MARGIN = 4.0  # px: anti-aliased edges stay this far outside the window before the fill shortcut is used


class FastCarRacing(cr.CarRacing):
    """Gymnasium's CarRacing with identical observations, rewards, flags and info, drawn faster."""

    _font = None
    _text_cache: dict[str, object] = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._canvas = None
        self._frame = None
        self._car_parts = None
        self._road_key = None
        self._poly_pts = _GRASS
        self._poly_colors: list = []
        self.last_repeat_frames = 0

    # ------------------------------------------------------------------ drawing
    @staticmethod
    def _new_font() -> None:
        pygame.font.init()
        FastCarRacing._font = pygame.font.Font(pygame.font.get_default_font(), 42)

    def _render(self, mode: str):
        if mode == "human":
            return super()._render(mode)  # the window, the clock and the event pump stay stock
        assert mode in self.metadata["render_modes"]
        if FastCarRacing._font is None:
            self._new_font()
        if self.clock is None:
            self.clock = pygame.time.Clock()
        if "t" not in self.__dict__:
            return  # reset() not called yet
        if self._canvas is None:
            # (clipping away the rows the HUD later covers is not exact: SDL_gfx moves the end points
            # of anti-aliased lines onto the clip rectangle, which changes their pixels)
            self._canvas = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))
        self.surf = self._canvas

        assert self.car is not None
        angle = -self.car.hull.angle
        zoom = 0.1 * cr.SCALE * max(1 - self.t, 0) + cr.ZOOM * cr.SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (cr.WINDOW_W / 2 + trans[0], cr.WINDOW_H / 4 + trans[1])

        self._render_road(zoom, trans, angle)
        if mode == "state_pixels" and INLINE_CAR_DRAW:
            self._draw_car(zoom, trans, angle)
        else:  # rgb_array draws the tyre particles too
            self.car.draw(self.surf, zoom, trans, angle, mode != "state_pixels")
        self.surf = self._flipped()
        self._render_indicators(cr.WINDOW_W, cr.WINDOW_H)

        label = f"{self.reward:04.0f}"
        text = self._text_cache.get(label)
        if text is None:
            try:
                text = self._font.render(label, True, (255, 255, 255), (0, 0, 0))
            except pygame.error:
                # pygame.quit() (stock close() in human mode) followed by a new font.init() leaves
                # this font invalid: make a new one
                self._new_font()
                text = self._font.render(label, True, (255, 255, 255), (0, 0, 0))
            if len(self._text_cache) < 4096:
                self._text_cache[label] = text
        text_rect = text.get_rect()
        text_rect.center = (60, cr.WINDOW_H - cr.WINDOW_H * 2.5 / 40.0)
        self.surf.blit(text, text_rect)

        if mode == "rgb_array":
            return self._create_image_array(self.surf, (cr.VIDEO_W, cr.VIDEO_H))
        if mode == "state_pixels":
            return self._create_image_array(self.surf, (cr.STATE_W, cr.STATE_H))
        return self.isopen

    def _flipped(self):
        """The canvas flipped upside down, as `pygame.transform.flip(canvas, False, True)`, into a
        surface kept between frames. The bottom `_HUD_ROWS` rows are left as they are: the HUD's
        black polygon, drawn next, covers every one of their pixels."""
        if self._frame is None:
            self._frame = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))
        src = pygame.surfarray.pixels2d(self._canvas)  # [W, H] views: no copy
        dst = pygame.surfarray.pixels2d(self._frame)
        dst[:, :cr.WINDOW_H - _HUD_ROWS] = src[:, cr.WINDOW_H - 1:_HUD_ROWS - 1:-1]
        del src, dst  # unlock both surfaces before drawing and blitting on them
        return self._frame

    def _draw_car(self, zoom, translation, angle):
        """`Car.draw(surface, zoom, translation, angle, draw_particles=False)` with every vertex
        transformed in one numpy pass: Box2D's float32 `b2Mul(transform, v)`, then pygame's
        `rotate_rad` and the scaling in float64; the polygons are drawn in the stock order."""
        car = self.car
        if self._car_parts is None or self._car_parts[0] is not car:
            bodies, verts, owner, shapes = [], [], [], []  # shapes: (colour, vertex count, wheel index)
            for obj in car.drawlist:
                bodies.append(obj)
                wheel = "phase" in obj.__dict__
                for f in obj.fixtures:
                    vs = f.shape.vertices
                    verts.extend(vs)
                    owner.extend([len(bodies) - 1] * len(vs))
                    shapes.append(([int(c * 255) for c in obj.color], len(vs), len(bodies) - 1 if wheel else None))
            self._car_parts = (car, bodies, np.array(verts, dtype=np.float32), np.array(owner), shapes)
        _, bodies, verts, owner, shapes = self._car_parts
        qp = []
        for b in bodies:
            t = b.transform
            q, p = t.q, t.position
            qp.append((q.c, q.s, p[0], p[1]))
        # every wheel's white mark, in local coordinates (stock arithmetic, float64 then float32)
        whites, white_owner = [], []
        drawn, start = [], 0  # (colour, first vertex, vertex count) in the stock drawing order
        for color, n, w in shapes:
            drawn.append((color, start, n))
            start += n
            if w is None:
                continue
            phase = bodies[w].phase
            s1, s2 = math.sin(phase), math.sin(phase + 1.2)
            if s1 > 0 and s2 > 0:
                continue
            c1, c2 = math.cos(phase), math.cos(phase + 1.2)
            if s1 > 0:
                c1 = np.sign(c1)
            if s2 > 0:
                c2 = np.sign(c2)
            x, y1, y2 = cd.WHEEL_W * cd.SIZE, cd.WHEEL_R * c1 * cd.SIZE, cd.WHEEL_R * c2 * cd.SIZE
            drawn.append((cd.WHEEL_WHITE, len(verts) + 4 * len(whites), 4))
            whites.append(((-x, y1), (x, y1), (x, y2), (-x, y2)))
            white_owner.append(w)
        tq = np.array(qp, dtype=np.float32)
        v, own = verts, owner
        if whites:
            v = np.concatenate([verts, np.array(whites, dtype=np.float32).reshape(-1, 2)])
            own = np.concatenate([owner, np.repeat(white_owner, 4)])
        c, s_, px, py = tq[own].T
        # b2Mul in float32: ((c*x - s*y) + p.x, (s*x + c*y) + p.y), each operation rounded
        wx = (c * v[:, 0] - s_ * v[:, 1]) + px
        wy = (s_ * v[:, 0] + c * v[:, 1]) + py
        x, y = rotate(wx.astype(np.float64), wy.astype(np.float64), rotation(angle))
        points = list(zip((x * zoom + translation[0]).tolist(), (y * zoom + translation[1]).tolist()))
        for color, first, n in drawn:
            pygame.draw.polygon(self.surf, color=color, points=points[first:first + n])

    def _polygons(self):
        """World points `[N, 4, 2]` of every grass and road polygon in stock drawing order, and their
        colours (None = grass). Rebuilt when a new track is made."""
        key = (id(self.road_poly), len(self.road_poly))
        if key != self._road_key:
            road = np.array([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly],
                            dtype=np.float64).reshape(-1, 4, 2)
            self._poly_pts = np.concatenate([_GRASS, road])
            self._poly_centre = self._poly_pts.mean(axis=1)  # [N, 2]
            self._poly_radius = np.sqrt(((self._poly_pts - self._poly_centre[:, None]) ** 2).sum(-1)).max(1)
            # the colour arrays themselves: a tile's colour changes in place when the car touches it
            self._poly_colors = [None] * len(_GRASS) + [color for _, color in self.road_poly]
            self._road_key = key
        return self._poly_pts, self._poly_colors

    def _render_road(self, zoom, translation, angle):
        rot = rotation(angle)
        tx, ty = translation
        W, H = cr.WINDOW_W, cr.WINDOW_H

        field = [(x * zoom + tx, y * zoom + ty) for x, y in
                 (rotate(px, py, rot) for px, py in _FIELD.tolist())]
        # rows under the HUD are never copied into the frame (see _flipped): leave them alone
        shown = (0, _HUD_ROWS, W, H - _HUD_ROWS)
        if _window_inside(field, _FILL_MARGIN):
            self.surf.fill(self.bg_color, shown)  # what the stock polygon draws over the whole window
        else:
            self.surf.fill((0, 0, 0), shown)  # a fresh surface is black
            gfxdraw.aapolygon(self.surf, field, self.bg_color)
            gfxdraw.filled_polygon(self.surf, field, self.bg_color)

        pts, colors = self._polygons()
        # Pre-cull in world space: the window (plus the off-screen margin) lies inside a disc around
        # the camera; a polygon wholly outside that disc cannot touch a pixel (SDL_gfx clips).
        kind, sin_a, cos_a = rot
        cx, cy = W / 2 - tx, H / 2 - ty  # window centre relative to the translation, on screen
        if kind is None:  # rotate back by -angle
            wx, wy = (cos_a * cx + sin_a * cy) / zoom, (-sin_a * cx + cos_a * cy) / zoom
        else:
            wx, wy = rotate(cx, cy, ((4 - kind) % 4, 0.0, 1.0))
            wx, wy = wx / zoom, wy / zoom
        reach = (math.hypot(W / 2, H / 2) + _OFFSCREEN_MARGIN + 2.0) / zoom
        near = np.flatnonzero(np.hypot(self._poly_centre[:, 0] - wx, self._poly_centre[:, 1] - wy)
                              <= reach + self._poly_radius)
        pts = pts[near]
        x, y = rotate(pts[..., 0], pts[..., 1], rot)  # [n, 4] each
        x = x * zoom + tx
        y = y * zoom + ty
        m = cr.MAX_SHAPE_DIM
        # the stock culling test, which keeps polygons up to MAX_SHAPE_DIM (~380 px) off-screen ...
        visible = (((-m <= x) & (x <= W + m)) & ((-m <= y) & (y <= H + m))).any(axis=1)
        # ... and of those, skip the ones whose bounding box misses the window by a few pixels
        # (SDL_gfx clips to the surface, so they cannot change a pixel) or lies wholly in the rows
        # the HUD paints over
        s = _OFFSCREEN_MARGIN
        visible &= (x.max(1) >= -s) & (x.min(1) <= W + s) & (y.max(1) >= _HUD_ROWS - s) & (y.min(1) <= H + s)
        idx = np.flatnonzero(visible)
        polys = np.stack([x[idx], y[idx]], axis=-1).tolist()  # [n][4][2] Python floats
        grass = self.grass_color
        for poly, i in zip(polys, near[idx].tolist()):  # ascending: the stock drawing order
            c = colors[i]
            # stock: [int(c) for c in color]; a tile's colour is a float array, a kerb's a tuple
            color = grass if c is None else [int(v) for v in (c.tolist() if type(c) is np.ndarray else c)]
            gfxdraw.aapolygon(self.surf, poly, color)
            gfxdraw.filled_polygon(self.surf, poly, color)

    # ------------------------------------------------------------------ stepping
    def _apply_action(self, action) -> None:
        """The stock `step`'s action handling (the action was validated by step_repeat)."""
        if self.continuous:
            action = action.astype(np.float64)
            steer, gas, brake = -action[0], action[1], action[2]
        else:
            steer, gas, brake = -0.6 * (action == 1) + 0.6 * (action == 2), 0.2 * (action == 3), 0.8 * (action == 4)
        if self.continuous or not INLINE_CONTROLS:
            self.car.steer(steer)
            self.car.gas(gas)
            self.car.brake(brake)
            return
        # Car.steer, Car.gas and Car.brake inlined (np.clip of 0 or 0.2 to [0, 1] is a no-op)
        wheels = self.car.wheels
        wheels[0].steer = steer
        wheels[1].steer = steer
        for w in wheels[2:4]:
            diff = gas - w.gas
            if diff > 0.1:
                diff = 0.1  # gradually increase, but stop immediately
            w.gas += diff
        for w in wheels:
            w.brake = brake

    def step_repeat(self, action, repeat: int):
        """`repeat` stock steps with the same action, rendering only the observation returned.

        Returns (obs, summed reward, terminated, truncated, info of the last sub-step), equal to
        calling `step` up to `repeat` times and stopping at termination. The observation is drawn
        after the physics of the sub-step it belongs to and before its -0.1 penalty, as stock
        `step` draws it (the score digits depend on that order).
        """
        assert self.car is not None
        if (not self.continuous and not (type(action) is int and 0 <= action < self.action_space.n)
                and not self.action_space.contains(action)):
            raise InvalidAction(f"you passed the invalid action `{action}`. "
                                f"The supported action_space is `{self.action_space}`")
        total = 0.0
        terminated = False
        info: dict = {}
        frames = 0
        for i in range(repeat):
            self._apply_action(action)
            self.car.step(1.0 / cr.FPS)
            self.world.Step(1.0 / cr.FPS, 6 * 30, 2 * 30)
            self.t += 1.0 / cr.FPS
            frames += 1
            x, y = self.car.hull.position
            ends = (self.tile_visited_count == len(self.track) or self.new_lap
                    or abs(x) > cr.PLAYFIELD or abs(y) > cr.PLAYFIELD)
            if ends or i == repeat - 1:
                self.state = self._render("state_pixels")

            step_reward = 0
            info = {}
            self.reward -= 0.1
            self.car.fuel_spent = 0.0
            step_reward = self.reward - self.prev_reward
            self.prev_reward = self.reward
            if self.tile_visited_count == len(self.track) or self.new_lap:
                terminated = True
                info["lap_finished"] = True
            if abs(x) > cr.PLAYFIELD or abs(y) > cr.PLAYFIELD:
                terminated = True
                info["lap_finished"] = False
                step_reward = -100
            if self.render_mode == "human":
                self.render()
            total += step_reward
            if terminated:
                break
        self.last_repeat_frames = frames
        return self.state, total, terminated, False, info


def _window_inside(poly: list[tuple[float, float]], margin: float) -> bool:
    """True when every window corner lies inside the convex polygon by at least `margin` px."""
    area2 = 0.0
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        area2 += x0 * y1 - x1 * y0
    orient = 1.0 if area2 > 0 else -1.0
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        ex, ey = x1 - x0, y1 - y0
        length = math.hypot(ex, ey)
        if length == 0:
            return False
        for cx, cy in _WINDOW_CORNERS:
            if orient * (ex * (cy - y0) - ey * (cx - x0)) / length <= margin:
                return False
    return True


def _stock_is(func, digest: str) -> bool:
    """True when `func`'s source is the one an inlined copy reproduces (its SHA-256 prefix): with
    another Gymnasium version FastCarRacing calls the stock code instead."""
    try:
        return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16] == digest
    except (OSError, TypeError):
        return False


# gymnasium 1.x's car_dynamics, as FastCarRacing's inlined copies were made from
INLINE_CONTROLS = all(_stock_is(getattr(cd.Car, name), digest) for name, digest in
                      (("gas", "873c8186d5211e83"), ("steer", "2b723d9d7b0c2080"), ("brake", "5d2fcdf579b34159")))
INLINE_CAR_DRAW = _stock_is(cd.Car.draw, "c83f372eedd2fd25")


gym.register(id="FastCarRacing-v3", entry_point="envs:FastCarRacing", max_episode_steps=CARRACING_FRAMES,
             reward_threshold=900)


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
    pipeline; vector observations pass through as float32. Lenient termination when configured.
    """
    if is_carracing(cfg.env_id):
        env: gym.Env = FastCarRacing(continuous=False, render_mode=render_mode)
        env = FrameSkip(env, cfg.frame_skip, max_frames=CARRACING_FRAMES)
    else:
        try:
            env = gym.make(cfg.env_id, render_mode=render_mode)
        except gym.error.Error as e:
            raise ConfigError(f"config key 'env_id': {cfg.env_id!r} cannot be made by Gymnasium "
                              f"({str(e).splitlines()[0]})") from None
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


def record_gif(cfg, policy, path, seed: int = 0, fps: int = 20, max_steps: int = 2_000) -> tuple[float, int]:
    """Play one episode with `policy(env) -> act(obs)` and save it as an animated GIF: the agent's
    view (its newest preprocessed frame) beside the full-resolution render. Returns (return, steps)."""
    from PIL import Image

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
        if view.ndim >= 2:
            agent = Image.fromarray(view.astype(np.uint8)).convert("RGB").resize((h, h), Image.NEAREST)
            canvas = Image.new("RGB", (h + full_img.width, h))
            canvas.paste(agent, (0, 0))
            canvas.paste(full_img, (h, 0))
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
