"""envs.py: FastCarRacing is identical to stock CarRacing; frame skip, preprocessing, stacking, lenient
termination, vector-env autoreset and make_env for other environments."""
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.box2d.car_racing import PLAYFIELD, CarRacing

import carracing_fast
import envs
from config import ConfigError, load_config
from conftest import touch_tiles


# --------------------------------------------------------------------------- policies
def random_policy(seed):
    rng = np.random.default_rng(seed)
    return lambda env: int(rng.integers(5))


def track_follower(env, look=6):
    """Steer towards a track point a few tiles ahead; keep a modest speed."""
    u = env.unwrapped
    cx, cy = u.car.hull.position
    i = int(np.argmin([(t[2] - cx) ** 2 + (t[3] - cy) ** 2 for t in u.track]))
    tx, ty = u.track[(i + look) % len(u.track)][2:4]
    err = (math.atan2(ty - cy, tx - cx) - (u.car.hull.angle + math.pi / 2) + math.pi) % (2 * math.pi) - math.pi
    speed = math.hypot(*u.car.hull.linearVelocity)
    if err > 0.15:
        return 2
    if err < -0.15:
        return 1
    return 3 if speed < 35 else 0


def teleport_near_edge(env):
    """Move the car (hull and wheels together) close to the playfield's edge, facing out."""
    u = env.unwrapped
    dx = PLAYFIELD - 3 - u.car.hull.position[0]
    for body in [u.car.hull] + [w for w in u.car.wheels]:
        body.position = (body.position[0] + dx, body.position[1])
        body.angle = -math.pi / 2
    for w in u.car.wheels:
        w.angle = -math.pi / 2


def almost_complete_lap(env, missing=8):
    """Mark every tile visited except the one `missing` tiles ahead of the start (the lap then ends
    when the car reaches it: lap completion fires only when every tile is visited)."""
    u = env.unwrapped
    for tile in u.road:
        tile.road_visited = True
    u.road[missing].road_visited = False
    u.tile_visited_count = len(u.track) - 1


def rollout(env, policy, steps, setup=None, seed=0, repeat=None):
    """Observations, rewards, flags and infos of an episode; `repeat` steps the stock env k frames
    per agent step (the reference for frame skip)."""
    obs, info = env.reset(seed=seed)
    if setup:
        setup(env)
    frames = [obs.copy()]
    rest = [info]
    for _ in range(steps):
        action = policy(env)
        if repeat is None:
            obs, r, term, trunc, info = env.step(action)
        else:
            r = 0.0
            for _ in range(repeat):
                obs, ri, term, trunc, info = env.step(action)
                r += ri
                if term or trunc:
                    break
        frames.append(obs.copy())
        rest.append((r, term, trunc, info))
        if term or trunc:
            break
    return frames, rest


def assert_same(a, b):
    frames_a, rest_a = a
    frames_b, rest_b = b
    assert len(frames_a) == len(frames_b)
    for i, (x, y) in enumerate(zip(frames_a, frames_b)):
        assert np.array_equal(x, y), f"observation {i} differs"
    assert rest_a == rest_b


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_identical_to_stock_random_policy(seed):
    make = lambda cls: cls(continuous=False)
    assert_same(rollout(make(CarRacing), random_policy(seed), 120, seed=seed),
                rollout(make(envs.FastCarRacing), random_policy(seed), 120, seed=seed))


@pytest.mark.parametrize("seed", [3, 11])
def test_identical_to_stock_track_follower(seed):
    stock = rollout(CarRacing(continuous=False), track_follower, 250, seed=seed)
    fast = rollout(envs.FastCarRacing(continuous=False), track_follower, 250, seed=seed)
    assert_same(stock, fast)
    assert sum(r for r, *_ in stock[1][1:]) > 50  # it really drove along the track, over many tiles


def test_identical_driving_off_the_playfield():
    gas = lambda env: 3
    stock = rollout(CarRacing(continuous=False), gas, 200, setup=teleport_near_edge)
    fast = rollout(envs.FastCarRacing(continuous=False), gas, 200, setup=teleport_near_edge)
    assert_same(stock, fast)
    r, term, trunc, info = fast[1][-1]
    assert term and r == -100 and info == {"lap_finished": False}


def test_identical_lap_completion():
    stock = rollout(CarRacing(continuous=False), track_follower, 300, setup=almost_complete_lap)
    fast = rollout(envs.FastCarRacing(continuous=False), track_follower, 300, setup=almost_complete_lap)
    assert_same(stock, fast)
    r, term, trunc, info = fast[1][-1]
    assert term and info == {"lap_finished": True}


