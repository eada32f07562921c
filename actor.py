"""The actor: the environments and a copy of the Q-network stepping the next block of agent steps while
the learner updates (`actor` key).

In the plain loop one core alternates: act, step the environment, and every `train_every` agent steps
an update that costs far more than the steps (CarRacing on a CPU: about ten times; docs/benchmarks.md). With
an actor the environment and action selection run in a worker process on the other core, one block
of `train_every` agent steps at a time, while the learner runs the update those steps pay for:

    learner: | store block j | publish weights, start block j+1 | update(s) of block j | store block j+1 | ...
    actor:                                     | step block j+1 with the published weights          |

So block j+1 is played with the weights from before block j's update: the policy is one update behind
the plain loop's (as in Ape-X-style actor/learner splits, with the smallest possible lag). Everything
random (ε's coin, the random actions) is drawn by the learner from the run's own generator and sent
with the block, and the learner alone writes the replay, the metrics and the checkpoints; a checkpoint
is taken with the actor idle, and the block after it uses the current weights, so a resumed run
continues exactly as the uninterrupted one would.

The in-run held-out evaluation is shared the same way: the actor plays the second half of the tracks with
the current weights while the trainer plays the first (heldout.returns), so the worker's core is
not idle while the trainer evaluates.

`InlineActor` runs the same blocks in this process (the same learning, no overlap): the fallback when
a worker process cannot be started, and the reference the worker is tested against.
"""
from __future__ import annotations

import atexit
import os
import signal
import time
import traceback

import numpy as np
import torch

import envs
import models

START_TIMEOUT_S = 300.0  # spawning imports torch and gymnasium: seconds on a slow disk


