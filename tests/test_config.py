"""utils.load_config: defaults, types, ranges, unknown keys, contradictions; the example and README agree with it."""
import json
import re
from pathlib import Path

import pytest

import config
import contract
import utils
from config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]

ORIGINAL_KEYS = ["name", "continue_run", "agents", "hidden_layers", "learning_rate", "decay", "batch", "gamma",
                 "extra_info", "max_run_time", "stop_learning_at_win_percent", "train_max_time", "upload_to_cloud",
                 "local_backup", "architecture", "snn_tSteps", "snn_beta", "debug"]
FIXED_NEW_KEYS = ["env_id", "seed", "total_steps", "max_episodes", "replay_size", "learning_starts",
                  "checkpoint_every", "runs_dir", "device", "frame_skip", "frame_stack", "win_threshold", "snn_mode"]


def test_contract_keys_exist_with_documented_defaults():
    cfg = load_config()
    for key in ORIGINAL_KEYS + FIXED_NEW_KEYS:
        assert key in config.SCHEMA, key
    assert cfg.env_id == "CarRacing-v3" and cfg.runs_dir == "runs" and cfg.device == "auto"
    assert cfg.snn_mode == "hybrid" and cfg.win_threshold == 900 and cfg.total_steps == 750_000 and cfg.max_episodes == 0


def test_example_matches_schema_key_for_key():
    example = json.loads((REPO / "conf.json.example").read_text())
    assert list(example) == list(config.SCHEMA)
    load_config(REPO / "conf.json.example")  # and it is valid


def test_one_set_of_defaults_the_example_is_the_schema():
    """A partial --forceconfig trains exactly like a plain run except for the keys it names."""
    example = json.loads((REPO / "conf.json.example").read_text())
    assert example == load_config().to_dict()
    assert load_config({"architecture": "ann"}).to_dict() == {**example, "architecture": "ann"}


def test_the_config_reference_is_generated_from_the_schema_and_current():
    page = (REPO / config.REFERENCE).read_text(encoding="utf-8")
    assert page == config.reference_markdown(), "docs/config.md is stale: run python config.py --reference"
    for key in config.SCHEMA:
        assert re.search(rf"^\| `{re.escape(key)}` \|", page, re.M)
    for target, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", page):  # links resolve, anchors too
        linked = REPO / "docs" / target
        assert linked.is_file(), target
        if anchor:
            assert anchor in heading_anchors(linked.read_text(encoding="utf-8")), f"{target}#{anchor}"


def heading_anchors(markdown: str) -> set:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_readme_documents_every_env_key():
    readme = (REPO / "README.md").read_text()
    env_keys = re.findall(r"^([A-Za-z_]+)=", (REPO / ".env.example").read_text(), re.M)
    assert {"session_name", "huggingface_read", "huggingface_write", "repo_ID", "code_base_link",
            "python_venv_path"} <= set(env_keys)
    for key in env_keys:
        assert re.search(rf"^\| `{key}` \|", readme, re.M), f"README lacks a table row for .env key {key}"


def test_path_and_dict_give_the_same_config(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"batch": 32, "architecture": "ann"}))
    assert load_config(p) == load_config({"batch": 32, "architecture": "ann"})


def test_ints_are_accepted_for_floats_and_integral_floats_for_ints():
    cfg = load_config({"learning_rate": 1, "batch": 32.0, "max_run_time": 60})
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.batch == 32 and isinstance(cfg.batch, int)


def test_clear_attribute_names_map_the_seed_spellings():
    cfg = load_config({"snn_tSteps": 7, "snn_beta": 0.5, "batch": 16, "decay": 0.9, "agents": 2})
    assert (cfg.time_steps, cfg.beta, cfg.batch_size, cfg.epsilon_decay, cfg.num_envs) == (7, 0.5, 16, 0.9, 2)


def test_run_name_and_dir():
    cfg = load_config({"name": "car", "extra_info": "t25"})
    assert cfg.run_name == "car-t25"
    assert cfg.run_dir("/base") == Path("/base/runs/car-t25")
    assert load_config({"name": "car"}).run_name == "car"


def test_replace_revalidates():
    cfg = load_config()
    assert cfg.replace(batch=8).batch == 8
    with pytest.raises(ConfigError):
        cfg.replace(batch=0)