def test_identical_rgb_array_render():
    stock, fast = CarRacing(continuous=False, render_mode="rgb_array"), envs.FastCarRacing(
        continuous=False, render_mode="rgb_array")
    for env in (stock, fast):
        env.reset(seed=5)
        for _ in range(60):
            env.step(3)
    assert np.array_equal(stock.render(), fast.render())


def test_identical_with_domain_randomize():
    kw = dict(continuous=False, domain_randomize=True)
    assert_same(rollout(CarRacing(**kw), random_policy(2), 80, seed=2),
                rollout(envs.FastCarRacing(**kw), random_policy(2), 80, seed=2))


def numpy_int_policy(seed):
    rng = np.random.default_rng(seed)
    return lambda env: np.int64(rng.integers(5))  # what an argmax or a vector env hands over


def continuous_policy(seed):
    rng = np.random.default_rng(seed)  # gas beyond [0, 1] exercises the stock clipping
    return lambda env: np.array([rng.uniform(-1, 1), rng.uniform(-0.2, 1.2), rng.uniform(0, 0.3)])


def test_identical_with_numpy_integer_and_continuous_actions():
    assert_same(rollout(CarRacing(continuous=False), numpy_int_policy(4), 60, seed=4),
                rollout(envs.FastCarRacing(continuous=False), numpy_int_policy(4), 60, seed=4))
    assert_same(rollout(CarRacing(continuous=True), continuous_policy(6), 60, seed=6),
                rollout(envs.FastCarRacing(continuous=True), continuous_policy(6), 60, seed=6))


def test_stock_code_is_called_when_gymnasium_changed_it(monkeypatch):
    """The inlined car drawing and controls are used only while Car's source is the one they copy;
    otherwise the stock methods run, and the observations stay identical either way."""
    assert carracing_fast._stock_is(carracing_fast.cd.Car.draw, "c83f372eedd2fd25") == carracing_fast.INLINE_CAR_DRAW
    assert not carracing_fast._stock_is(carracing_fast.cd.Car.draw, "0000000000000000")
    monkeypatch.setattr(carracing_fast, "INLINE_CAR_DRAW", False)
    monkeypatch.setattr(carracing_fast, "INLINE_CONTROLS", False)
    assert_same(rollout(CarRacing(continuous=False), random_policy(8), 40, seed=8),
                rollout(envs.FastCarRacing(continuous=False), random_policy(8), 40, seed=8))


@pytest.mark.parametrize("action", [5, -1, np.int64(7), 2.0, "1"])
def test_invalid_actions_are_rejected_like_stock(action):
    fast = envs.FastCarRacing(continuous=False)
    fast.reset(seed=0)
    with pytest.raises(gym.error.InvalidAction):
        fast.step_repeat(action, 4)


def test_fast_car_drawing_equals_stock_car_draw():
    """_draw_car (one numpy pass, float32 Box2D transforms) against Car.draw, pixel for pixel, over
    states with the wheels' white marks in every phase."""
    env = envs.FastCarRacing(continuous=False)
    env.reset(seed=9)
    rng = np.random.default_rng(9)
    stock_surf, fast_surf = carracing_fast.pygame.Surface((800, 600)), carracing_fast.pygame.Surface((800, 600))
    for i in range(120):
        env.step(int(rng.integers(5)))
        angle, zoom = -env.car.hull.angle, 10 + i / 7  # a camera on the car, as _render has it
        x, y = env.car.hull.position
        shift = carracing_fast.pygame.math.Vector2(-x * zoom, -y * zoom).rotate_rad(angle)
        trans = (400 + shift[0] + i / 3, 300 + shift[1] - i / 5)
        stock_surf.fill((0, 0, 0))
        fast_surf.fill((0, 0, 0))
        env.car.draw(stock_surf, zoom, trans, angle, False)
        env.surf = fast_surf  # what _render does: draw on the surface in self.surf
        env._draw_car(zoom, trans, angle)
        stock, fast = (carracing_fast.pygame.surfarray.array2d(s) for s in (stock_surf, fast_surf))
        assert np.array_equal(stock, fast), f"car drawing differs at step {i}"
        assert (fast != 0).sum() > 100  # the car was really drawn in the window


