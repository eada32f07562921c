"""replay.py: frames stored once, stacks rebuilt equal to the env's, episode boundaries, bootstrapping, PER."""
import numpy as np
import pytest

import envs
from replay import ReplayBuffer, SumTree
from config import load_config


def fill_from_env(cfg, steps, capacity, seed=0):
    """Drive the real CarRacing pipeline with random actions, recording what the replay must rebuild."""
    env = envs.make_env(cfg)
    obs, _ = env.reset(seed=seed)
    replay = ReplayBuffer(capacity, obs.shape, 1, stack=cfg.frame_stack)
    replay.start(0, obs)
    rng = np.random.default_rng(seed)
    seen = [obs.copy()]  # observation of each slot, in write order
    flags = []
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(int(rng.integers(5)))
        replay.add(0, 0, r, term, obs)
        seen.append(obs.copy())
        flags.append((term, trunc))
        if term or trunc:
            obs, _ = env.reset(seed=int(rng.integers(1000)))
            replay.start(0, obs)
            seen.append(obs.copy())
    return replay, seen, flags


def test_rebuilt_stacks_equal_the_environment_observations():
    # lenient termination ends episodes quickly, so the stream holds several episode boundaries
    cfg = load_config({"frame_stack": 4, "lenient_termination": 6, "obs_size": 48})
    replay, seen, flags = fill_from_env(cfg, 60, capacity=500)
    assert any(t for t in flags if t[1])  # truncations happened
    n = len(seen)
    rebuilt = replay.stacked(np.arange(n))
    for i in range(n):
        assert np.array_equal(rebuilt[i], seen[i]), f"slot {i}"


def test_each_frame_is_stored_once():
    replay = ReplayBuffer(100_000, (4, 84, 84), 1, stack=4)
    assert replay.frames.shape == (100_000, 1, 84, 84)
    assert replay.frames.nbytes < 0.75 * 2**30  # 100k CarRacing transitions well under 1 GB


def test_ring_wraparound_keeps_stacks_correct():
    cfg = load_config({"frame_stack": 3, "lenient_termination": 5, "obs_size": 40})
    replay, seen, _ = fill_from_env(cfg, 80, capacity=25)
    n = len(seen)
    live = np.arange(replay.per_env)
    ok = replay._sampleable(live)
    # slot s holds write number w with w = n - 1 - age; check every sampleable transition's two stacks
    ages = (replay.ptr[0] - 1 - live) % replay.per_env
    for slot, age, good in zip(live, ages, ok):
        if good:
            w = n - 1 - age
            assert np.array_equal(replay.stacked([slot])[0], seen[w])
            nxt = (slot + 1) % replay.per_env
            assert np.array_equal(replay.stacked([nxt])[0], seen[w + 1])


def test_truncation_bootstraps_termination_does_not_and_resets_are_not_transitions():
    replay = ReplayBuffer(10, (2,), 1, stack=1, dtype=np.float32)
    replay.start(0, np.array([0, 0], np.float32))
    replay.add(0, 1, 1.0, False, np.array([1, 1], np.float32))  # truncated here: terminated False
    replay.start(0, np.array([9, 9], np.float32))  # next episode
    replay.add(0, 0, -1.0, True, np.array([10, 10], np.float32))  # terminated
    batch = replay.sample(64, np.random.default_rng(0))
    pairs = {(tuple(o), tuple(n), t) for o, n, t in zip(batch.observations, batch.next_observations, batch.terminateds)}
    assert pairs == {((0.0, 0.0), (1.0, 1.0), 0.0), ((9.0, 9.0), (10.0, 10.0), 1.0)}  # never (1,1) -> (9,9)
    assert len(replay) == 2


def test_sum_tree_matches_brute_force():
    rng = np.random.default_rng(0)
    tree = SumTree(37)
    values = rng.random(37)
    tree.update(np.arange(37), values)
    assert tree.total() == pytest.approx(values.sum())
    prefixes = rng.random(500) * values.sum()
    expected = np.searchsorted(np.cumsum(values), prefixes, side="right")
    assert np.array_equal(tree.find(prefixes), expected)
    tree.update([3, 3, 5], [0.0, 2.0, 0.5])  # repeated index: last write wins
    values[3], values[5] = 2.0, 0.5
    assert tree.total() == pytest.approx(values.sum())


