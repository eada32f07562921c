"""Publish an agent to the Hugging Face Hub, and load one back, as SB3's zoo users do.

`evaluate.py --checkpoint X --episodes 10 --push-to-hub owner/name` evaluates the agent, writes a model
card (`README.md` with the Hub's `model-index` metadata), the weights file and a GIF, and uploads them
with `huggingface_hub`. `evaluate.py --checkpoint hf://owner/name` downloads such an agent. The
weights file (`agent.pt`) holds only tensors, numbers, strings, lists and dicts: it loads with
`torch.load(weights_only=True)`, which never runs pickled code. Tokens come from `.env`
(`huggingface_write` to push, `huggingface_read` to download; a public repo needs none) and never
reach the card, a file or a log line.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import checkpoints
import envfile
import hub
from config import ConfigError

WEIGHTS_NAME = "agent.pt"
GIF_NAME = "replay.gif"
HF_PREFIX = "hf://"
REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def check_repo_id(repo_id: str, option: str) -> str:
    if not REPO_RE.fullmatch(repo_id) or ".." in repo_id:
        raise ConfigError(f"{option} needs a Hub repo id like owner/name, got {repo_id!r}")
    return repo_id


def _describe(e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return "the token was refused; check huggingface_write/huggingface_read in .env"
    if status == 404:
        return "no such repo or file (or it is private and the token cannot read it)"
    return f"{type(e).__name__}" + (f", HTTP {status}" if status else "")


def download_agent(spec: str, what: str = "--checkpoint hf://", log=print) -> Path:
    """`hf://owner/name` -> the local path of its weights file, downloaded to the Hub cache. When the Hub cannot
    be reached the cached copy serves, and `log` says so; without one, a one-line ConfigError naming the Hub.
    `what` names the option or config key in errors."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = check_repo_id(spec[len(HF_PREFIX):], what)
    token = hub.hub_environment().get("huggingface_read") or None
    unreachable = hub.unreachable(repo_id, WEIGHTS_NAME, token)
    if unreachable:
        cached = try_to_load_from_cache(repo_id, WEIGHTS_NAME)
        if isinstance(cached, str):
            log(f"note: the Hub at {hub.endpoint()} cannot be reached ({unreachable}); using the cached copy of "
                f"{repo_id}")
            return Path(cached)
        raise ConfigError(f"the Hub at {hub.endpoint()} cannot be reached ({unreachable}) and no copy of {repo_id} "
                          "is cached here; try again when the network is back")
    try:
        return Path(hub.client().hf_hub_download(repo_id, WEIGHTS_NAME, token=token))
    except Exception as e:
        raise ConfigError(f"cannot download {WEIGHTS_NAME} from {repo_id} ({_describe(e)})") from None


def require_write_token() -> str:
    """The write token of .env, checked before anything is evaluated (a push comes last)."""
    token = hub.hub_environment().get("huggingface_write")
    if not token:
        raise ConfigError("--push-to-hub needs huggingface_write in .env (a token with write access)")
    return token


FEW_EPISODES = 10  # a card's mean over fewer episodes carries a warning


def project_url() -> str | None:
    """The toolkit's repository as this checkout knows it: code_base_link of .env when it names one on GitHub or
    by https (owner/repo means GitHub); None otherwise (a card then names the toolkit without a link)."""
    link = envfile.load_env(Path(__file__).resolve().parent / ".env").get("code_base_link", "").strip()
    if re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", link):
        return f"https://github.com/{link.removesuffix('.git')}"
    if link.startswith("https://") and "@" not in link:  # never a link with credentials in it
        return link.removesuffix(".git")
    return None


