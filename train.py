"""Double-DQN training with SNN or ANN Q-networks, exact resume, metrics and plots.

    python train.py --config PATH [--new-run]

Usually started by `python run.py`, which resolves the config and runs this in bouts. Leaves the run
folder of the README: config.json, checkpoints/, metrics.csv, status.json, tensorboard/, plots/.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import actor as actors
import bout
import agents
import checkpoints
import contract
import envs
import hub
import metrics
import models
import runlock
import utils
from config import (ConfigError, as_trained, check_upload_settings, keep_former_defaults, load_config,
                    one_line_cli_errors)
from replay import ReplayBuffer
from bout import log
from utils import kv_line

EVAL_SEED = 10_000  # held-out evaluation tracks: seeds EVAL_SEED, EVAL_SEED+1, ... (never the table's 0-49)
ROOT = Path(__file__).resolve().parent




class Trainer:
    """The Double-DQN loop over one run folder: act, store, learn, and at episode ends log and checkpoint."""

    def __init__(self, cfg, run_dir: Path, new_run: bool):
        self.cfg = cfg
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.device = models.resolve_device(cfg.device)
        seed_everything(cfg.seed)
        # bad input fails before anything of the run is touched
        init, fresh_cfg = agents.read_init_weights(cfg, ROOT, log) if cfg.init_weights else (None, cfg)
        check_upload_settings(cfg, hub.hub_environment())
        if cfg.wandb_project:
            metrics.require_wandb()

        self.vec = envs.make_vector_env(cfg)
        self.n_actions = int(self.vec.single_action_space.n)
        self.obs_shape = tuple(self.vec.single_observation_space.shape)
        check_memory(cfg, self.obs_shape, self.n_actions, self.device)  # refuse before allocating
        self.teacher = None
        if cfg.teacher:  # kickstarting: a frozen agent whose Q-values the network also learns to match
            self.teacher, teacher_ckpt = agents.read_teacher(cfg, ROOT)
            log(kv_line("teacher", path=cfg.teacher, architecture=teacher_ckpt["config"].get("architecture"),
                        trained_steps=checkpoints.trained_steps(teacher_ckpt), weight=cfg.teacher_weight,
                        until_step=cfg.teacher_steps or "end"))
        if new_run:
            archive_previous_run(run_dir)
        # the checkpoint to continue from comes before the networks: a run keeps the former default of a
        # shape key the config leaves at today's (config.FORMER_DEFAULTS), a fresh one an init_weights file's
        self.hub = connect_hub(cfg, run_dir, fetch=not new_run)
        found = None if new_run else checkpoints.load_newest(self.ckpt_dir, map_location=self.device, log=log)
        if found is not None:
            cfg = keep_former_defaults(found[1]["config"], cfg, "the run's checkpoint", log, recipe=True)
        else:
            cfg = fresh_cfg
        self.cfg = cfg
        self.actor = make_actor(cfg, self.vec, self.obs_shape, self.device)
        if self.actor is not None:
            self.vec = self.actor  # the actor owns the environments: reset, snapshot and close go through it
        self.q_network = models.build_q_network(cfg, self.obs_shape, self.n_actions).to(self.device)
        self.target_network = models.build_q_network(cfg, self.obs_shape, self.n_actions).to(self.device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)
        # with a worker process on the CPU the worker runs the target network's pass over each update's s'
        # (the same pass on the same weights) while the trainer runs the rest of the update; only where the
        # trainer has one torch thread, as the worker has (2 cores): the same kernels, so the same numbers
        # whichever runs it — with several threads a kernel may sum in another order, and a run's numbers
        # would depend on the choice, which follows the machine's timing (actor.TargetSplit)
        self.remote_target = (self.actor is not None and self.actor.kind == "process" and self.device.type == "cpu"
                              and torch.get_num_threads() == 1)
        self.target_version = 0  # counts the target network's changes (the worker's copy follows it)
        self.target_split = actors.TargetSplit()  # whether that pays on this machine now
        self.prefetched = None  # the batch of the next update, sampled before its block started
        if self.actor is not None:
            self.actor.attach(self.q_network, self.target_network if self.remote_target else None)
        self.optimizer = make_adam(self.q_network.parameters(), cfg.learning_rate)
        self.replay, self.replay_mb = make_replay(cfg, self.obs_shape)
        self.replay_segments = checkpoints.ReplaySegments(self.ckpt_dir)  # the replay's frames on disk

        self.rng = np.random.default_rng(cfg.seed)  # exploration and replay sampling
        self.global_step = self.episode = self.updates = 0
        self.update_credit = 0.0
        self.epsilon = cfg.epsilon_start
        self.learning_stopped = False
        self.recent_wins: deque = deque(maxlen=100)
        self.recent_returns: deque = deque(maxlen=100)
        self.episode_return = np.zeros(cfg.agents)
        self.episode_length = np.zeros(cfg.agents, dtype=np.int64)
        self.episode_skipped = np.zeros(cfg.agents, dtype=np.int64)  # tiles cut (skip_penalty on)
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.teacher_loss_sum = torch.zeros((), device=self.device)  # since the last episode's end
        self.last_eval: float | None = None
        self.best_eval: float | None = None
        self.action_counts = np.zeros(self.n_actions, dtype=np.int64)
        self.obs = None
        self.autoreset = np.zeros(cfg.agents, dtype=bool)
        self.checkpoint_due = False
        self.sps = 0.0

        if found is None and not new_run:  # nothing to continue from: keep what is there, never wipe it
            archive_previous_run(run_dir, why="no checkpoint of the run could be loaded")
        if found is None and self.hub is not None:  # and the Hub folder holds this run alone
            self.hub.start_new_run(time.strftime("%Y%m%d-%H%M%S"))
        self.metrics = metrics.MetricsLog(run_dir, cfg=cfg)
        if found is not None:
            self._resume(*found)
        else:
            self._start_fresh(init)

    # ------------------------------------------------------------------ setup
    def _start_fresh(self, init: dict | None) -> None:
        if init is not None:
            self.q_network.load_state_dict(init["q_network"])
            self.target_network.load_state_dict(init["q_network"])
            extra = {"head": init["converted"]} if "converted" in init else {}
            log(kv_line("init_weights", path=self.cfg.init_weights, trained_steps=checkpoints.trained_steps(init),
                        **extra))
        self.obs = self.reset_envs(self.cfg.seed)
        for e in range(self.cfg.agents):
            self.replay.start(e, self.obs[e])
        self.metrics.text("hyperparameters", metrics.config_table(self.cfg.to_dict()))

    # ------------------------------------------------------------------ acting and learning
    def reset_envs(self, seed: int) -> np.ndarray:
        return self.actor.reset(seed) if self.actor is not None else self.vec.reset(seed=seed)[0]

    def act(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            if self.cfg.debug and self.global_step % 1000 == 0:
                q = self.record_firing_rates(obs)
            else:
                q = self.q_network(torch.as_tensor(obs, device=self.device))
        greedy = q.argmax(1).cpu().numpy()
        explore = self.rng.random(len(greedy)) < self.epsilon
        random_actions = self.rng.integers(0, self.n_actions, size=len(greedy))
        return np.where(explore, random_actions, greedy)

    def record_firing_rates(self, obs: np.ndarray) -> torch.Tensor:
        """debug: the Q-values of `obs`, with each spiking layer's firing rate logged."""
        with torch.no_grad(), models.record_firing_rates(self.q_network) as rates:
            q = self.q_network(torch.as_tensor(obs, device=self.device))
        for layer, rate in rates.items():
            self.metrics.scalar(f"debug/firing_rate_{layer}", rate, self.global_step)
        return q

    def sample(self):
        cfg = self.cfg
        beta = cfg.per_beta + (1 - cfg.per_beta) * min(1.0, self.global_step / max(cfg.total_steps, 1_000_000))
        return self.replay.sample(cfg.batch, self.rng, beta, cfg.n_step, cfg.gamma, cfg.reward_clip)

    def update(self) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        b, self.prefetched = self.prefetched, None
        remote = b is not None  # sampled before its block started: the worker runs the target's pass
        if b is None:
            b = self.sample()
        dev = self.device
        obs = torch.as_tensor(b.observations, device=dev)
        actions = torch.as_tensor(b.actions, device=dev)
        rewards = torch.as_tensor(b.rewards, device=dev)
        if cfg.reward_clip > 0 and b.discounts is None:  # n-step sums were clipped per step in the replay
            rewards = rewards.clamp(-cfg.reward_clip, cfg.reward_clip)
        not_done = 1.0 - torch.as_tensor(b.terminateds, device=dev)
        discount = cfg.gamma if b.discounts is None else torch.as_tensor(b.discounts, device=dev)
        with torch.no_grad():
            next_obs = models.network_input(self.q_network, torch.as_tensor(b.next_observations, device=dev))
            # Double DQN: the online network picks the action at s', the target network evaluates it
            next_actions = self.q_network(next_obs).argmax(1, keepdim=True)
            if not remote:  # (converted once for both networks)
                target_q = self.target_network(next_obs)
        q_all = self.q_network(obs)
        if remote:  # the worker ran the target network's pass meanwhile, on the same weights
            target_q = self.actor.target_q()
        target = rewards + discount * not_done * target_q.gather(1, next_actions).squeeze(1)
        q = q_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        weights = torch.as_tensor(b.weights, device=dev)
        td_loss = loss = (weights * F.smooth_l1_loss(q, target, reduction="none")).mean()
        teacher_weight = self.teacher_weight()
        if teacher_weight > 0:
            with torch.no_grad():
                teacher_q = self.teacher(obs)
            # centred (each row minus its mean): the policy and the gaps between actions, not the teacher's
            # level of Q, which another reward setting or network puts elsewhere (a level pull wrecks the TD fit)
            teacher_loss = F.smooth_l1_loss(q_all - q_all.mean(1, keepdim=True),
                                            teacher_q - teacher_q.mean(1, keepdim=True))
            loss = td_loss + teacher_weight * teacher_loss
            self.teacher_loss_sum += teacher_loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.q_network.parameters(), cfg.grad_clip)
            if cfg.debug and self.updates % 100 == 0:
                self.metrics.scalar("debug/grad_norm", float(grad_norm), self.global_step)
        self.optimizer.step()
        if self.replay.prioritized:
            self.replay.update_priorities(b.indices, (target - q).detach().abs().cpu().numpy())
        if remote:
            self.target_split.update_done(time.perf_counter() - started, self.actor.answer_wait,
                                          self.actor.target_seconds)
        elif self.remote_target:
            self.target_split.update_done(time.perf_counter() - started)
        self.loss_sum += td_loss.detach()
        self.loss_count += 1
        self.updates += 1

    def follow_schedules(self) -> None:
        """ε and the learning rate at this agent step, where they follow a schedule by agent steps."""
        cfg = self.cfg
        if cfg.epsilon_decay_steps:
            self.epsilon = linear(cfg.epsilon_start, cfg.epsilon_min, self.global_step, cfg.epsilon_decay_steps)
        if cfg.learning_rate_decay_steps:
            lr = linear(cfg.learning_rate, cfg.learning_rate_final, self.global_step, cfg.learning_rate_decay_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def teacher_weight(self) -> float:
        """The teacher's loss weight now: `teacher_weight`, falling linearly to 0 over `teacher_steps`."""
        cfg = self.cfg
        if self.teacher is None:
            return 0.0
        if not cfg.teacher_steps:
            return cfg.teacher_weight
        return cfg.teacher_weight * max(0.0, 1.0 - self.global_step / cfg.teacher_steps)

    def update_target(self) -> None:
        self.target_version += 1
        tau = self.cfg.target_tau
        if tau >= 1.0:
            self.target_network.load_state_dict(self.q_network.state_dict())
            return
        with torch.no_grad():
            for t, o in zip(self.target_network.parameters(), self.q_network.parameters()):
                t.lerp_(o, tau)

    # ------------------------------------------------------------------ episodes
    def end_episode(self, env: int, sps: float) -> None:
        cfg = self.cfg
        self.episode += 1
        ret = float(self.episode_return[env])
        win = ret >= cfg.win_threshold
        self.recent_wins.append(win)
        self.recent_returns.append(ret)
        loss = float(self.loss_sum) / self.loss_count if self.loss_count else None
        teacher_loss = float(self.teacher_loss_sum) / self.loss_count if self.loss_count else None
        self.loss_sum.zero_()
        self.teacher_loss_sum.zero_()
        self.loss_count = 0
        if not cfg.epsilon_decay_steps:
            self.epsilon = max(cfg.epsilon_min, self.epsilon * cfg.decay)
        eval_return = held_out_evaluation(self, cfg.eval_episodes) if cfg.eval_every and self.episode % cfg.eval_every == 0 else None
        if cfg.record_every and self.episode % cfg.record_every == 0:
            record_gif(self)
        row = {"episode": self.episode, "global_step": self.global_step, "return": round(ret, 4),
               "length": int(self.episode_length[env]), "epsilon": round(self.epsilon, 6), "win": int(win),
               "loss": None if loss is None else round(loss, 6), "sps": round(sps, 2),
               "wall_time": round(time.time(), 2), "eval_return": eval_return,
               "skipped_tiles": int(self.episode_skipped[env]) if cfg.skip_penalty else None}
        self.metrics.row(row)
        self.metrics.episode_scalars(self.global_step, ret, row["length"], self.epsilon,
                                     100.0 * sum(self.recent_wins) / 100, sps, loss, eval_return)
        if cfg.skip_penalty:
            self.metrics.scalar("charts/skipped_tiles", row["skipped_tiles"], self.global_step)
        if self.teacher is not None:
            teacher_weight = self.teacher_weight()
            self.metrics.scalar("charts/teacher_weight", teacher_weight, self.global_step)
            if teacher_loss is not None and teacher_weight > 0:  # annealed away: nothing to log
                self.metrics.scalar("losses/teacher_loss", teacher_loss, self.global_step)
        if cfg.debug:
            log_debug(self, env)
        self.episode_return[env] = 0.0
        self.episode_length[env] = 0
        self.episode_skipped[env] = 0
        apply_win_rule(self)
        if self.episode % cfg.checkpoint_every == 0:
            self.checkpoint_due = True  # written at the end of the step, when the state is whole

    def greedy(self, obs) -> int:
        return models.greedy_action(self.q_network, obs, self.device)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Between steps only: the observation, autoreset flags and updates of the last step are in."""
        if self.actor is not None and self.actor.busy:  # a stop mid-block: its steps and updates go in first
            self._finish_block(self.actor.collect())
        self.checkpoint_due = False
        t0 = time.monotonic()
        snapshot = self.actor.snapshot() if self.actor is not None else envs.snapshot_vector_env(self.vec)
        state = checkpoints.capture(self, snapshot)
        path, size = checkpoints.write(self.ckpt_dir, state, self.cfg.keep_checkpoints)
        seconds = time.monotonic() - t0
        try:
            metrics.plot_runs({self.cfg.run_name: self.metrics.path}, self.run_dir / "plots" / "training.png",
                              self.cfg.win_threshold)
        except Exception as e:  # a plot must never stop training
            log(f"warning: could not draw the training plot: {e}")
        log(kv_line("checkpoint", path=path.name, global_step=self.global_step, episode=self.episode,
                    mb=round((size + self.replay_segments.last_bytes) / 2**20, 1),
                    seconds=round(seconds, 2)))
        if self.hub is not None:
            self.hub.push()
        return path

    def _resume(self, path: Path, ckpt: dict) -> None:
        replay_note, env_state = checkpoints.restore(self, ckpt)
        if self.cfg.architecture == "snn":  # a changed snn_beta applies (beta is a buffer of each layer)
            for net in (self.q_network, self.target_network):
                for lif in net.lifs:
                    lif.beta.fill_(self.cfg.snn_beta)
        if env_state is not None:
            self.obs, self.autoreset = env_state["obs"], env_state["autoreset"]
            if self.actor is not None:
                self.actor.restore(env_state["snapshot"], self.obs)
            else:
                envs.restore_vector_env(self.vec, env_state["snapshot"])
            env_note = "environments restored mid-episode"
        else:
            # Box2D worlds cannot be saved: the interrupted episodes are dropped and new ones start
            self.obs = self.reset_envs(self.cfg.seed + 7919 * (self.episode + 1))
            for e in range(self.cfg.agents):
                self.replay.start(e, self.obs[e])
            env_note = "interrupted episodes restarted"
        cut = self.metrics.truncate_to(self.episode, self.run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S"))
        if cut:
            log(f"warning: metrics.csv had {cut['rows']} rows past the checkpoint's episode {self.episode} (written "
                f"after it); they were moved to {cut['path']}")
        log(kv_line("resumed", checkpoint=path.name, global_step=self.global_step, episode=self.episode,
                    epsilon=round(self.epsilon, 4), note=f"{replay_note}; {env_note}"))
        # a key the checkpoint predates counts as changed where the run behaved otherwise without it
        changes = utils.describe_changes(as_trained(ckpt["config"]), self.cfg.to_dict(), ignore=("continue_run",))
        if changes:
            log("config changes on resume: " + "; ".join(changes))
        self._rebase_best()

    def _rebase_best(self) -> None:
        """A best.pt scored with another eval_episodes is not comparable: it goes to the archive and the
        next evaluation sets the bar anew."""
        path = self.run_dir / checkpoints.BEST_NAME
        if self.best_eval is None or not path.is_file():
            return
        try:
            episodes = (checkpoints.read(path).get("evaluation") or {}).get("episodes")
        except Exception:
            episodes = None
        if episodes == self.cfg.eval_episodes:
            return
        dest = self.run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest / path.name))
        log(f"note: {path.name} was scored over {episodes} episodes, eval_episodes is now {self.cfg.eval_episodes}; "
            f"it was moved to {dest} and the next evaluation sets the best anew")
        self.best_eval = None

    # ------------------------------------------------------------------ main loop
    def budget_reached(self) -> str | None:
        cfg = self.cfg
        if cfg.total_steps and self.global_step >= cfg.total_steps:
            return f"total_steps {cfg.total_steps} reached"
        if cfg.max_episodes and self.episode >= cfg.max_episodes:
            return f"max_episodes {cfg.max_episodes} reached"
        return None

    def step(self, sps: float) -> None:
        """One step of every environment, the transitions stored, then the updates they pay for (with an
        actor: one block of steps, stored, the next block started, then the updates)."""
        self.sps = sps
        if self.actor is not None:
            self._step_block()
            return
        actions = self.act(self.obs)
        real = self._store(actions, *self.vec.step(actions))
        self._learn(real)
        if self.checkpoint_due:
            self.save_checkpoint()

    def _step_block(self) -> None:
        if not self.actor.busy:  # the first block of a bout, or the one after a checkpoint: current weights
            self._start_block()
        block = self.actor.collect()
        if self.remote_target:
            self.target_split.block_played(self.actor.play_seconds)
        self._finish_block(block, start_next=True)
        if self.checkpoint_due:
            self.save_checkpoint()

    def _start_block(self, prefetch: bool = False) -> None:
        """Publish the online network and let the actor step the next block (ε's coins drawn here). With
        `prefetch` the first update this block pays for samples its batch now (after the coins, the order
        of the plain loop's draws), and the worker runs the target network's pass over its s' before it plays."""
        cfg = self.cfg
        steps = max(1, cfg.train_every // cfg.agents)
        if cfg.total_steps:  # no step past the budget
            steps = max(1, min(steps, -(-(cfg.total_steps - self.global_step) // cfg.agents)))
        plan = actors.plan_block(self.rng, steps, cfg.agents, self.epsilon, self.n_actions)
        if prefetch:
            self.prefetched = self.sample()
        self.actor.start(plan, self.prefetched.next_observations if prefetch else None, self.target_version)

    def _learning(self) -> bool:
        return self.global_step >= self.cfg.learning_starts and not self.learning_stopped

    def _updates_due(self, real: int) -> bool:
        """Whether `_learn(real)` will run an update (its test, on the same numbers)."""
        return self._learning() and self.update_credit + real / self.cfg.train_every >= 1

    def _finish_block(self, block: list, start_next: bool = False) -> None:
        """Store a block's steps; start the next one (unless a checkpoint or the budget comes first: a
        checkpoint is taken with the actor idle); then run the updates the block paid for."""
        real = 0
        for actions, *result in block:
            if self.cfg.debug and (self.global_step + 1) % 1000 == 0:
                self.record_firing_rates(self.obs)
            real += self._store(actions, *result)
        if start_next and not self.checkpoint_due and self.budget_reached() is None:
            self._start_block(prefetch=self.remote_target and self.target_split.wanted() and self._updates_due(real))
        self._learn(real)

    def _store(self, actions, next_obs, rewards, terms, truncs, infos) -> int:
        """One vector step's transitions into the replay, with the episodes that ended; the real steps."""
        cfg, sps = self.cfg, self.sps
        if "skipped_tiles" in infos:  # SkipPenalty charged some env this step
            self.episode_skipped += np.where(infos["_skipped_tiles"], infos["skipped_tiles"], 0)
        real = 0
        for e in range(cfg.agents):
            if self.autoreset[e]:  # this step only reset env e: not a transition
                self.replay.start(e, next_obs[e])
                continue
            real += 1
            self.global_step += 1
            self.action_counts[actions[e]] += 1
            self.replay.add(e, int(actions[e]), float(rewards[e]), bool(terms[e]), next_obs[e])
            self.episode_return[e] += rewards[e]
            self.episode_length[e] += 1
            if terms[e] or truncs[e]:
                self.end_episode(e, sps)
        self.autoreset = terms | truncs
        self.obs = next_obs
        return real

    def _learn(self, real: int) -> None:
        """The updates `real` new agent steps pay for, and the target update when they cross its period."""
        cfg = self.cfg
        self.follow_schedules()
        if self._learning():
            self.update_credit += real / cfg.train_every
            while self.update_credit >= 1:
                self.update()
                self.update_credit -= 1
        before = self.global_step - real
        if self.global_step // cfg.target_update_every > before // cfg.target_update_every:
            self.update_target()

    def run(self) -> int:
        """One bout: train until a budget, the bout's time or a signal stops it; checkpoint; exit code."""
        return bout.Bout(self).run()


def held_out_returns(t: Trainer, episodes: int) -> list[float]:
    """Returns of full greedy episodes (no lenient termination) on the held-out tracks EVAL_SEED,
    EVAL_SEED+1, ... With an actor, the actor plays the second half of the tracks with the current
    weights while the trainer plays the first (in a worker process: at the same time, on the core the
    actor's blocks use) — the same episodes, in half the time."""
    seeds = [EVAL_SEED + i for i in range(episodes)]
    split = (episodes + 1) // 2 if t.actor is not None else episodes
    theirs = seeds[split:]
    if theirs:
        t.actor.start_evaluation(theirs)
    try:
        mine = envs.evaluation_returns(t.cfg, t.greedy, seeds[:split])
    finally:
        their_returns = t.actor.finish_evaluation() if theirs else []
    return mine + their_returns


def held_out_evaluation(t: Trainer, episodes: int) -> float:
    """Mean return of the held-out episodes (held_out_returns), the same tracks every time; the best so
    far is kept as best.pt (weights + config, the --export format)."""
    returns = held_out_returns(t, episodes)
    t.last_eval = float(np.mean(returns))
    log(kv_line("eval", episode=t.episode, global_step=t.global_step, episodes=episodes,
                mean=round(t.last_eval, 2), min=round(min(returns), 2), max=round(max(returns), 2),
                best=round(max(t.last_eval, t.best_eval if t.best_eval is not None else -1e9), 2)))
    if t.best_eval is None or t.last_eval > t.best_eval:
        t.best_eval = t.last_eval
        checkpoints.write_best(t.run_dir / checkpoints.BEST_NAME, checkpoints.capture_weights(t),
                               {"mean": t.last_eval, "episodes": episodes, "seeds": f"{EVAL_SEED}+"})
    return round(t.last_eval, 4)


def apply_win_rule(t: Trainer) -> None:
    """stop_learning_at_win_percent: once enough of the last 100 episodes are wins, stop updating."""
    percent = t.cfg.stop_learning_at_win_percent
    wins = sum(t.recent_wins)
    if percent <= 0 or t.learning_stopped or 100.0 * wins / 100 < percent:
        return
    t.learning_stopped = True
    log(kv_line("learning_stopped", episode=t.episode, global_step=t.global_step, wins_last_100=wins,
                threshold_percent=percent))
    contract.write_status(t.run_dir, False, f"learning stopped: {wins} wins in the last 100 episodes reached "
                       f"stop_learning_at_win_percent={percent:g}", learning_stopped=True,
                       global_step=t.global_step, episode=t.episode)


def linear(start: float, end: float, step: int, steps: int) -> float:
    """A value falling (or rising) linearly from `start` at step 0 to `end` at `steps`, then held."""
    return start + (end - start) * min(1.0, step / steps)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch has the kernel for the parameters' device (CPU and CUDA since torch
    2.4): one pass over the parameters per step instead of one per operation, 22 -> 5 ms a step for the
    CarRacing network on one CPU thread; the same arithmetic up to float rounding (tests compare)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def check_memory(cfg, obs_shape, n_actions: int, device: torch.device) -> None:
    """ConfigError when the replay and the networks (online, target, gradients, Adam's moments) cannot
    fit in the memory available, measured before anything is allocated (from the shapes alone)."""
    params = models.parameter_count(cfg, obs_shape, n_actions)
    image = len(obs_shape) == 3
    replay = ReplayBuffer.bytes_needed(cfg.replay_size, obs_shape, cfg.frame_stack if image else 1, 1 if image else 4)
    networks = 5 * 4 * params if device.type == "cpu" else 0  # float32 x 5 copies
    available = utils.available_memory()
    if available is not None and replay + networks > available:
        raise ConfigError(f"the replay ({replay / 2**30:.2f} GiB, replay_size {cfg.replay_size}) and the networks "
                          f"({networks / 2**30:.2f} GiB, hidden_layers {cfg.hidden_layers}) need more memory than "
                          f"the {available / 2**30:.2f} GiB available; lower replay_size or hidden_layers")


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


def archive_previous_run(run_dir: Path, why: str | None = None) -> None:
    """A new run never deletes the old one's data: it moves it to archive/<time>/ (with a warning
    line when `why` says the run could not be continued)."""
    old = [p for p in (run_dir / "checkpoints", run_dir / "metrics.csv", run_dir / "tensorboard", run_dir / "plots",
                       run_dir / "status.json") if p.exists()]
    if not old:
        return
    dest = run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in old:
        shutil.move(str(p), str(dest / p.name))
    if why:
        log(f"warning: {why}; starting the run anew and the previous files were moved to {dest}")
    else:
        log(f"new run: the previous run's files were moved to {dest}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def connect_hub(cfg, run_dir: Path, fetch: bool):
    """With upload_to_cloud, a mirror of the run to the Hub repo of .env; with `fetch`, the Hub's
    newest checkpoint is downloaded first when it is newer than the local one."""
    env = hub.hub_environment()
    check_upload_settings(cfg, env)
    if not cfg.upload_to_cloud:
        return None
    mirror = hub.HubMirror(env, cfg.run_name, run_dir, cfg.keep_checkpoints, cfg.local_backup, log=log)
    if fetch:
        try:
            mirror.fetch_newer(checkpoints.newest_verified_step(run_dir / "checkpoints"))
        except Exception as e:
            mirror.log(f"could not look for a newer checkpoint on the Hub ({mirror.describe(e)}); "
                       "resuming from the local files")
    return mirror


def record_gif(t: Trainer) -> None:
    """A GIF of one greedy full episode into the run's videos/ (record_every)."""
    gif = t.run_dir / "videos" / f"episode_{t.episode:06d}.gif"
    ret, _ = envs.record_gif(t.cfg.for_evaluation(), lambda env: t.greedy, gif, seed=EVAL_SEED)
    log(kv_line("recorded", path=f"videos/{gif.name}", greedy_return=round(ret, 2)))


def log_debug(t: Trainer, env: int) -> None:
    """debug: replay fill, a few observation frames and the action histogram."""
    step = t.global_step
    t.metrics.scalar("debug/replay_size", len(t.replay), step)
    if t.episode % 50 == 1 and len(t.obs_shape) == 3 and t.metrics.writer is not None:
        frames = np.asarray(t.obs[env])[:, None]  # [stack*C, 1, H, W]: a few observation frames
        t.metrics.writer.add_images("debug/observation_frames", frames, step, dataformats="NCHW")
    for a, n in enumerate(t.action_counts):
        t.metrics.scalar(f"debug/action_{a}_share", n / max(1, t.action_counts.sum()), step)


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
        lock = runlock.RunLock(run_dir).acquire()  # before anything of the run is touched
        if contract.launcher_pid() is not None:
            runlock.follow_parent(contract.launcher_pid())
        trainer = Trainer(cfg, run_dir, new_run=args.new_run or not cfg.continue_run)
        # the run's config.json changes only once the trainer accepted the config (shape, env, device); it
        # holds what the run trains with (a former default kept from its checkpoint included)
        if Path(args.config).resolve() != (run_dir / "config.json").resolve():
            utils.atomic_write_json(run_dir / "config.json", trainer.cfg.to_dict())
        return trainer.run()
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
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
