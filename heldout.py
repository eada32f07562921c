"""The in-run greedy evaluation on held-out tracks, the run's `best.pt`, and the GIFs of `record_every`.

Held-out tracks are the seeds EVAL_SEED, EVAL_SEED+1, ... — never the evaluation table's 0-49 — played as
full greedy episodes without the training aids (lenient termination, skip penalty).

Choosing the best of many noisy evaluations favours a lucky one, so the in-run winner is confirmed before a
run ends: the best `eval_candidates` evaluations' weights are kept in `candidates/` (mirrored to the Hub with
the run, so a fresh machine confirms them too), and when the run
finishes each plays `eval_confirm_episodes` more tracks (seeds CONFIRM_SEED+); best.pt becomes the candidate
with the best mean over both sets. That mean still favours the winner (it chose it), so the winner then plays
as many tracks again that no choice has seen (seeds SCORE_SEED+): their mean is the score best.pt carries, an
unbiased estimate of what it does on any tracks (the selection gap, docs/results.md#from-scratch).
"""
from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

import agents
import checkpoints
import contract
import envs
import models
from utils import kv_line

EVAL_SEED = 10_000
CONFIRM_SEED = 20_000  # the second held-out set that confirms the candidates
SCORE_SEED = 30_000  # the third: scores the confirmed winner, chosen by neither set before
CANDIDATES = contract.CANDIDATES  # in the run folder, mirrored with it
FORMER_CANDIDATES = ".candidates"  # where runs before the mirror kept them (moved on first use)


def returns(cfg, greedy: Callable, episodes: int, actor=None) -> list[float]:
    """Returns of `episodes` full greedy episodes on the held-out tracks, in seed order. With an actor, the
    actor plays the second half of the tracks with the current weights while this process plays the first
    (in a worker process: at the same time, on the core the actor's blocks use) — the same episodes, in
    half the time."""
    seeds = [EVAL_SEED + i for i in range(episodes)]
    split = (episodes + 1) // 2 if actor is not None else episodes
    theirs = seeds[split:]
    if theirs:
        actor.start_evaluation(theirs)
    try:
        mine = envs.evaluation_returns(cfg, greedy, seeds[:split])
    finally:
        their_returns = actor.finish_evaluation() if theirs else []
    return mine + their_returns


def evaluate(cfg, greedy: Callable, actor, state, run_dir: Path, weights: Callable[[], dict],
             log: Callable[[str], None]) -> float:
    """One held-out evaluation of `greedy` (`eval_episodes` tracks) into `state` (last_eval, best_eval); a
    new best mean writes best.pt (the weights-only file `weights()`, with how it was scored). Returns the
    mean, rounded for metrics.csv."""
    episodes = cfg.eval_episodes
    scores = returns(cfg, greedy, episodes, actor)
    state.last_eval = float(np.mean(scores))
    scored = {"mean": state.last_eval, "episodes": episodes, "seeds": f"{EVAL_SEED}+"}
    if state.best_eval is None or state.last_eval > state.best_eval:
        state.best_eval = state.last_eval
        checkpoints.write_best(run_dir / checkpoints.BEST_NAME, weights(), scored)
    if cfg.eval_candidates and cfg.eval_confirm_episodes:
        keep_candidate(run_dir / CANDIDATES, weights, scored, state.global_step, cfg.eval_candidates)
    log(kv_line("eval", episode=state.episode, global_step=state.global_step, episodes=episodes,
                mean=round(state.last_eval, 2), min=round(min(scores), 2), max=round(max(scores), 2),
                best=round(state.best_eval, 2)))
    return round(state.last_eval, 4)


def rebase_best(run_dir: Path, best_eval: float | None, episodes: int, log: Callable[[str], None]) -> float | None:
    """The best held-out mean to beat on resume: a best.pt scored with another `eval_episodes` is not
    comparable, so it goes to the archive and the next evaluation sets the bar anew (None)."""
    path = run_dir / checkpoints.BEST_NAME
    if best_eval is None or not path.is_file():
        return best_eval
    try:
        scored = (checkpoints.read(path).get("evaluation") or {}).get("episodes")
    except Exception:
        scored = None
    if scored == episodes:
        return best_eval
    dest = run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(dest / path.name))
    log(f"note: {path.name} was scored over {scored} episodes, eval_episodes is now {episodes}; it was moved to "
        f"{dest} and the next evaluation sets the best anew")
    return None