def test_hud_covers_the_rows_the_flip_leaves_out():
    """_flipped copies every row but the bottom _HUD_ROWS: the stock HUD polygon paints all of them."""
    W, H = carracing_fast.cr.WINDOW_W, carracing_fast.cr.WINDOW_H
    surf = carracing_fast.pygame.Surface((W, H))
    surf.fill((255, 255, 255))
    carracing_fast.pygame.draw.polygon(surf, (0, 0, 0), [(W, H), (W, H - 5 * H / 40), (0, H - 5 * H / 40), (0, H)])
    black_rows = np.flatnonzero((carracing_fast.pygame.surfarray.array2d(surf) == 0).all(axis=0))
    assert black_rows.tolist() == list(range(H - carracing_fast._HUD_ROWS, H))

    env = envs.FastCarRacing(continuous=False)
    env.reset(seed=1)
    env._canvas = carracing_fast.pygame.Surface((W, H))
    pixels = np.random.default_rng(1).integers(0, 2**24, size=(W, H)).astype(np.uint32)
    carracing_fast.pygame.surfarray.blit_array(env._canvas, pixels)
    flipped = carracing_fast.pygame.transform.flip(env._canvas, False, True)
    shown = slice(0, H - carracing_fast._HUD_ROWS)
    assert np.array_equal(carracing_fast.pygame.surfarray.array2d(env._flipped())[:, shown],
                          carracing_fast.pygame.surfarray.array2d(flipped)[:, shown])


def test_rotation_reproduces_pygame_exactly():
    rng = np.random.default_rng(0)
    for i in range(3000):
        angle = float(rng.normal() * 4) if i % 2 else float(rng.integers(-9, 9)) * math.pi / 2 + float(rng.normal()) * 1e-7
        x, y = float(rng.normal() * 500), float(rng.normal() * 500)
        v = carracing_fast.pygame.math.Vector2(x, y).rotate_rad(angle)
        assert carracing_fast.rotate(x, y, carracing_fast.rotation(angle)) == (v[0], v[1])


def test_registered_with_gymnasium():
    env = gym.make(carracing_fast.register(), continuous=False)
    assert isinstance(env.unwrapped, envs.FastCarRacing)
    assert env.spec.max_episode_steps == 1000


# --------------------------------------------------------------------------- frame skip
def stock_timed():
    return gym.make("CarRacing-v3", continuous=False)  # with its 1000-frame TimeLimit


@pytest.mark.parametrize("skip", [2, 4])
def test_frame_skip_equals_stock_repeat(skip):
    fast = envs.FrameSkip(envs.FastCarRacing(continuous=False), skip, max_frames=1000)
    assert_same(rollout(stock_timed(), track_follower, 60, seed=4, repeat=skip),
                rollout(fast, track_follower, 60, seed=4))


def test_frame_skip_episode_ending_inside_a_repeat():
    # the car leaves the playfield on a frame that is not the last of its repeat
    fast = envs.FrameSkip(envs.FastCarRacing(continuous=False), 4, max_frames=1000)
    stock = rollout(stock_timed(), lambda e: 3, 100, setup=teleport_near_edge, repeat=4)
    mine = rollout(fast, lambda e: 3, 100, setup=teleport_near_edge)
    assert_same(stock, mine)
    assert fast.frames % 4 != 0  # the episode really ended mid-repeat
    assert mine[1][-1][1] is True


def test_frame_skip_lap_completion_inside_a_repeat():
    for missing in (8, 9, 10, 11):  # one of these ends mid-repeat
        fast = envs.FrameSkip(envs.FastCarRacing(continuous=False), 4, max_frames=1000)
        setup = lambda e, m=missing: almost_complete_lap(e, m)
        assert_same(rollout(stock_timed(), track_follower, 200, setup=setup, repeat=4),
                    rollout(fast, track_follower, 200, setup=setup))
        if fast.frames % 4:
            return
    pytest.fail("no construction ended inside a repeat")


def test_frame_skip_time_limit_truncates_on_the_frame():
    fast = envs.FrameSkip(envs.FastCarRacing(continuous=False), 3, max_frames=1000)
    fast.reset(seed=0)
    steps = 0
    while True:
        _, _, term, trunc, _ = fast.step(0)
        steps += 1
        if term or trunc:
            break
    assert trunc and fast.frames == 1000 and steps == 334  # 333 repeats of 3, then one frame


def test_frame_skip_generic_env_sums_rewards():
    env = envs.FrameSkip(gym.make("CartPole-v1"), 3)
    env.reset(seed=0)
    _, r, *_ = env.step(0)
    assert r == 3.0 and env.frames == 3


