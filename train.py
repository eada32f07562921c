"""Double-DQN training with SNN or ANN Q-networks, exact resume, metrics and plots.

    python train.py --config PATH [--new-run]

Usually started by `python run.py`, which resolves the config and runs this in bouts. Leaves the
run folder of DESIGN.md: config.json, checkpoints/, metrics.csv, status.json, tensorboard/, plots/.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import envs
import hub
import models
import utils
from replay import ReplayBuffer
from utils import ConfigError, kv_line

# Keys that change the network's parameter shapes: a resume with another value is an error.
SHAPE_KEYS = ("architecture", "hidden_layers", "snn_mode", "env_id", "frame_stack", "obs_size", "obs_grayscale",
              "obs_crop")
BOUT_SECONDS_ENV = "SNNDQN_BOUT_SECONDS"  # set by run.py: this bout's share of train_max_time
EVAL_SEED = 10_000  # evaluation episodes use seeds EVAL_SEED, EVAL_SEED+1, ... (the same tracks every time)
PROGRESS_EVERY_S = 10.0
HUB_FINAL_WAIT_S = 120.0  # the end-of-bout push waits at most this long


def log(msg: str) -> None:
    print(msg, flush=True)


class Trainer:
    def __init__(self, cfg, run_dir: Path, new_run: bool):
        self.cfg = cfg
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.device = models.resolve_device(cfg.device)
        self.stop_signal: int | None = None
        self._seed_everything(cfg.seed)
        init = read_init_weights(cfg) if cfg.init_weights else None  # bad input fails before anything is touched

        if new_run:
            self._archive_previous_run()
        self.vec = envs.make_vector_env(cfg)
        obs_space = self.vec.single_observation_space
        self.n_actions = int(self.vec.single_action_space.n)
        self.obs_shape = tuple(obs_space.shape)
        image = len(self.obs_shape) == 3
        self.q_network = models.build_q_network(cfg, self.obs_shape, self.n_actions).to(self.device)
        self.target_network = models.build_q_network(cfg, self.obs_shape, self.n_actions).to(self.device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=cfg.learning_rate)

        stack = cfg.frame_stack if image else 1
        dtype = np.uint8 if image else np.float32
        need = ReplayBuffer.bytes_needed(cfg.replay_size, self.obs_shape, stack, np.dtype(dtype).itemsize)
        available = _available_memory()
        if available is not None and need > 0.8 * available:
            log(f"warning: the replay buffer needs {need / 2**30:.2f} GiB but only {available / 2**30:.2f} GiB of "
                "memory is available; lower replay_size or expect swapping")
        self.replay = ReplayBuffer(cfg.replay_size, self.obs_shape, cfg.agents, stack, dtype,
                                   prioritized=cfg.prioritized_replay, alpha=cfg.per_alpha)
        self.replay_mb = need / 2**20

        self.rng = np.random.default_rng(cfg.seed)  # exploration and replay sampling
        self.global_step = 0
        self.episode = 0
        self.updates = 0
        self.update_credit = 0.0
        self.epsilon = cfg.epsilon_start
        self.learning_stopped = False
        self.recent_wins: deque = deque(maxlen=100)
        self.recent_returns: deque = deque(maxlen=100)
        self.episode_return = np.zeros(cfg.agents)
        self.episode_length = np.zeros(cfg.agents, dtype=np.int64)
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.last_eval: float | None = None
        self.action_counts = np.zeros(self.n_actions, dtype=np.int64)
        self.obs = None
        self.autoreset = np.zeros(cfg.agents, dtype=bool)

        self.metrics = utils.MetricsLog(run_dir)
        self.hub = self._connect_hub()
        if self.hub is not None and not new_run:
            self._fetch_from_hub()
        resumed = False if new_run else self._resume()
        if not resumed:
            if init is not None:
                self.q_network.load_state_dict(init["q_network"])
                self.target_network.load_state_dict(init["q_network"])
                log(kv_line("init_weights", path=cfg.init_weights,
                            trained_steps=(init.get("trained") or init.get("counters") or {}).get("global_step")))
            self.obs, _ = self.vec.reset(seed=cfg.seed)
            for e in range(cfg.agents):
                self.replay.start(e, self.obs[e])
            self.metrics.truncate_to(0)
            self.metrics.text("hyperparameters", utils.config_table(cfg.to_dict()))

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _archive_previous_run(self) -> None:
        """A new run never deletes the old one's data: it moves it aside."""
        old = [p for p in (self.ckpt_dir, self.run_dir / "metrics.csv", self.run_dir / "tensorboard",
                           self.run_dir / "plots", self.run_dir / "status.json") if p.exists()]
        if not old:
            return
        dest = self.run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        for p in old:
            shutil.move(str(p), str(dest / p.name))
        log(f"new run: the previous run's files were moved to {dest}")

    def _connect_hub(self):
        """With upload_to_cloud, mirror the run to the Hub repo of .env (and resume from it)."""
        env = hub.hub_environment()
        hub.check_upload_settings(self.cfg, env)
        if not self.cfg.upload_to_cloud:
            return None
        return hub.HubMirror(env, self.cfg.run_name, self.run_dir, self.cfg.keep_checkpoints, self.cfg.local_backup,
                             log=log)

    def _fetch_from_hub(self) -> None:
        steps = [int(m.group(1)) for p in self.ckpt_dir.glob("ckpt_*.pt") if (m := hub.CKPT_RE.match(p.name))]
        try:
            self.hub.fetch_newer(max(steps) if steps else None, _loadable)
        except Exception as e:
            self.hub.log(f"could not look for a newer checkpoint on the Hub ({self.hub._describe(e)}); "
                         "resuming from the local files")

    # ------------------------------------------------------------------ acting and learning
    def act(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            if self.cfg.debug and self.global_step % 1000 == 0:
                with models.record_firing_rates(self.q_network) as rates:
                    q = self.q_network(torch.as_tensor(obs, device=self.device))
                for layer, rate in rates.items():
                    self.metrics.scalar(f"debug/firing_rate_{layer}", rate, self.global_step)
            else:
                q = self.q_network(torch.as_tensor(obs, device=self.device))
        greedy = q.argmax(1).cpu().numpy()
        explore = self.rng.random(len(greedy)) < self.epsilon
        random_actions = self.rng.integers(0, self.n_actions, size=len(greedy))
        return np.where(explore, random_actions, greedy)

    def update(self) -> None:
        cfg = self.cfg
        beta = cfg.per_beta + (1 - cfg.per_beta) * min(1.0, self.global_step / max(cfg.total_steps, 1_000_000))
        b = self.replay.sample(cfg.batch, self.rng, beta)
        dev = self.device
        obs = torch.as_tensor(b.observations, device=dev)
        next_obs = torch.as_tensor(b.next_observations, device=dev)
        actions = torch.as_tensor(b.actions, device=dev)
        rewards = torch.as_tensor(b.rewards, device=dev)
        if cfg.reward_clip > 0:
            rewards = rewards.clamp(-cfg.reward_clip, cfg.reward_clip)
        not_done = 1.0 - torch.as_tensor(b.terminateds, device=dev)
        with torch.no_grad():
            # Double DQN: the online network picks the action at s', the target network evaluates it
            next_actions = self.q_network(next_obs).argmax(1, keepdim=True)
            next_q = self.target_network(next_obs).gather(1, next_actions).squeeze(1)
            target = rewards + cfg.gamma * not_done * next_q
        q = self.q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        weights = torch.as_tensor(b.weights, device=dev)
        loss = (weights * F.smooth_l1_loss(q, target, reduction="none")).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.q_network.parameters(), cfg.grad_clip)
            if cfg.debug and self.updates % 100 == 0:
                self.metrics.scalar("debug/grad_norm", float(grad_norm), self.global_step)
        self.optimizer.step()
        if self.replay.prioritized:
            self.replay.update_priorities(b.indices, (target - q).detach().abs().cpu().numpy())
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.updates += 1

    def update_target(self) -> None:
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
        self.loss_sum.zero_()
        self.loss_count = 0
        self.epsilon = max(cfg.epsilon_min, self.epsilon * cfg.decay)
        eval_return = None
        if cfg.eval_every and self.episode % cfg.eval_every == 0:
            eval_return = self.evaluate(cfg.eval_episodes)
        if cfg.record_every and self.episode % cfg.record_every == 0:
            gif = self.run_dir / "videos" / f"episode_{self.episode:06d}.gif"
            ret, _ = envs.record_gif(cfg.replace(lenient_termination=0), lambda env: self.greedy, gif,
                                      seed=EVAL_SEED)
            log(kv_line("recorded", path=f"videos/{gif.name}", greedy_return=round(ret, 2)))
        row = {"episode": self.episode, "global_step": self.global_step, "return": round(ret, 4),
               "length": int(self.episode_length[env]), "epsilon": round(self.epsilon, 6), "win": int(win),
               "loss": None if loss is None else round(loss, 6), "sps": round(sps, 2),
               "wall_time": round(time.time(), 2), "eval_return": eval_return}
        self.metrics.row(row)
        step = self.global_step
        self.metrics.scalar("charts/episodic_return", ret, step)
        self.metrics.scalar("charts/episodic_length", row["length"], step)
        self.metrics.scalar("charts/epsilon", self.epsilon, step)
        self.metrics.scalar("charts/win_rate_100", 100.0 * sum(self.recent_wins) / 100, step)
        self.metrics.scalar("charts/SPS", sps, step)
        if loss is not None:
            self.metrics.scalar("losses/td_loss", loss, step)
        if eval_return is not None:
            self.metrics.scalar("eval/episodic_return", eval_return, step)
        if cfg.debug:
            self.metrics.scalar("debug/replay_size", len(self.replay), step)
            if self.episode % 50 == 1 and len(self.obs_shape) == 3 and self.metrics.writer is not None:
                frames = np.asarray(self.obs[env])[:, None]  # [stack*C, 1, H, W]: a few observation frames
                self.metrics.writer.add_images("debug/observation_frames", frames, step, dataformats="NCHW")
            for a, n in enumerate(self.action_counts):
                self.metrics.scalar(f"debug/action_{a}_share", n / max(1, self.action_counts.sum()), step)
        self.episode_return[env] = 0.0
        self.episode_length[env] = 0
        percent = cfg.stop_learning_at_win_percent
        if percent > 0 and not self.learning_stopped and 100.0 * sum(self.recent_wins) / 100 >= percent:
            self.learning_stopped = True
            log(kv_line("learning_stopped", episode=self.episode, global_step=step,
                        wins_last_100=sum(self.recent_wins), threshold_percent=percent))
            utils.write_status(self.run_dir, False, f"learning stopped: {sum(self.recent_wins)} wins in the last 100 "
                               f"episodes reached stop_learning_at_win_percent={percent:g}", learning_stopped=True,
                               global_step=step, episode=self.episode)
        if self.episode % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def greedy(self, obs) -> int:
        with torch.no_grad():
            return int(self.q_network(torch.as_tensor(np.asarray(obs)[None], device=self.device)).argmax(1))

    def evaluate(self, episodes: int) -> float:
        """Mean return of greedy episodes on fixed seeds (the same tracks every evaluation)."""
        env = envs.make_env(self.cfg)
        try:
            returns = [envs.play_episode(env, self.greedy, seed=EVAL_SEED + i)[0] for i in range(episodes)]
        finally:
            env.close()
        self.last_eval = float(np.mean(returns))
        return round(self.last_eval, 4)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        cfg = self.cfg
        return {
            "format": 1,
            "config": cfg.to_dict(),
            "obs_shape": list(self.obs_shape),
            "n_actions": self.n_actions,
            "q_network": self.q_network.state_dict(),
            "target_network": self.target_network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {"global_step": self.global_step, "episode": self.episode, "updates": self.updates,
                         "update_credit": self.update_credit, "epsilon": self.epsilon,
                         "learning_stopped": self.learning_stopped},
            "history": {"recent_wins": list(self.recent_wins), "recent_returns": list(self.recent_returns),
                        "episode_return": self.episode_return.tolist(),
                        "episode_length": self.episode_length.tolist(),
                        "action_counts": self.action_counts.tolist(), "last_eval": self.last_eval,
                        "loss_sum": float(self.loss_sum), "loss_count": self.loss_count},
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "trainer": self.rng.bit_generator.state},
            "env": {"snapshot": envs.snapshot_vector_env(self.vec), "obs": np.array(self.obs),
                    "autoreset": self.autoreset.copy()},
            "replay": self.replay.state_dict() if cfg.save_replay else None,
        }

    def save_checkpoint(self) -> Path:
        t0 = time.monotonic()
        buf = io.BytesIO()
        torch.save(self.checkpoint_state(), buf)
        path = self.ckpt_dir / f"ckpt_{self.global_step:010d}.pt"
        utils.atomic_write_bytes(path, buf.getvalue())
        for old in sorted(self.ckpt_dir.glob("ckpt_*.pt"))[:-self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        try:
            utils.plot_runs({self.cfg.run_name: self.metrics.path}, self.run_dir / "plots" / "training.png",
                            self.cfg.win_threshold)
        except Exception as e:  # a plot must never stop training
            log(f"warning: could not draw the training plot: {e}")
        log(kv_line("checkpoint", path=path.name, global_step=self.global_step, episode=self.episode,
                    mb=round(len(buf.getvalue()) / 2**20, 1), seconds=round(time.monotonic() - t0, 2)))
        if self.hub is not None:
            self.hub.push()
        return path

    def _resume(self) -> bool:
        found = load_newest_checkpoint(self.ckpt_dir, map_location=self.device)
        if found is None:
            return False
        path, ckpt = found
        old_cfg = ckpt["config"]
        new_cfg = self.cfg.to_dict()
        for key in SHAPE_KEYS:
            if old_cfg.get(key) != new_cfg[key]:
                raise ConfigError(f"config key '{key}' changed from {json.dumps(old_cfg.get(key))} to "
                                  f"{json.dumps(new_cfg[key])} but the run's checkpoint has the other network shape; "
                                  "restore the value or start a new run (python run.py --forcenewrun)")
        changes = utils.describe_changes(old_cfg, new_cfg, ignore=("continue_run",))
        self.q_network.load_state_dict(ckpt["q_network"])
        self.target_network.load_state_dict(ckpt["target_network"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # a changed learning rate applies
            group["lr"] = self.cfg.learning_rate
        if self.cfg.architecture == "snn":  # a changed snn_beta applies (beta is a buffer of each layer)
            for net in (self.q_network, self.target_network):
                for lif in net.lifs:
                    lif.beta.fill_(self.cfg.snn_beta)
        c = ckpt["counters"]
        self.global_step, self.episode, self.updates = c["global_step"], c["episode"], c["updates"]
        self.update_credit, self.epsilon, self.learning_stopped = c["update_credit"], c["epsilon"], c["learning_stopped"]
        h = ckpt["history"]
        self.recent_wins.extend(h["recent_wins"])
        self.recent_returns.extend(h["recent_returns"])
        self.action_counts[:] = h["action_counts"]
        self.last_eval = h["last_eval"]
        self.loss_sum.fill_(h["loss_sum"])
        self.loss_count = h["loss_count"]
        r = ckpt["rng"]
        random.setstate(r["python"])
        np.random.set_state(r["numpy"])
        torch.set_rng_state(r["torch"])
        if r["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(r["cuda"])
        self.rng.bit_generator.state = r["trainer"]
        replay_note = "replay restored"
        if ckpt["replay"] is not None:
            try:
                self.replay.load_state_dict(ckpt["replay"])
            except (ValueError, KeyError) as e:
                replay_note = f"replay not restored ({e}); starting with an empty one"
        else:
            replay_note = "no replay in the checkpoint (save_replay was false); starting with an empty one"
        snap = ckpt["env"]["snapshot"]
        if snap is not None and self.cfg.agents == len(ckpt["env"]["obs"]):
            envs.restore_vector_env(self.vec, snap)
            self.obs = ckpt["env"]["obs"]
            self.autoreset = ckpt["env"]["autoreset"]
            self.episode_return[:] = h["episode_return"]
            self.episode_length[:] = h["episode_length"]
            env_note = "environments restored mid-episode"
        else:
            # Box2D worlds cannot be saved: the interrupted episodes are dropped and new ones start
            self.obs, _ = self.vec.reset(seed=self.cfg.seed + 7919 * (self.episode + 1))
            for e in range(self.cfg.agents):
                self.replay.start(e, self.obs[e])
            env_note = "interrupted episodes restarted"
        self.metrics.truncate_to(self.episode)
        log(kv_line("resumed", checkpoint=path.name, global_step=self.global_step, episode=self.episode,
                    epsilon=round(self.epsilon, 4), note=f"{replay_note}; {env_note}"))
        if changes:
            log("config changes on resume: " + "; ".join(changes))
        return True

    # ------------------------------------------------------------------ main loop
    def budget_reached(self) -> str | None:
        cfg = self.cfg
        if cfg.total_steps and self.global_step >= cfg.total_steps:
            return f"total_steps {cfg.total_steps} reached"
        if cfg.max_episodes and self.episode >= cfg.max_episodes:
            return f"max_episodes {cfg.max_episodes} reached"
        return None

    def run(self) -> int:
        cfg = self.cfg
        bout = cfg.max_run_time
        if os.environ.get(BOUT_SECONDS_ENV):
            bout = min(bout, float(os.environ[BOUT_SECONDS_ENV]))
        deadline = time.monotonic() + bout
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        log(kv_line("start", run=cfg.run_name, architecture=cfg.architecture,
                    snn_mode=cfg.snn_mode if cfg.architecture == "snn" else "-", env=cfg.env_id, agents=cfg.agents,
                    device=self.device, obs_shape="x".join(map(str, self.obs_shape)), replay_mb=round(self.replay_mb),
                    global_step=self.global_step, episode=self.episode, bout_seconds=round(bout)))
        utils.write_status(self.run_dir, False, "training", global_step=self.global_step, episode=self.episode,
                           learning_stopped=self.learning_stopped)
        progress = _Progress(cfg.total_steps, self.global_step)
        sps_t0, sps_steps = time.monotonic(), self.global_step
        sps = 0.0
        reason = finished = None
        try:
            while True:
                finished = self.budget_reached()
                if finished:
                    break
                if self.stop_signal is not None:
                    reason = f"interrupted by {signal.Signals(self.stop_signal).name}"
                    break
                if time.monotonic() >= deadline:
                    reason = f"bout time budget of {bout:.0f} s reached"
                    break
                actions = self.act(self.obs)
                next_obs, rewards, terms, truncs, _ = self.vec.step(actions)
                now = time.monotonic()
                if now - sps_t0 >= 5:
                    sps = (self.global_step - sps_steps) / (now - sps_t0)
                    sps_t0, sps_steps = now, self.global_step
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
                if self.global_step >= cfg.learning_starts and not self.learning_stopped:
                    self.update_credit += real / cfg.train_every
                    while self.update_credit >= 1:
                        self.update()
                        self.update_credit -= 1
                before = self.global_step - real
                if self.global_step // cfg.target_update_every > before // cfg.target_update_every:
                    self.update_target()
                progress.update(self, sps, deadline)
        finally:
            progress.close()
        self.save_checkpoint()
        if finished:
            utils.write_status(self.run_dir, True, finished, global_step=self.global_step, episode=self.episode,
                               learning_stopped=self.learning_stopped)
            log(kv_line("finished", reason=finished, global_step=self.global_step, episode=self.episode))
        else:
            utils.write_status(self.run_dir, False, reason, global_step=self.global_step, episode=self.episode,
                               learning_stopped=self.learning_stopped)
            log(kv_line("stopped", reason=reason, global_step=self.global_step, episode=self.episode))
        self.metrics.close()
        self.vec.close()
        if self.hub is not None:
            self.hub.finish(HUB_FINAL_WAIT_S)
        return 0

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum


class _Progress:
    """A tqdm bar when stdout is a terminal, otherwise a key=value line every few seconds."""

    def __init__(self, total_steps: int, start: int):
        self.bar = None
        self.last = time.monotonic()
        if sys.stdout.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps or None, initial=start, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None
        self.shown = start

    @staticmethod
    def _mean100(t: Trainer) -> float:
        return float(np.mean(t.recent_returns)) if t.recent_returns else float("nan")

    def update(self, t: Trainer, sps: float, deadline: float) -> None:
        """Called every loop iteration: anything beyond a counter update happens only when shown."""
        if self.bar is not None:
            self.bar.update(t.global_step - self.shown)
            self.shown = t.global_step
            if t.global_step % 50 == 0:
                self.bar.set_postfix(ep=t.episode, ret100=f"{self._mean100(t):.1f}", eps=f"{t.epsilon:.3f}",
                                     refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(kv_line("progress", global_step=t.global_step, episode=t.episode, sps=round(sps, 1),
                          mean_return_100=round(self._mean100(t), 2), epsilon=round(t.epsilon, 4), replay=len(t.replay),
                          bout_left_s=round(max(0.0, deadline - now))), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    """A training checkpoint, or an exception saying why the file is not one."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "q_network" not in ckpt:
        raise ValueError("not a training checkpoint")
    return ckpt


def load_newest_checkpoint(ckpt_dir: Path, map_location="cpu"):
    """(path, checkpoint) of the newest loadable checkpoint; a corrupt newer one is skipped with a warning."""
    for path in sorted(Path(ckpt_dir).glob("ckpt_*.pt"), reverse=True):
        try:
            return path, read_checkpoint(path, map_location)
        except Exception as e:
            log(f"warning: checkpoint {path.name} cannot be loaded ({type(e).__name__}: {str(e)[:120]}); "
                "falling back to the previous one")
    return None


def read_init_weights(cfg) -> dict:
    """The checkpoint named by `init_weights`, checked against the config's network shape."""
    path = Path(cfg.init_weights)
    if not path.is_absolute() and not path.exists():
        path = Path(__file__).resolve().parent / path
    if not path.is_file():
        raise ConfigError(f"config key 'init_weights': {cfg.init_weights} does not exist; give a pretrained/*.pt file "
                          "or a checkpoint, or \"\" for random weights")
    try:
        ckpt = read_checkpoint(path)
    except Exception as e:
        raise ConfigError(f"config key 'init_weights': {path} cannot be loaded ({type(e).__name__}); "
                          "is it a complete checkpoint of this toolkit?") from None
    old = ckpt.get("config", {})
    for key in SHAPE_KEYS:
        if old.get(key) != getattr(cfg, key):
            raise ConfigError(f"config key 'init_weights': {path} has {key}={json.dumps(old.get(key))} but the config "
                              f"says {json.dumps(getattr(cfg, key))}; use the same network shape")
    return ckpt


def _loadable(path: Path) -> bool:
    try:
        read_checkpoint(path)
        return True
    except Exception:
        return False


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a Double-DQN agent (usually started by run.py).")
    parser.add_argument("--config", required=True, help="config JSON (conf.json keys)")
    parser.add_argument("--new-run", action="store_true", help="start the run anew (previous files are archived)")
    utils.one_line_cli_errors(parser, "train.py")
    try:
        args = parser.parse_args(argv)
        cfg = utils.load_config(args.config)
        run_dir = cfg.run_dir(Path(__file__).resolve().parent)
        config_path = Path(args.config).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_path != (run_dir / "config.json").resolve():
            utils.atomic_write_json(run_dir / "config.json", cfg.to_dict())
        trainer = Trainer(cfg, run_dir, new_run=args.new_run or not cfg.continue_run)
        return trainer.run()
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