def record_gif(cfg, greedy: Callable, run_dir: Path, episode: int, log: Callable[[str], None]) -> Path:
    """A GIF of one greedy full episode on the first held-out track into the run's videos/ (record_every)."""
    gif = run_dir / "videos" / f"episode_{episode:06d}.gif"
    ret, _ = envs.record_gif(cfg.for_evaluation(), lambda env: greedy, gif, seed=EVAL_SEED)
    log(kv_line("recorded", path=f"videos/{gif.name}", greedy_return=round(ret, 2)))
    return gif


# --------------------------------------------------------------------------- confirming the best
def _candidates(folder: Path) -> list[tuple[Path, dict]]:
    former = folder.parent / FORMER_CANDIDATES
    if former.is_dir():  # a run from before the candidates were mirrored
        folder.mkdir(exist_ok=True)
        for path in former.glob("cand_*.pt"):
            path.replace(folder / path.name)
        shutil.rmtree(former, ignore_errors=True)
    out = []
    for path in sorted(folder.glob("cand_*.pt")) if folder.is_dir() else []:
        try:
            out.append((path, checkpoints.read(path)))
        except Exception:  # a torn file of a killed process: not a candidate
            path.unlink(missing_ok=True)
    return out


def keep_candidate(folder: Path, weights: Callable[[], dict], scored: dict, step: int, keep: int) -> None:
    """Keep these weights as a candidate when their in-run mean is among the best `keep` so far."""
    kept = _candidates(folder)
    means = sorted((c["evaluation"]["mean"] for _, c in kept), reverse=True)
    if len(means) >= keep and scored["mean"] <= means[keep - 1]:
        return
    checkpoints.write_best(folder / f"cand_{step:010d}.pt", weights(), scored)
    for path, _ in sorted(_candidates(folder), key=lambda pc: pc[1]["evaluation"]["mean"], reverse=True)[keep:]:
        path.unlink(missing_ok=True)


def _mean_return(cfg, ckpt: dict, path: Path, seeds: list[int]) -> float:
    _, net = agents.build_network(ckpt, "cpu", path)
    return float(np.mean(envs.evaluation_returns(cfg, partial(models.greedy_action, net), seeds)))


def confirm_best(cfg, run_dir: Path, log: Callable[[str], None]) -> dict | None:
    """Play each candidate (those not played yet) on `eval_confirm_episodes` tracks of the second held-out
    set, make the one with the best mean over both sets best.pt, and score it on as many tracks of the third
    set. Returns best.pt's evaluation, or None without candidates. Repeating it replays nothing."""
    kept = _candidates(run_dir / CANDIDATES)
    if not kept:
        return None
    n = cfg.eval_confirm_episodes
    best = None
    for path, cand in kept:
        ev = cand["evaluation"]
        if ev.get("confirm_episodes") != n:
            confirm = _mean_return(cfg, cand, path, [CONFIRM_SEED + i for i in range(n)])
            ev = {**ev, "confirm_mean": confirm, "confirm_episodes": n, "confirm_seeds": f"{CONFIRM_SEED}+",
                  "combined_mean": (ev["mean"] * ev["episodes"] + confirm * n) / (ev["episodes"] + n)}
            for key in ("score_mean", "score_episodes", "score_seeds"):  # a new confirmation: scored anew
                ev.pop(key, None)
            checkpoints.write_best(path, cand, ev)
        log(kv_line("confirm", candidate=path.name, in_run=round(ev["mean"], 2), confirm=round(ev["confirm_mean"], 2),
                    combined=round(ev["combined_mean"], 2)))
        if best is None or ev["combined_mean"] > best[2]["combined_mean"]:
            best = (path, cand, ev)
    path, cand, ev = best
    if ev.get("score_episodes") != n:
        ev = {**ev, "score_mean": _mean_return(cfg, cand, path, [SCORE_SEED + i for i in range(n)]),
              "score_episodes": n, "score_seeds": f"{SCORE_SEED}+"}
        checkpoints.write_best(path, cand, ev)
    checkpoints.write_best(run_dir / checkpoints.BEST_NAME, cand, ev)
    log(kv_line("best", global_step=checkpoints.trained_steps(cand), combined=round(ev["combined_mean"], 2),
                score=round(ev["score_mean"], 2), score_tracks=n))
    return ev