# --------------------------------------------------------------------------- pipeline
def test_make_env_carracing_shapes_and_stack_boundaries():
    cfg = load_config({"frame_stack": 4, "obs_size": 84, "frame_skip": 4})
    env = envs.make_env(cfg)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert env.observation_space.shape == (4, 84, 84)
    # at reset the first frame fills the whole stack: no frame from another episode
    assert all(np.array_equal(obs[0], obs[i]) for i in range(4))
    frames = [obs[-1].copy()]
    for _ in range(6):
        obs, *_ = env.step(3)
        frames.append(obs[-1].copy())
        assert np.array_equal(obs, np.stack(([frames[0]] * 4 + frames)[-4:]))
    env.reset(seed=1)
    obs, *_ = env.step(0)
    assert np.array_equal(obs[0], obs[2])  # older slots hold the new episode's first frame


def test_preprocess_crop_gray_colour():
    base = envs.FrameSkip(envs.FastCarRacing(continuous=False), 1)
    gray = envs.Preprocess(base, 42, True, (0, 12, 0, 0))
    obs, _ = gray.reset(seed=0)
    assert obs.shape == (1, 42, 42) and obs.dtype == np.uint8
    colour = envs.Preprocess(envs.FastCarRacing(continuous=False), 64, False, (0, 0, 0, 0))
    obs, _ = colour.reset(seed=0)
    assert obs.shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="obs_crop"):
        envs.Preprocess(envs.FastCarRacing(continuous=False), 64, True, (50, 50, 0, 0))


def test_same_seed_same_episode():
    cfg = load_config({"seed": 3})
    a, b = envs.make_env(cfg), envs.make_env(cfg)
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    assert np.array_equal(oa, ob)
    for _ in range(10):
        ra, rb = a.step(3), b.step(3)
        assert np.array_equal(ra[0], rb[0]) and ra[1:] == rb[1:]
    oc, _ = envs.make_env(cfg).reset(seed=4)
    assert not np.array_equal(oa, oc)  # another seed, another track


def test_lenient_termination_truncates_idle_episodes():
    cfg = load_config({"lenient_termination": 5, "skip_penalty": 0})  # the lenient wrapper outermost
    env = envs.make_env(cfg)
    env.reset(seed=0)
    for i in range(100):
        _, r, term, trunc, info = env.step(0)  # standing still earns only the -0.1 penalties
        if trunc:
            break
    # the start tiles pay out in the first steps; then 5 idle steps in a row end the episode
    assert trunc and not term and info.get("lenient_termination") is True and i < 40
    assert env.idle == 5
    env.reset(seed=0)
    assert env.idle == 0


def wrapper_types(env) -> list:
    found = []
    while isinstance(env, gym.Wrapper):
        found.append(type(env))
        env = env.env
    return found


def test_the_training_aids_are_on_by_default_and_off_with_0():
    assert {envs.LenientTermination, envs.SkipPenalty} <= set(wrapper_types(envs.make_env(load_config())))
    env = envs.make_env(load_config({"lenient_termination": 0, "skip_penalty": 0}))
    assert not {envs.LenientTermination, envs.SkipPenalty} & set(wrapper_types(env))


@pytest.mark.parametrize("env_id,shape", [("CartPole-v1", (4,)), ("LunarLander-v3", (8,))])
def test_make_env_vector_observations(env_id, shape):
    env = envs.make_env(load_config({"env_id": env_id}))
    obs, _ = env.reset(seed=0)
    assert obs.shape == shape and obs.dtype == np.float32
    obs, r, term, trunc, info = env.step(0)
    assert obs.shape == shape


@pytest.mark.parametrize("env_id,message", [("NoSuchEnv-v0", "cannot be made"),
                                            ("Pendulum-v1", "DQN needs a discrete one")])
def test_make_env_rejects_bad_env_ids(env_id, message):
    with pytest.raises(ConfigError, match=message):
        envs.make_env(load_config({"env_id": env_id}))


@pytest.mark.parametrize("agents", [1, 2])
def test_vector_env_autoreset_returns_reset_observation(agents):
    cfg = load_config({"env_id": "CartPole-v1", "agents": agents})
    vec = envs.make_vector_env(cfg)
    try:
        obs, _ = vec.reset(seed=0)
        assert obs.shape == (agents, 4)
        ended = np.zeros(agents, bool)
        for _ in range(500):
            obs, r, term, trunc, _ = vec.step(np.zeros(agents, dtype=np.int64))  # always left: falls fast
            done = term | trunc
            if done.any():
                ended = done
                break
        assert ended.any()
        # the step after the end is the autoreset: reset observation, reward 0, not a transition
        obs2, r2, term2, trunc2, _ = vec.step(np.zeros(agents, dtype=np.int64))
        assert np.all(r2[ended] == 0) and not (term2[ended] | trunc2[ended]).any()
        assert np.all(np.abs(obs2[ended]) <= 0.05)  # CartPole resets into [-0.05, 0.05]
    finally:
        vec.close()