def model_card(repo_id: str, weights: dict, row: dict, episodes: int, seed: int) -> str:
    """README.md of the Hub repo: model-index metadata (env, mean ± std reward, episodes) and how to load it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = weights["config"]
    arch = "SNN" if cfg["architecture"] == "snn" else "ANN"
    detail = (f"spiking ({cfg['snn_mode']}, snn_tSteps = {cfg['snn_tSteps']}, snn_beta = {cfg['snn_beta']})"
              if arch == "SNN" else "ReLU")
    stages = checkpoints.lineage(weights)
    total = checkpoints.lineage_total(stages)
    frames_text = (f"{total['frames']:,} frames ({total['agent_steps']:,} agent steps) in all" if total["frames"]
                   is not None else "an unknown number of frames (the file predates its lineage)")
    lineage_rows = "".join(f"| {i + 1} | {st.get('run') or '?'} | "
                           f"{'?' if st.get('agent_steps') is None else format(st['agent_steps'], ',')} | "
                           f"{'?' if st.get('frames') is None else format(st['frames'], ',')} | "
                           f"{st.get('init_weights') or '–'} | {st.get('teacher') or '–'} |\n"
                           for i, st in enumerate(stages))
    name = f"{arch}-DDQN-{cfg['env_id']}"
    data = ModelCardData(
        library_name="snn-ddqn", tags=["reinforcement-learning", "deep-q-learning", "double-dqn", cfg["env_id"],
                                       "spiking-neural-network" if arch == "SNN" else "ann"],
        model_name=name,
        eval_results=[EvalResult(task_type="reinforcement-learning", task_name="reinforcement-learning",
                                 dataset_type=cfg["env_id"], dataset_name=cfg["env_id"], metric_type="mean_reward",
                                 metric_name="mean_reward", metric_value=f"{row['average']:.2f} +/- {row['std']:.2f}")])
    played = (f"{episodes} full greedy episodes on seeds {seed}–{seed + episodes - 1}" if episodes > 1
              else f"1 full greedy episode on seed {seed}")
    few = (f" **{episodes} episode{'s' if episodes > 1 else ''} make{'' if episodes > 1 else 's'} no reliable mean**: "
           f"evaluate with `--episodes 50` before comparing." if episodes < FEW_EPISODES else "")
    c = row.get("cost")
    cost_text = "" if c is None else (
        f"\nWhat a decision costs (measured on these episodes): {c['macs']:,.0f} multiply-accumulates and "
        f"{c['acs']:,.0f} spike-triggered accumulates"
        + ("" if c["firing_rate"] is None else f", the spiking layers firing at {c['firing_rate']:.3f} on average")
        + f"; about {c['energy_uj']:.1f} µJ by the usual 45 nm estimate (4.6 pJ per 32-bit MAC, 0.9 pJ per AC, "
          "Horowitz 2014; arithmetic only, no memory traffic).\n")
    link = project_url()
    project = f"[snn-ddqn]({link})" if link else "the snn-ddqn toolkit"
    body = f"""
# {name}

A Double-DQN agent for **{cfg['env_id']}** (discrete actions) whose Q-network is {detail}, trained with
{project} (`python run.py`).

## Evaluation

{played}: mean **{row['average']:.2f} ± {row['std']:.2f}**
(min {row['min']:.2f}, max {row['max']:.2f}, win rate {row['win_rate']:.0%} at ≥ {cfg['win_threshold']:g}).{few}
Trained for {frames_text}. ![replay]({GIF_NAME})
{cost_text}

## How it was trained

| stage | run | agent steps | frames | started from (`init_weights`) | teacher |
| --- | --- | ---: | ---: | --- | --- |
{lineage_rows}

## Use it

```bash
python evaluate.py --checkpoint hf://{repo_id} --episodes 10      # or --gif drive.gif / --play
```

or in Python, without running any pickled code:

```python
import torch, models
from config import as_trained, load_config
w = torch.load("{WEIGHTS_NAME}", weights_only=True)
net = models.build_q_network(load_config(as_trained(w["config"])), w["obs_shape"], w["n_actions"])
net.load_state_dict(w["q_network"])
```

## Training config

| key | value |
| --- | --- |
""" + "".join(f"| `{k}` | `{v}` |\n" for k, v in cfg.items() if k not in ("runs_dir", "device"))
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def push(repo_id: str, weights: dict, row: dict, episodes: int, seed: int, gif: Path | None) -> str:
    """Upload card, weights and GIF to `repo_id` (created when missing). Returns the repo's URL."""
    import io

    import torch
    from huggingface_hub import CommitOperationAdd

    token = require_write_token()
    buf = io.BytesIO()
    torch.save(weights, buf)
    ops = [CommitOperationAdd(path_in_repo="README.md",
                              path_or_fileobj=model_card(repo_id, weights, row, episodes, seed).encode()),
           CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=buf.getvalue())]
    if gif is not None and gif.exists():
        ops.append(CommitOperationAdd(path_in_repo=GIF_NAME, path_or_fileobj=str(gif)))
    api = hub.client()
    try:
        url = api.create_repo(repo_id, token=token, exist_ok=True)
        api.create_commit(repo_id, operations=ops, token=token,
                          commit_message=f"{row['method']}: {row['average']:.2f} +/- {row['std']:.2f}")
    except Exception as e:
        raise ConfigError(f"cannot push to {repo_id} ({_describe(e)})") from None
    return str(url)


def temporary_gif() -> Path:
    return Path(tempfile.mkdtemp(prefix="snndqn-publish-")) / GIF_NAME
