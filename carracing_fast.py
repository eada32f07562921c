"""A pixel-identical fast CarRacing: the same observations, rewards and flags as Gymnasium's, drawn cheaply.

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

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d import car_dynamics as cd
from gymnasium.envs.box2d import car_racing as cr
from gymnasium.error import InvalidAction


pygame = cr.pygame
gfxdraw = cr.gfxdraw

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

    def __init__(self, *args, **kwargs):
        # CarRacing's arguments as CarRacing takes them: gymnasium's EzPickle replays them positionally when an
        # environment is pickled or deep-copied
        super().__init__(*args, **kwargs)
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


def register() -> str:
    """Register `FastCarRacing-v3` with Gymnasium (for `gym.make`); idempotent. Returns the id."""
    if "FastCarRacing-v3" not in gym.registry:
        gym.register(id="FastCarRacing-v3", entry_point="carracing_fast:FastCarRacing",
                     max_episode_steps=CARRACING_FRAMES, reward_threshold=900)
    return "FastCarRacing-v3"