def test_prioritized_sampling_is_proportional_and_weighted():
    replay = ReplayBuffer(8, (1,), 1, stack=1, dtype=np.float32, prioritized=True, alpha=1.0)
    replay.start(0, np.zeros(1, np.float32))
    for i in range(4):
        replay.add(0, i, 0.0, False, np.full(1, i + 1, np.float32))
    replay.update_priorities(np.arange(4), np.array([1.0, 1.0, 1.0, 5.0]) - 1e-6)
    rng = np.random.default_rng(0)
    counts = np.zeros(4)
    for _ in range(200):
        b = replay.sample(16, rng, beta=1.0)
        np.add.at(counts, b.indices, 1)
    share = counts / counts.sum()
    assert share[3] == pytest.approx(5 / 8, abs=0.03) and share[0] == pytest.approx(1 / 8, abs=0.03)
    b = replay.sample(16, rng, beta=1.0)
    assert np.allclose(b.weights[b.indices == 3], 0.2) and np.allclose(b.weights[b.indices == 0], 1.0)


def test_state_dict_round_trip():
    cfg = load_config({"frame_stack": 2, "obs_size": 40})
    replay, _, _ = fill_from_env(cfg, 20, capacity=50)
    state = replay.state_dict()
    fresh = ReplayBuffer(50, replay.obs_shape, 1, stack=2)
    fresh.load_state_dict(state)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    a, b = replay.sample(8, rng_a), fresh.sample(8, rng_b)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    with pytest.raises(ValueError):
        ReplayBuffer(60, replay.obs_shape, 1, stack=2).load_state_dict(state)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_returns_equal_a_walk_along_each_episode(n):
    """Against a plain walk over the recorded streams: across ring wraps, terminations (no bootstrap),
    truncations (bootstrap from the last observation) and the newest observation (bootstrap from it)."""
    gamma, clip = 0.9, 1.5
    rng = np.random.default_rng(n)
    replay = ReplayBuffer(2 * 40, (2, 1, 1), num_envs=2, stack=2, dtype=np.float32)
    streams = [[], []]  # per env, in write order: [obs id, reward, terminated, has_next]
    ids = 0
    for e in range(2):
        replay.start(e, np.full((2, 1, 1), ids, np.float32))
        streams[e].append([ids, 0.0, False, False])
        ids += 1
    for _ in range(230):
        for e in range(2):
            r, end = float(rng.normal() * 2), rng.random()
            term, trunc = end < 0.04, 0.04 <= end < 0.08
            replay.add(e, 0, r, term, np.full((2, 1, 1), ids, np.float32))
            streams[e][-1][1:] = [r, term, True]
            streams[e].append([ids, 0.0, False, False])
            ids += 1
            if term or trunc:
                replay.start(e, np.full((2, 1, 1), ids, np.float32))
                streams[e].append([ids, 0.0, False, False])
                ids += 1
    slots = np.flatnonzero(replay._sampleable(np.arange(len(replay.frames))))
    rewards, discounts, done, last = replay.n_step_returns(slots, n, gamma, clip)
    for slot, r_got, d_got, done_got, last_got in zip(slots, rewards, discounts, done, last):
        e = slot // replay.per_env
        w = [i for i, item in enumerate(streams[e]) if item[0] == replay.frames[slot, 0, 0, 0]][0]
        ret, m, terminated = 0.0, 0, False
        while m < n:
            _, r, term, has_next = streams[e][w + m]
            assert has_next
            ret += gamma ** m * float(np.clip(np.float32(r), -clip, clip))
            m += 1
            if term:
                terminated = True
                break
            if not streams[e][w + m][3]:  # a truncated episode's last observation, or the newest one
                break
        assert r_got == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert d_got == pytest.approx(gamma ** m) and bool(done_got) == terminated
        assert replay.frames[last_got, 0, 0, 0] == streams[e][w + m][0]
    batch = replay.sample(16, np.random.default_rng(0), n_step=n, gamma=gamma, reward_clip=clip)
    assert batch.discounts.shape == (16,) and (batch.discounts <= gamma + 1e-6).all()
    if n == 1:  # one reward, clipped, discounted by gamma
        assert (batch.discounts == np.float32(gamma)).all()
        assert np.array_equal(batch.rewards, np.clip(replay.rewards[batch.indices], -clip, clip))
