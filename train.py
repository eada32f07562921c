"""Double-DQN training with SNN or ANN Q-networks, exact resume, metrics and plots.

    python train.py --config PATH [--new-run]

Usually started by `python run.py`, which resolves the config and runs this in bouts. Leaves the run folder
of the README (runfolder.py). The update itself is learner.py, the run's progress trainstate.py, a bout's
deadline, signals and progress display bout.py; an actor process may step the environments (actor.py).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import actor as actors
import agents
import bout
import checkpoints
import contract
import envs
import heldout
import metrics
import models
import runlock
import utils
from bout import log
from config import ConfigError, keep_former_defaults, load_config, one_line_cli_errors
from learner import Learner
from replay import ReplayBuffer
from runfolder import HubUnreachable, RunFolder
from trainstate import TrainState
from utils import kv_line

ROOT = Path(__file__).resolve().parent


class Trainer:
    """The Double-DQN loop over one run folder: act, store, learn, and at episode ends log and checkpoint.
    Its progress is `state` (TrainState), its networks and optimiser `learner` (Learner)."""

    def __init__(self, cfg, run_dir: Path, new_run: bool):
        self.run_dir = run_dir
        self.device = models.resolve_device(cfg.device)
        seed_everything(cfg.seed)
        cfg, self.files, found, init, teacher, vec, self.lineage = open_run(cfg, run_dir, new_run, self.device)
        self.cfg, self.hub = cfg, self.files.hub
        self.n_actions, self.obs_shape = int(vec.single_action_space.n), tuple(vec.single_observation_space.shape)
        self.actor = make_actor(cfg, vec, self.obs_shape, self.device)
        self.vec = self.actor or actors.PlainEnvs(vec)  # reset, snapshot, restore and close: whoever steps them
        self.learner = Learner(cfg, self.obs_shape, self.n_actions, self.device, teacher)
        self.target_pass = None if cfg.augment_shift else make_target_pass(self.actor, self.device)
        if self.actor is not None:
            self.actor.attach(self.learner.q_network, self.target_pass and self.learner.target_network)
        self.replay, self.replay_mb = make_replay(cfg, self.obs_shape)
        self.replay_segments = checkpoints.ReplaySegments(self.files.ckpt_dir)  # the replay's frames on disk
        self.rng = np.random.default_rng(cfg.seed)  # exploration and replay sampling
        self.state = TrainState(cfg.agents, self.n_actions, cfg.epsilon_start, self.device,
                                cfg.frame_skip if len(self.obs_shape) == 3 else 1)
        self.obs = None
        self.autoreset = np.zeros(cfg.agents, dtype=bool)  # the last step only reset these environments
        self.checkpoint_due, self.sps = False, 0.0  # a checkpoint at the end of this step; agent steps/s
        self.metrics = metrics.MetricsLog(run_dir, cfg=cfg)
        if found is not None:
            self._resume(*found)
        else:
            self._start_fresh(init)

    def _start_fresh(self, init: dict | None) -> None:
        if init is not None:
            self.learner.start_from(init["q_network"])
            extra = {"head": init["converted"]} if "converted" in init else {}
            log(kv_line("init_weights", path=self.cfg.init_weights, trained_steps=checkpoints.trained_steps(init),
                        **extra))
        self._new_episodes(self.cfg.seed)
        self.metrics.text("hyperparameters", metrics.config_table(self.cfg.to_dict()))

    def _new_episodes(self, seed: int) -> None:
        self.obs = self.vec.reset(seed)
        for e in range(self.cfg.agents):
            self.replay.start(e, self.obs[e])

    def _resume(self, path: Path, ckpt: dict) -> None:
        cfg, s = self.cfg, self.state
        self.learner.load_state_dict(ckpt)
        env = ckpt["env"]
        mid_episode = env["snapshot"] is not None and cfg.agents == len(env["obs"])
        s.load_state_dict(ckpt, mid_episode)
        checkpoints.restore_rng(ckpt["rng"], self.rng)
        replay_note = checkpoints.restore_replay(self.replay_segments, self.replay, ckpt["replay"])
        if mid_episode:
            self.obs, self.autoreset = env["obs"], env["autoreset"]
            self.vec.restore(env["snapshot"], self.obs)
        else:  # Box2D worlds cannot be saved: the interrupted episodes are dropped and new ones start
            self._new_episodes(cfg.seed + 7919 * (s.episode + 1))
        self.files.resumed(path, ckpt["config"], s, self.metrics, f"{replay_note}; environments "
                           f"{'restored mid-episode' if mid_episode else 'interrupted episodes restarted'}")

    # ------------------------------------------------------------------ acting and learning
    def act(self, obs: np.ndarray) -> np.ndarray:
        """ε-greedy actions of the plain loop (the actor's blocks draw the same coins in actor.plan_block)."""
        with torch.no_grad():
            greedy = self.learner.q_network(torch.as_tensor(obs, device=self.device)).argmax(1).cpu().numpy()
        explore = self.rng.random(len(greedy)) < self.state.epsilon
        random_actions = self.rng.integers(0, self.n_actions, size=len(greedy))
        return np.where(explore, random_actions, greedy)

    def _log_firing_rates(self, obs: np.ndarray) -> None:
        """debug: each spiking layer's firing rate on `obs`."""
        for layer, rate in models.firing_rates(self.learner.q_network, torch.as_tensor(obs, device=self.device)).items():
            self.metrics.scalar(f"debug/firing_rate_{layer}", rate, self.state.global_step)

    def greedy(self, obs) -> int:
        return models.greedy_action(self.learner.q_network, obs, self.device)

    def sample(self):
        cfg, beta = self.cfg, schedule(self.cfg, self.state.global_step).per_beta
        return self.replay.sample(cfg.batch, self.rng, beta, cfg.n_step, cfg.gamma, cfg.reward_clip)

    def update(self) -> None:
        """One Double-DQN update on a replay batch (sampled before its block when the worker runs the
        target network's pass over it: TargetPass)."""
        started = time.perf_counter()
        batch, remote_target_q = self.target_pass.take() if self.target_pass else (None, None)
        if batch is None:
            batch = self.sample()
        losses = self.learner.update(batch, remote_target_q, self.teacher_weight())
        if self.replay.prioritized:
            self.replay.update_priorities(batch.indices, losses.td_errors.abs().cpu().numpy())
        if self.cfg.debug and losses.grad_norm is not None and self.state.updates % 100 == 0:
            self.metrics.scalar("debug/grad_norm", float(losses.grad_norm), self.state.global_step)
        if self.target_pass:
            self.target_pass.update_done(time.perf_counter() - started)
        self.state.add_losses(losses.td, losses.teacher)
        self.state.updates += 1

    def update_target(self) -> None:
        self.learner.update_target()
        if self.target_pass:
            self.target_pass.target_changed()

    def teacher_weight(self) -> float:
        return schedule(self.cfg, self.state.global_step).teacher_weight if self.learner.teacher is not None else 0.0

    def follow_schedules(self) -> None:
        """ε and the learning rate at this agent step, where they follow a schedule by agent steps."""
        now = schedule(self.cfg, self.state.global_step)
        if now.epsilon is not None:
            self.state.epsilon = now.epsilon
        if now.learning_rate is not None:
            self.learner.set_learning_rate(now.learning_rate)

    # ------------------------------------------------------------------ episodes
    def end_episode(self, env: int, sps: float) -> None:
        cfg, s = self.cfg, self.state
        ret, length, skipped = float(s.episode_return[env]), int(s.episode_length[env]), int(s.episode_skipped[env])
        s.end_episode(env, ret >= cfg.win_threshold)
        loss, teacher_loss = s.take_losses()
        if not cfg.epsilon_decay_steps:
            s.epsilon = max(cfg.epsilon_min, s.epsilon * cfg.decay)
        eval_return = self.evaluate() if cfg.eval_every and s.episode % cfg.eval_every == 0 else None
        if cfg.record_every and s.episode % cfg.record_every == 0:
            heldout.record_gif(cfg, self.greedy, self.run_dir, s.episode, log)
        self.metrics.episode(s.episode, s.global_step, ret, length, s.epsilon, ret >= cfg.win_threshold,
                             s.win_percent(), loss, sps, eval_return, skipped if cfg.skip_penalty else None,
                             (self.teacher_weight(), teacher_loss) if self.learner.teacher is not None else None)
        if cfg.debug:
            self.metrics.debug(s.global_step, len(self.replay), self.obs[env] if len(self.obs_shape) == 3 and
                               s.episode % 50 == 1 else None, s.action_counts)
        if 0 < cfg.stop_learning_at_win_percent <= s.win_percent() and not s.learning_stopped:
            s.learning_stopped = True  # acting goes on
            self.files.learning_stopped(s, cfg.stop_learning_at_win_percent)
        if s.episode % cfg.checkpoint_every == 0:
            self.checkpoint_due = True  # written at the end of the step, when the state is whole

    def evaluate(self) -> float:
        """The held-out evaluation; the best mean so far is kept as best.pt."""
        return heldout.evaluate(self.cfg, self.greedy, self.actor, self.state, self.run_dir, self.weights, log)

    def weights(self) -> dict:
        """What a weights-only file (best.pt, --export) needs, with the file's lineage (this run its last stage)."""
        s = self.state
        return {"config": self.cfg.to_dict(), "obs_shape": list(self.obs_shape), "n_actions": self.n_actions,
                "q_network": self.learner.q_network.state_dict(),
                "counters": {"global_step": s.global_step, "episode": s.episode, "updates": s.updates},
                "lineage": self.lineage + [checkpoints.stage(self.cfg.to_dict(), s.global_step, s.frames_per_step)]}

    def state_dict(self, env_snapshot: bytes | None) -> dict:
        """Everything needed to continue exactly here (the checkpoint; nanoGPT's shape)."""
        return {"format": checkpoints.FORMAT, **self.weights(), **self.learner.state_dict(), **self.state.state_dict(),
                "rng": checkpoints.rng_state(self.rng),
                "env": {"snapshot": env_snapshot, "obs": np.array(self.obs), "autoreset": self.autoreset.copy()},
                "replay": (self.replay_segments.capture(self.replay, self.state.global_step) if self.cfg.save_replay
                           else None)}

    def save_checkpoint(self) -> Path:
        """Between steps only: the observation, autoreset flags and updates of the last step are in."""
        if self.actor is not None and self.actor.busy:  # a stop mid-block: its steps and updates go in first
            self._finish_block(self.actor.collect())
        self.checkpoint_due = False
        return self.files.save(self.state_dict(self.vec.snapshot()), self.cfg.keep_checkpoints,
                               self.state.progress(), self.metrics.path,
                               lambda: self.replay_segments.last_bytes)

    # ------------------------------------------------------------------ the loop
    def budget_reached(self) -> str | None:
        return self.state.budget_reached(self.cfg.total_steps, self.cfg.max_episodes)

    def step(self, sps: float) -> None:
        """One step of every environment, the transitions stored, then the updates they pay for (with an
        actor: one block of steps, stored, the next block started, then the updates)."""
        self.sps = sps
        if self.actor is None:
            actions = self.act(self.obs)
            self._learn(self._store(actions, *self.vec.step(actions)))
        else:
            if not self.actor.busy:  # the first block of a bout, or the one after a checkpoint: current weights
                self._start_block()
            block = self.actor.collect()
            if self.target_pass:
                self.target_pass.block_played()
            self._finish_block(block, start_next=True)
        if self.checkpoint_due:
            self.save_checkpoint()

    def _start_block(self, prefetch: bool = False) -> None:
        """Publish the online network and let the actor step the next block (ε's coins drawn here). With
        `prefetch` the first update this block pays for samples its batch now (after the coins, the order
        of the plain loop's draws), and the worker runs the target network's pass over its s' first."""
        cfg, s = self.cfg, self.state
        plan = actors.plan_block(self.rng, actors.block_steps(cfg, s.global_step), cfg.agents, s.epsilon,
                                 self.n_actions)
        batch = self.sample() if prefetch else None
        self.actor.start(plan, *(self.target_pass.offer(batch) if self.target_pass else (None, 0)))

    def _learning(self) -> bool:  # learning_starts reached, and the win rule has not stopped it
        return self.state.global_step >= self.cfg.learning_starts and not self.state.learning_stopped

    def _finish_block(self, block: list, start_next: bool = False) -> None:
        """Store a block's steps; start the next one (unless a checkpoint or the budget comes first: a
        checkpoint is taken with the actor idle); then run the updates the block paid for."""
        real = sum(self._store(actions, *result) for actions, *result in block)
        if start_next and not self.checkpoint_due and self.budget_reached() is None:
            # the worker's pass only for an update that will run now (_learn's test on the same numbers)
            due = self._learning() and self.state.update_credit + real / self.cfg.train_every >= 1
            self._start_block(prefetch=bool(self.target_pass) and due and self.target_pass.wanted())
        self._learn(real)

    def _store(self, actions, next_obs, rewards, terms, truncs, infos) -> int:
        """One vector step's transitions into the replay, with the episodes that ended; the real steps."""
        s = self.state
        if self.cfg.debug and s.global_step % 1000 == 0:
            self._log_firing_rates(self.obs)  # what the network made of the observation it acted on
        if "skipped_tiles" in infos:  # SkipPenalty charged some env this step
            s.episode_skipped += np.where(infos["_skipped_tiles"], infos["skipped_tiles"], 0)
        real = 0
        for e in range(self.cfg.agents):
            if self.autoreset[e]:  # this step only reset env e: not a transition
                self.replay.start(e, next_obs[e])
                continue
            real += 1
            s.global_step += 1
            s.action_counts[actions[e]] += 1
            self.replay.add(e, int(actions[e]), float(rewards[e]), bool(terms[e]), next_obs[e])
            s.episode_return[e] += rewards[e]
            s.episode_length[e] += 1
            if terms[e] or truncs[e]:
                self.end_episode(e, self.sps)
        self.autoreset = terms | truncs
        self.obs = next_obs
        return real

    def _learn(self, real: int) -> None:
        """The updates `real` new agent steps pay for, and the target update when they cross its period."""
        cfg, s = self.cfg, self.state
        self.follow_schedules()
        if self._learning():
            s.update_credit += real / cfg.train_every
            while s.update_credit >= 1:
                self.update()
                s.update_credit -= 1
        if s.global_step // cfg.target_update_every > (s.global_step - real) // cfg.target_update_every:
            self.update_target()

    def run(self) -> int:
        """One bout: train until a budget, the bout's time or a signal stops it; checkpoint; exit code."""
        return bout.Bout(self).run()


# --------------------------------------------------------------------------- schedules
class Schedule(NamedTuple):
    """What the recipe's schedules say at one agent step (None: that key follows no schedule)."""
    epsilon: float | None  # linear over epsilon_decay_steps (else `decay` per episode)
    learning_rate: float | None  # linear over learning_rate_decay_steps
    teacher_weight: float  # linear to 0 over teacher_steps (0 = held)
    per_beta: float  # prioritized replay's importance exponent, annealed to 1


def linear(start: float, end: float, step: int, steps: int) -> float:
    """A value falling (or rising) linearly from `start` at step 0 to `end` at `steps`, then held."""
    return start + (end - start) * min(1.0, step / steps)


def schedule(cfg, step: int) -> Schedule:
    return Schedule(
        linear(cfg.epsilon_start, cfg.epsilon_min, step, cfg.epsilon_decay_steps) if cfg.epsilon_decay_steps else None,
        linear(cfg.learning_rate, cfg.learning_rate_final, step, cfg.learning_rate_decay_steps)
        if cfg.learning_rate_decay_steps else None,
        linear(cfg.teacher_weight, 0.0, step, cfg.teacher_steps) if cfg.teacher_steps else cfg.teacher_weight,
        cfg.per_beta + (1 - cfg.per_beta) * min(1.0, step / max(cfg.total_steps, 1_000_000)))


# --------------------------------------------------------------------------- setup
def open_run(cfg, run_dir: Path, new_run: bool, device: torch.device):
    """Everything decided before a network is built: the agents the config names (bad input fails before
    anything of the run is touched), the checkpoint to continue from (local or the Hub's), the final config
    (a resumed run keeps the former defaults it was trained with, config.FORMER_DEFAULTS/FORMER_RECIPE; a
    new one an init_weights file's) and the environments built from it. A new run archives the old one's
    files. Returns (cfg, RunFolder, found checkpoint or None, init_weights file or None, teacher or None, vec,
    the lineage stages before this run)."""
    init, fresh_cfg = agents.read_init_weights(cfg, ROOT, log) if cfg.init_weights else (None, cfg)
    if cfg.wandb_project:
        metrics.require_wandb()
    teacher = read_teacher(cfg)
    files = RunFolder(cfg, run_dir, log)
    found = None if new_run else files.newest(device)
    if found is not None:
        cfg = keep_former_defaults(found[1]["config"], cfg, "the run's checkpoint", log, recipe=True)
        checkpoints.check_shape(found[1]["config"], cfg, "the run's checkpoint", "set {setting} in the config to "
                                "resume it, or start a new run (python run.py --forcenewrun)")
    cfg = cfg if found is not None else fresh_cfg
    vec = envs.make_vector_env(cfg)
    check_memory(cfg, tuple(vec.single_observation_space.shape), int(vec.single_action_space.n), device)
    if found is None:
        files.start_new_run(asked=new_run)
    # the stages before this run: a resumed run's from its checkpoint, a new one's from its init_weights file
    earlier = checkpoints.lineage(found[1])[:-1] if found is not None else checkpoints.lineage(init) if init else []
    return cfg, files, found, init, teacher, vec, earlier


def read_teacher(cfg):
    """Kickstarting's frozen teacher network, or None."""
    if not cfg.teacher:
        return None
    teacher, ckpt = agents.read_teacher(cfg, ROOT)
    log(kv_line("teacher", path=cfg.teacher, architecture=ckpt["config"].get("architecture"),
                trained_steps=checkpoints.trained_steps(ckpt), weight=cfg.teacher_weight,
                until_step=cfg.teacher_steps or "end"))
    return teacher


def make_target_pass(actor, device: torch.device):
    """The worker's target pass (actor.TargetPass) where it computes what the trainer would: a worker process
    on the CPU, and the trainer on one torch thread as the worker is (the same kernels; with several threads
    a kernel may sum in another order, and a run's numbers would follow the machine's timing)."""
    if actor is not None and actor.kind == "process" and device.type == "cpu" and torch.get_num_threads() == 1:
        return actors.TargetPass(actor)
    return None  # (and where the update shifts s' itself, augment_shift: the worker would see it unshifted)


def check_memory(cfg, obs_shape, n_actions: int, device: torch.device) -> None:
    """ConfigError when the replay and the networks (online, target, gradients, Adam's moments) cannot
    fit in the memory available, measured before anything is allocated (from the shapes alone)."""
    params = models.parameter_count(cfg, obs_shape, n_actions)
    image = len(obs_shape) == 3
    replay = ReplayBuffer.bytes_needed(cfg.replay_size, obs_shape, cfg.frame_stack if image else 1, 1 if image else 4)
    # float32: online, target, gradients and Adam's two moments; and what an update holds of the hidden layers'
    # activations for its backward pass (the batch's, and for an SNN over its time steps; the input batch twice)
    steps = cfg.snn_tSteps if cfg.architecture == "snn" else 1
    activations = 4 * 3 * cfg.batch * sum(cfg.hidden_layers) * steps
    networks = (5 * 4 * params + activations) if device.type == "cpu" else 0
    available = utils.available_memory()
    if available is not None and replay + networks > available:
        raise ConfigError(f"the replay ({replay / 2**30:.2f} GiB, replay_size {cfg.replay_size}) and the networks "
                          f"with an update's activations ({networks / 2**30:.2f} GiB, hidden_layers "
                          f"{cfg.hidden_layers}, batch {cfg.batch}) need more memory than the "
                          f"{available / 2**30:.2f} GiB available; lower replay_size, hidden_layers or batch")


def make_actor(cfg, vec, obs_shape: tuple, device: torch.device):
    """The actor the `actor` key asks for (None: the plain loop). A worker process that cannot be
    started falls back to the same blocks stepped in this process, with a warning. With a worker the
    learner leaves it a core: at most (cores - 1) torch threads."""
    kind = actors.wanted(cfg, obs_shape, device)
    if kind == "off":
        return None
    if kind == "process":
        try:
            proc = actors.ProcessActor(cfg)
        except (RuntimeError, OSError) as e:
            log(f"warning: the actor process could not be started ({str(e).splitlines()[0]}); its blocks run in "
                "this process instead (the same learning, no overlap)")
        else:
            vec.close()  # the worker has its own environments
            if device.type == "cpu":
                torch.set_num_threads(max(1, min(torch.get_num_threads(), actors.usable_cpus() - 1)))
            return proc
    return actors.InlineActor(cfg, vec)


def make_replay(cfg, obs_shape) -> tuple[ReplayBuffer, float]:
    """The replay buffer for `obs_shape` (a warning when it will not fit in memory) and its size in MB."""
    image = len(obs_shape) == 3
    stack = cfg.frame_stack if image else 1
    dtype = np.uint8 if image else np.float32
    need = ReplayBuffer.bytes_needed(cfg.replay_size, obs_shape, stack, np.dtype(dtype).itemsize)
    available = utils.available_memory()
    if available is not None and need > 0.8 * available:
        log(f"warning: the replay buffer needs {need / 2**30:.2f} GiB but only {available / 2**30:.2f} GiB of "
            "memory is available; lower replay_size or expect swapping")
    replay = ReplayBuffer(cfg.replay_size, obs_shape, cfg.agents, stack, dtype, prioritized=cfg.prioritized_replay,
                          alpha=cfg.per_alpha)
    return replay, need / 2**20


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a Double-DQN agent (usually started by run.py).")
    parser.add_argument("--config", required=True, help="config JSON (conf.json keys)")
    parser.add_argument("--new-run", action="store_true", help="start the run anew (previous files are archived)")
    one_line_cli_errors(parser, "train.py")
    lock = None
    try:
        args = parser.parse_args(argv)
        cfg = load_config(args.config)
        run_dir = cfg.run_dir(ROOT)
        lock = runlock.RunLock(run_dir).acquire(contract.inherited_lock_fd())  # before the run is touched
        if contract.launcher_pid() is not None:
            runlock.follow_parent(contract.launcher_pid())
        trainer = Trainer(cfg, run_dir, new_run=args.new_run or not cfg.continue_run)
        # the run's config.json changes only once the trainer accepted the config (shape, env, device); it
        # holds what the run trains with (a former default kept from its checkpoint included)
        own = run_dir / "config.json"  # (a new run archived the previous one's)
        if Path(args.config).resolve() != own.resolve() or not own.exists():
            utils.atomic_write_json(own, trainer.cfg.to_dict())
        return trainer.run()
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except HubUnreachable as e:  # not bad input: the launcher tries again after its back-off
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in bout.DISK_ERRNOS:
            raise
        print(f"train.py: error: cannot write to the run folder ({e.strerror}: {e.filename}); free disk space or "
              "make the folder writable, then run again", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
