"""Property-based tests of the bad-input contract: whatever a user writes into conf.json, .env or studios.json,
the answer is a config or one clear line (exit 2) — never a traceback, a hang or a touched file. Hypothesis
generates the inputs, so the next unclean one is found here rather than by a user."""
import json
import os
import subprocess
import sys

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import config  # noqa: E402
import envfile  # noqa: E402
from config import ConfigError, load_config  # noqa: E402
from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "serverRunner"))
import sendReq  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
keys = st.sampled_from(sorted(config.SCHEMA)) | st.text(max_size=12)
configs = st.dictionaries(keys, json_values, max_size=6)


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip()


@SETTINGS
@given(configs)
def test_any_config_is_a_config_or_one_line(raw):
    try:
        cfg = load_config(raw)
    except ConfigError as e:
        assert one_line(str(e)), str(e)
    else:
        assert load_config(cfg.to_dict()) == cfg  # what is accepted is valid as written back


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_conf_text_parses_or_is_one_line(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # run.py refuses undecodable bytes before parsing (test_run.py's bad inputs)
    try:
        config.parse_json(text, "conf.json")
    except ConfigError as e:
        assert one_line(str(e))


@SETTINGS
@given(st.binary(max_size=300))
def test_any_env_file_is_keys_or_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("env") / ".env"
    path.write_bytes(data)
    try:
        values = envfile.load_env(path)
    except ConfigError as e:
        assert one_line(str(e))
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    assert path.read_bytes() == data  # read, never rewritten


entries = st.dictionaries(st.sampled_from(["user", "apiKey", "userID", "teamspaceName", "studioName", "commandToRun",
                                           "machine"]) | st.text(max_size=8), json_values, max_size=7)


@SETTINGS
@given(st.dictionaries(st.text(max_size=10), entries | json_values, max_size=3) | json_values)
def test_any_studios_json_is_an_entry_or_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("studios") / "studios.json"
    path.write_text(json.dumps(data))

    class Args:
        from_env = False
        studios = str(path)
        entry = "studio_1"

    try:
        name, entry = sendReq.load_entry(Args)
    except sendReq.BadInput as e:
        assert one_line(str(e))
    else:
        assert name == "studio_1" and entry["apiKey"]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs, st.lists(st.sampled_from(["--kill-grace", "--quick-crash", "--restart-delay", "--max-crashes"]),
                         max_size=2), st.lists(st.sampled_from(["nan", "inf", "-1", "", "x", "0", "5"]), max_size=2))
def test_the_launcher_answers_any_conf_and_options_with_a_run_or_one_line(tmp_path_factory, raw, options, values):
    """Real run.py processes in a project whose training script is a stand-in (test_run.py's): exit 0 or one
    line and exit 2, within a bound, and an earlier run's files untouched."""
    from test_run import write_project

    project = tmp_path_factory.mktemp("proj")
    write_project(project)
    (project / "runs" / "keep").mkdir(parents=True)
    (project / "runs" / "keep" / "metrics.csv").write_text("episode\n1\n")
    raw = {**raw, "train_max_time": 5, "max_run_time": 5} if "train_max_time" not in raw else raw
    (project / "conf.json").write_text(json.dumps(raw))
    args = [a for pair in zip(options, values) for a in pair]
    out = subprocess.run([sys.executable, "run.py", *args], cwd=project, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode in (0, 2), (raw, args, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    if out.returncode == 2:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, out.stderr
    assert (project / "runs" / "keep" / "metrics.csv").read_text() == "episode\n1\n"