@pytest.mark.parametrize("raw,message", [
    ({"snn_tstep": 5}, "unknown config key 'snn_tstep'; did you mean 'snn_tSteps'?"),
    ({"Batch": 5}, "did you mean 'batch'?"),
    ({"zzz": 5}, "unknown config key 'zzz'"),
    ({"batch": "64"}, "'batch' must be an integer"),
    ({"batch": 1.5}, "'batch' must be an integer"),
    ({"continue_run": 1}, "'continue_run' must be true or false"),
    ({"learning_rate": "fast"}, "'learning_rate' must be a number"),
    ({"learning_rate": 0}, "'learning_rate' must be > 0"),
    ({"gamma": -0.1}, "'gamma' must be >= 0"),
    ({"stop_learning_at_win_percent": 101}, "'stop_learning_at_win_percent' must be <= 100"),
    ({"snn_beta": 1.5}, "'snn_beta' must be <= 1"),
    ({"snn_tSteps": 0}, "'snn_tSteps' must be >= 1"),
    ({"architecture": "cnn"}, "'architecture' must be one of"),
    ({"device": "gpu"}, "'device' must be one of"),
    ({"snn_mode": "ful"}, "did you mean 'full'?"),
    ({"hidden_layers": []}, "'hidden_layers' must be a non-empty list"),
    ({"hidden_layers": [64, "x"]}, "'hidden_layers' must be a list of integers"),
    ({"hidden_layers": [64, 0]}, "'hidden_layers' must be a non-empty list of positive widths"),
    ({"obs_crop": [0, 1]}, "'obs_crop' must have exactly 4 entries"),
    ({"name": "a b/c"}, "'name' has an invalid value"),
    ({"epsilon_start": 0.1, "epsilon_min": 0.2}, "contradict"),
    ({"batch": 128, "replay_size": 64}, "contradict"),
    ({"upload_to_cloud": False, "local_backup": False}, "both false"),
])
def test_bad_values_name_the_key_in_one_line(raw, message):
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_json_gives_line_and_column(tmp_path):
    p = tmp_path / "conf.json"
    p.write_text('{\n  "batch": 32,\n  "gamma": ,\n}')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* at line 3 column 12"):
        load_config(p)


def test_missing_file_and_non_object(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config(tmp_path / "list.json")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "x.json"
    utils.atomic_write_json(target, {"a": 1})
    utils.atomic_write_json(target, {"a": 2})
    assert utils.read_json(target) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # the umask's permissions


def test_status_round_trip(tmp_path):
    assert contract.read_status(tmp_path) == {}
    contract.write_status(tmp_path, True, "total_steps reached", global_step=10)
    assert contract.read_status(tmp_path) == {"finished": True, "reason": "total_steps reached", "global_step": 10}


def test_kv_line_quotes_values_with_spaces():
    assert utils.kv_line("episode", n=3, ret=1.23456, msg="a b") == 'episode n=3 ret=1.235 msg="a b"'


def test_keys_added_since_a_checkpoint_are_not_listed_as_changes():
    old = {"batch": 64, "gamma": 0.99}
    new = {"batch": 32, "gamma": 0.99, "wandb_project": ""}
    assert utils.describe_changes(old, new) == ["batch: 64 -> 32"]


def test_key_value_overrides_for_the_benchmarks():
    assert config.overrides(['conv_precision="bfloat16"', "n_step=3", "conv_precision=bfloat16"]) == \
        {"conv_precision": "bfloat16", "n_step": 3}
    with pytest.raises(ConfigError, match="did you mean 'n_step'"):
        config.overrides(["n_stp=3"])


def test_a_benchmarks_set_options_are_checked_config_keys(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--steps", type=int, default=5)
    args, extra = config.parse_bench_args(parser, ["--steps", "7", "--set", "n_step=3", "--set", 'encoder="nips"'])
    assert args.steps == 7 and extra == {"n_step": 3, "encoder": "nips"}
    with pytest.raises(SystemExit) as stop:
        config.parse_bench_args(argparse.ArgumentParser(prog="bench"), ["--set", "n_stp=3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "did you mean 'n_step'" in err and "Traceback" not in err


def test_a_resumed_run_keeps_the_former_recipe_a_new_one_takes_todays():
    # a checkpoint written before the step schedules: ε per episode, fixed learning rate, no skip penalty, no budget
    saved = {k: v for k, v in load_config({}).to_dict().items()
             if k not in ("epsilon_decay_steps", "learning_rate_decay_steps", "learning_rate_final")}
    saved.update(skip_penalty=0.0, total_steps=0)
    notes = []
    resumed = config.keep_former_defaults(saved, load_config({}), "the run's checkpoint", notes.append, recipe=True)
    assert (resumed.epsilon_decay_steps, resumed.learning_rate_decay_steps, resumed.skip_penalty,
            resumed.total_steps) == (0, 0, 0.0, 0)
    assert len(notes) == 1 and '"skip_penalty": 0.0' in notes[0]
    # init_weights (a new run from that file) takes today's recipe
    assert config.keep_former_defaults(saved, load_config({}), "the init_weights file", notes.append) == load_config({})
    # a value the user wrote is kept whatever the checkpoint had
    mine = load_config({"skip_penalty": 5.0})
    assert config.keep_former_defaults(saved, mine, "x", notes.append, recipe=True).skip_penalty == 5.0


def test_skip_penalty_defaults_to_zero_off_carracing_and_is_refused_when_asked_for():
    assert load_config({"env_id": "CartPole-v1"}).skip_penalty == 0.0
    assert load_config({}).skip_penalty == 10.0
    with pytest.raises(ConfigError, match="skip_penalty"):
        load_config({"env_id": "CartPole-v1", "skip_penalty": 10.0})