def wanted(cfg, obs_shape: tuple, device: torch.device) -> str:
    """What `actor` means here: "process", "inline" or "off". `auto` takes a worker process where it
    pays: an image input (the update dwarfs the environment step only there), on the CPU (on CUDA the
    update is milliseconds) and with at least two cores for this process."""
    if cfg.actor != "auto":
        return cfg.actor
    image = len(obs_shape) == 3
    return "process" if image and device.type == "cpu" and usable_cpus() >= 2 else "off"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def block_steps(cfg, global_step: int) -> int:
    """Vector steps in the next block: `train_every` agent steps, none past the run's budget."""
    steps = max(1, cfg.train_every // cfg.agents)
    if cfg.total_steps:
        steps = max(1, min(steps, -(-(cfg.total_steps - global_step) // cfg.agents)))
    return steps


def plan_block(rng: np.random.Generator, steps: int, agents: int, epsilon: float, n_actions: int) -> list:
    """The random part of a block's actions, drawn as `Trainer.act` draws them: per vector step, who
    explores (ε's coin) and the random action each would take."""
    plan = []
    for _ in range(steps):
        explore = rng.random(agents) < epsilon
        plan.append((explore, rng.integers(0, n_actions, size=agents)))
    return plan


def play_block(vec, net: torch.nn.Module, obs: np.ndarray, plan: list) -> list:
    """Step `vec` once per plan entry from `obs`: the greedy action of `net` unless the plan explores
    (the network is run only when some environment takes its greedy action). One tuple per step:
    (actions, next_obs, rewards, terminateds, truncateds, infos)."""
    out = []
    for explore, random_actions in plan:
        if explore.all():
            actions = random_actions
        else:
            with torch.no_grad():
                greedy = net(torch.as_tensor(obs)).argmax(1).numpy()
            actions = np.where(explore, random_actions, greedy)
        next_obs, rewards, terms, truncs, infos = vec.step(actions)
        out.append((actions, next_obs, rewards, terms, truncs, infos))
        obs = next_obs
    return out


class PlainEnvs:
    """The plain loop's vector environment behind the actors' interface (reset, snapshot, restore, step,
    close), so the trainer treats the environments alike whoever steps them."""

    kind = "off"

    def __init__(self, vec):
        self.vec = vec

    def __getattr__(self, name):  # spaces, the sub-environments, ...
        return getattr(self.vec, name)

    def reset(self, seed: int) -> np.ndarray:
        return self.vec.reset(seed=seed)[0]

    def step(self, actions):
        return self.vec.step(actions)

    def snapshot(self) -> bytes | None:
        return envs.snapshot_vector_env(self.vec)

    def restore(self, blob: bytes, obs: np.ndarray) -> None:
        envs.restore_vector_env(self.vec, blob)

    def close(self) -> None:
        self.vec.close()


class InlineActor:
    """The actor's blocks stepped in this process when collected (no overlap, the same learning)."""

    kind = "inline"

    def __init__(self, cfg, vec=None):
        self.cfg = cfg
        self.vec = vec if vec is not None else envs.make_vector_env(cfg)
        self.single_action_space = self.vec.single_action_space
        self.single_observation_space = self.vec.single_observation_space
        self.net: torch.nn.Module | None = None
        self.obs: np.ndarray | None = None
        self.pending: list | None = None
        self.eval_seeds: list = []

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def attach(self, q_network: torch.nn.Module, target_network: torch.nn.Module | None = None) -> None:
        """The network whose weights `start` publishes: a frozen CPU copy, so that the learner's updates
        during a block do not reach the block (the same lag as the worker's)."""
        self.source = q_network
        self.net = _frozen_copy(q_network)

    def reset(self, seed: int) -> np.ndarray:
        self.obs, _ = self.vec.reset(seed=seed)
        return self.obs

    def snapshot(self) -> bytes | None:
        return envs.snapshot_vector_env(self.vec)

    def restore(self, blob: bytes, obs: np.ndarray) -> None:
        envs.restore_vector_env(self.vec, blob)
        self.obs = obs

    def start(self, plan: list, next_obs: np.ndarray | None = None, target_version: int = 0) -> None:
        if next_obs is not None:
            raise ValueError("the inline actor computes no target Q (the trainer's own update does)")
        self.net.load_state_dict(self.source.state_dict())
        self.pending = plan

    def collect(self) -> list:
        plan, self.pending = self.pending, None
        steps = play_block(self.vec, self.net, self.obs, plan)
        self.obs = steps[-1][1]
        return steps

    def start_evaluation(self, seeds: list) -> None:
        """Held-out episodes on `seeds` with the current weights, played when finished (no overlap)."""
        self.net.load_state_dict(self.source.state_dict())
        self.eval_seeds = list(seeds)

    def finish_evaluation(self) -> list:
        return _evaluate(self.cfg, self.net, self.eval_seeds)

    def close(self) -> None:
        self.vec.close()


class ProcessActor:
    """The actor in a worker process (spawned: a fork of a process running torch threads can hang).
    The weights travel through shared memory, written by the learner only while the worker is idle;
    blocks, observations and results through a pipe. The worker ignores the terminal's signals (the
    learner stops it after its final checkpoint) and exits when the learner's end of the pipe closes."""

    kind = "process"

    def __init__(self, cfg):
        ctx = torch.multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, cfg), name="snn-dqn-actor", daemon=False)
        self.proc.start()
        child.close()
        try:
            self.single_action_space, self.single_observation_space = self._reply(timeout=START_TIMEOUT_S)
        except RuntimeError:
            self.proc.kill()
            self.proc.join(5)
            self.conn.close()
            raise
        self.shared: dict[str, torch.Tensor] | None = None
        self.busy = False
        # multiprocessing joins its children at exit: a trainer that ends without close() (an exception)
        # must still let the worker go, or the interpreter would wait for it forever
        atexit.register(self.close)

    def _reply(self, timeout: float | None = None):
        try:
            if timeout is not None and not self.conn.poll(timeout):
                raise RuntimeError(f"the actor process did not start within {timeout:.0f} s")
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise RuntimeError(f"the actor process died (exit code {self.proc.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"the actor process failed:\n{value}")
        return value

    def _call(self, *msg):
        self.conn.send(msg)
        return self._reply()

    def attach(self, q_network: torch.nn.Module, target_network: torch.nn.Module | None = None) -> None:
        """`target_network` too: the worker can then run the target network's pass over an update's s'
        (`start`'s next_obs) before it plays the block — the same pass on the same weights, done on the
        core the block would otherwise leave idle while the learner runs the rest of the update. (Only
        this pass: the learner needs its answer before its backward pass, and its own online passes
        over s' and s take as long as the worker's one.)"""
        self.source = q_network
        self.shared = _shared_copy(q_network)
        self.target_source = target_network
        self.shared_target = _shared_copy(target_network) if target_network is not None else None
        self.target_version = None  # the version of the target weights last published
        self.batch: torch.Tensor | None = None  # shared: the s' of the update the worker evaluates
        self.answer: torch.Tensor | None = None  # shared: the target network's Q of it
        self.target_pending = False
        self._call("attach", self.shared, self.shared_target)

    def reset(self, seed: int) -> np.ndarray:
        return self._call("reset", seed)

    def snapshot(self) -> bytes | None:
        return self._call("snapshot")

    def restore(self, blob: bytes, obs: np.ndarray) -> None:
        self._call("restore", blob, obs)

    def _publish(self) -> None:
        _copy_weights(self.shared, self.source.state_dict())

    def start(self, plan: list, next_obs: np.ndarray | None = None, target_version: int = 0) -> None:
        """Play `plan` with the current weights; with `next_obs` (an update's s' batch) the worker first
        runs the target network over it (`target_version` says when the target's weights changed since the
        last publication), which `target_q` waits for."""
        self._publish()
        target = next_obs is not None
        if target:
            if self.target_version != target_version:  # the worker is idle: safe to write
                _copy_weights(self.shared_target, self.target_source.state_dict())
                self.target_version = target_version
            obs = torch.from_numpy(next_obs)
            if self.batch is None or self.batch.shape != obs.shape or self.batch.dtype != obs.dtype:
                self.batch = obs.clone().share_memory_()
                self.answer = torch.empty((len(obs), self.single_action_space.n)).share_memory_()
                self.conn.send(("buffers", self.batch, self.answer))
            else:
                self.batch.copy_(obs)
            self.target_pending = True
        self.conn.send(("block", plan, target, self.target_version))
        self.busy = True

    def target_q(self) -> torch.Tensor:
        """The target network's Q `[batch, actions]` of the s' sent with the block (valid until the next
        block starts); `answer_wait` and `target_seconds` say how long the learner waited for it and how
        long the worker took."""
        self.target_pending = False
        t0 = time.perf_counter()
        self.target_seconds = self._reply()
        self.answer_wait = time.perf_counter() - t0
        return self.answer

    def collect(self) -> list:
        if self.target_pending:  # asked for and never used (an update that did not run): the answer goes
            self.target_q()
        self.busy = False
        steps, self.play_seconds = self._reply()
        return steps

    def start_evaluation(self, seeds: list) -> None:
        """Held-out episodes on `seeds` with the current weights, played by the worker while the trainer
        plays its own share; the actor is idle between blocks here (an episode's end is stored before
        the next block starts)."""
        self._publish()
        self.conn.send(("evaluate", list(seeds)))

    def finish_evaluation(self) -> list:
        return self._reply()

    def close(self) -> None:
        if self.conn.closed:
            return
        atexit.unregister(self.close)
        if self.proc.is_alive():
            try:
                if self.busy:
                    self.collect()
                self.conn.send(("close",))
            except (RuntimeError, OSError):
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class TargetSplit:
    """Whether the worker should run the target network's pass of the next update: the learning is the
    same either way (the same pass on the same weights), only the speed differs. With the pass the worker's
    block takes P + t and the trainer's update U - t; without it P and U (P: the worker playing a block,
    t: the target pass, U: the trainer's whole update). It pays only while P + t < U — on a machine whose
    environment steps are slow the worker is already the one the trainer waits for. All three are running
    averages of what the worker reports and the trainer times; `force` (True/False) overrides the choice
    (bench/target_split.py)."""

    def __init__(self):
        self.play = self.target = self.update = None
        self.force: bool | None = None

    @staticmethod
    def _average(old: float | None, new: float) -> float:
        return new if old is None else old + 0.1 * (new - old)

    def block_played(self, seconds: float) -> None:
        self.play = self._average(self.play, seconds)

    def update_done(self, seconds: float, answer_wait: float | None = None, target_seconds: float = 0.0) -> None:
        """One update of `seconds`; one whose pass the worker ran (`answer_wait` given) counts as it would
        have taken with the pass: minus the wait for the worker's answer, plus the pass's time."""
        if answer_wait is not None:
            self.target = self._average(self.target, target_seconds)
            seconds += target_seconds - answer_wait
        self.update = self._average(self.update, seconds)

    def wanted(self) -> bool:
        if self.force is not None:
            return self.force
        if self.play is None or self.target is None or self.update is None:
            return True  # measure the worker's pass first
        return self.play + self.target < self.update


class TargetPass:
    """The worker's share of the update: the target network's pass over the s' of the update its block pays
    for, run on the core the block leaves idle while the trainer runs the rest of the update (the same pass
    on the same weights: the learning is the same either way). The trainer's side of it:

    - `offer(batch)` when a block starts: the batch of the update it pays for (sampled now, after ε's coins,
      the plain loop's order of draws), or None; gives `actor.start`'s `next_obs` and target version;
    - `take()` in that update: the offered batch and a call that waits for the worker's answer, or
      (None, None): nothing was offered, the trainer samples and runs the pass itself;
    - `target_changed()` whenever the target network's weights change (the worker's copy follows);
    - `block_played()` after each block and `update_done(seconds)` after each update: the timings that
      decide whether offering pays now (TargetSplit).

    Used only where the trainer runs one torch thread, as the worker does: the same kernels, so a run's
    numbers do not depend on the timing-driven choice."""

    def __init__(self, actor: ProcessActor):
        self.actor = actor
        self.split = TargetSplit()
        self.version = 0  # counts the target network's changes
        self.batch = None  # offered with the running block, not yet taken
        self.remote = False  # whether the update being timed had the worker's pass

    def wanted(self) -> bool:
        return self.split.wanted()

    def offer(self, batch) -> tuple[np.ndarray | None, int]:
        self.batch = batch
        return (None if batch is None else batch.next_observations), self.version

    def take(self):
        batch, self.batch = self.batch, None
        self.remote = batch is not None
        return (batch, self.actor.target_q) if batch is not None else (None, None)

    def target_changed(self) -> None:
        self.version += 1

    def block_played(self) -> None:
        self.split.block_played(self.actor.play_seconds)

    def update_done(self, seconds: float) -> None:
        if self.remote:
            self.split.update_done(seconds, self.actor.answer_wait, self.actor.target_seconds)
        else:
            self.split.update_done(seconds)


def _copy_weights(dest: dict, src: dict) -> None:
    with torch.no_grad():
        for k, v in src.items():
            dest[k].copy_(v)


def _shared_copy(net: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True).share_memory_() for k, v in net.state_dict().items()}


def _evaluate(cfg, net: torch.nn.Module, seeds: list) -> list:
    return envs.evaluation_returns(cfg, lambda obs: models.greedy_action(net, obs), seeds)


def _frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(net).to("cpu")
    clone.requires_grad_(False)
    return clone


def _worker(conn, cfg) -> None:
    """The actor process: its own environments and network copy, answering the learner's messages."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        vec = envs.make_vector_env(cfg)
        conn.send(("ok", (vec.single_action_space, vec.single_observation_space)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    net = shared = own = obs = None
    target = shared_target = target_version = batch = answer = None
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the learner is gone
                return
            try:
                if msg[0] == "block":
                    if msg[2]:  # the target network's pass over the s' of the learner's next update
                        if target_version != msg[3]:
                            target.load_state_dict(shared_target)
                            target_version = msg[3]
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            answer.copy_(target(models.network_input(target, batch)))
                        conn.send(("ok", time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    _copy_weights(own, shared)
                    steps = play_block(vec, net, obs, msg[1])
                    obs = steps[-1][1]
                    conn.send(("ok", (steps, time.perf_counter() - t0)))
                elif msg[0] == "evaluate":
                    _copy_weights(own, shared)
                    conn.send(("ok", _evaluate(cfg, net, msg[1])))
                elif msg[0] == "buffers":
                    batch, answer = msg[1], msg[2]
                elif msg[0] == "attach":
                    shared, shared_target = msg[1], msg[2]
                    obs_shape = tuple(vec.single_observation_space.shape)
                    net = models.build_q_network(cfg, obs_shape, int(vec.single_action_space.n))
                    net.requires_grad_(False)
                    net.load_state_dict(shared)
                    own = net.state_dict()  # views of the network's tensors
                    if shared_target is not None:
                        target = models.build_q_network(cfg, obs_shape, int(vec.single_action_space.n))
                        target.requires_grad_(False)
                        target_version = None
                    conn.send(("ok", None))
                elif msg[0] == "reset":
                    obs, _ = vec.reset(seed=msg[1])
                    conn.send(("ok", obs))
                elif msg[0] == "snapshot":
                    conn.send(("ok", envs.snapshot_vector_env(vec)))
                elif msg[0] == "restore":
                    envs.restore_vector_env(vec, msg[1])
                    obs = msg[2]
                    conn.send(("ok", None))
                elif msg[0] == "close":
                    return
            except (BrokenPipeError, ConnectionResetError):
                return
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        vec.close()