def test_rendering_survives_pygame_quit_from_another_env():
    """Stock close() in human mode calls pygame.quit(): a later FastCarRacing must still draw."""
    first = envs.FastCarRacing(continuous=False)
    first.reset(seed=0)
    carracing_fast.pygame.quit()
    carracing_fast.pygame.font.init()  # what the next stock render does: the cached font is now invalid
    envs.FastCarRacing._text_cache.clear()  # force a fresh text render with that font
    second, stock = envs.FastCarRacing(continuous=False), CarRacing(continuous=False)
    assert np.array_equal(second.reset(seed=2)[0], stock.reset(seed=2)[0])
    for _ in range(30):  # the score changes: new texts are rendered
        assert np.array_equal(second.step(3)[0], stock.step(3)[0])


def test_skip_penalty_charges_the_tiles_a_cut_jumps_over():
    env = envs.make_env(load_config({"skip_penalty": 2.0, "lenient_termination": 0}))
    twin = envs.make_env(load_config({"lenient_termination": 0, "skip_penalty": 0}))  # the same drive, no penalty
    assert isinstance(env, envs.SkipPenalty) and not isinstance(twin, envs.SkipPenalty)

    def step(*tiles):
        for e in (env, twin):
            touch_tiles(e, *tiles)
        _, r, *_, info = env.step(0)
        return r - twin.step(0)[1], info

    for e in (env, twin):
        e.reset(seed=0)
    assert env.front == 1  # the car starts on tiles 0 and 1
    n = len(env.unwrapped.road)
    diff, info = step(*range(2, 11), 14)  # 11-13 jumped over: a corner cut
    assert info["skipped_tiles"] == 3 and diff == pytest.approx(-3 * 2.0) and env.front == 14
    diff, info = step(15, 16)  # on along the track: no charge
    assert "skipped_tiles" not in info and diff == 0 and env.front == 16
    diff, info = step(12, n - 3, 16 + 31)  # going back, far behind the start, or further than the window
    assert "skipped_tiles" not in info and diff == 0 and env.front == 16
    env.reset(seed=0)
    assert env.front == 1 and env.seen.sum() == 2


def test_skip_penalty_counts_what_a_real_drive_skipped():
    # the shipped agent on a held-out track where it cuts a corner (tiles 284-285 of 300 with the 900.13
    # file; a new file that no longer cuts there needs another seed): the wrapper's count equals the
    # untouched tiles short of the end of the track when the episode ends (a run up to the last tile is
    # tiles not reached, not skipped), and the return differs by its charge
    import evaluate

    agent = evaluate.load_agent(Path(__file__).resolve().parents[1] / "pretrained" / "snn_hybrid_ddqn.pt", device="cpu")
    env = envs.make_env(agent.cfg.replace(skip_penalty=1.5, lenient_termination=0))
    obs, _ = env.reset(seed=1003)
    act, total, skipped, done = agent.policy(env), 0.0, 0, False
    while not done:
        obs, r, term, trunc, info = env.step(act(obs))
        total, skipped, done = total + r, skipped + info.get("skipped_tiles", 0), term or trunc
    u = env.unwrapped
    missed, end = sorted(t.idx for t in u.road if not t.road_visited), len(u.road) - 1
    while missed and missed[-1] == end:
        missed.pop()
        end -= 1
    assert skipped == len(missed) > 0
    assert total == pytest.approx(u.reward - 1.5 * skipped)  # u.reward: the environment's own return


def test_evaluation_config_has_no_training_aids():
    cfg = load_config({"skip_penalty": 2.0, "lenient_termination": 25})
    env = envs.make_env(cfg.for_evaluation())
    assert not isinstance(env, (envs.SkipPenalty, envs.LenientTermination))
    with pytest.raises(ConfigError, match="skip_penalty"):
        load_config({"env_id": "CartPole-v1", "skip_penalty": 1.0})


def test_fast_carracing_pickles_and_copies_like_the_stock_env():
    """gymnasium's EzPickle replays the constructor's arguments positionally (its test_pickle_env)."""
    import copy
    import pickle

    env = envs.FastCarRacing(continuous=False, lap_complete_percent=0.9)
    for clone in (pickle.loads(pickle.dumps(env)), copy.deepcopy(env)):
        assert type(clone) is envs.FastCarRacing and clone.continuous is False and clone.lap_complete_percent == 0.9
        a, b = env.reset(seed=7)[0], clone.reset(seed=7)[0]
        assert np.array_equal(a, b)
        for _ in range(5):
            ra, rb = env.step(3), clone.step(3)
            assert np.array_equal(ra[0], rb[0]) and ra[1:4] == rb[1:4]
