"""One home per default: the Ansible role defaults and docs equal taskfleet.defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskfleet import cli, defaults
from taskfleet.cli import parse_duration

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "deploy" / "roles"

# Role variable -> the runtime default it configures.
ROLE_DEFAULTS: dict[str, float | int] = {
    "taskfleet_master_port": defaults.MASTER_PORT,
    "taskfleet_http_port": defaults.HTTP_PORT,
    "taskfleet_master_lease_timeout": defaults.LEASE_TIMEOUT,
    "taskfleet_workers_heartbeat_max_age": defaults.HEARTBEAT_MAX_AGE,
    "taskfleet_master_keep_jobs": defaults.KEEP_JOBS,
    "taskfleet_master_keep_for": defaults.KEEP_FOR,
}

# Role variables written as durations ("7d"), compared in seconds.
DURATIONS = {"taskfleet_master_keep_for"}


def _role_defaults() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(ROLES_DIR.glob("*/defaults/main.yml")):
        out[path.parts[-3]] = yaml.safe_load(path.read_text()) or {}
    return out


@pytest.mark.parametrize("variable", sorted(ROLE_DEFAULTS))
def test_role_defaults_equal_the_runtime_defaults(variable: str) -> None:
    found = {
        role: values[variable] for role, values in _role_defaults().items() if variable in values
    }
    if variable in DURATIONS:
        found = {role: parse_duration(value) for role, value in found.items()}
    assert found, f"no role sets {variable}"
    assert all(value == ROLE_DEFAULTS[variable] for value in found.values()), found


def test_every_role_that_declares_the_port_in_its_specs_sets_it_in_its_defaults() -> None:
    for path in sorted(ROLES_DIR.glob("*/meta/argument_specs.yml")):
        if "taskfleet_master_port" in path.read_text():
            role = path.parts[-3]
            assert _role_defaults()[role].get("taskfleet_master_port") == defaults.MASTER_PORT


def test_the_heartbeat_max_age_leaves_room_for_several_missed_heartbeats() -> None:
    assert defaults.HEARTBEAT_MAX_AGE >= 4 * defaults.HEARTBEAT_MAX_INTERVAL


@pytest.mark.parametrize(
    ("lease_timeout", "interval"), [(0.5, 0.2), (2.0, 0.4), (30.0, 5.0), (600.0, 5.0)]
)
def test_heartbeat_interval_is_a_fifth_of_the_lease_timeout_within_bounds(
    lease_timeout: float, interval: float
) -> None:
    assert defaults.heartbeat_interval(lease_timeout) == pytest.approx(interval)


def test_cli_help_shows_the_defaults_from_the_defaults_module() -> None:
    parser = cli.build_parser()
    actions = {
        (cmd, a.dest): a.default
        for cmd, sub in parser._subparsers._group_actions[0].choices.items()  # type: ignore[union-attr]
        for a in sub._actions
    }
    assert actions[("master", "port")] == str(defaults.MASTER_PORT)
    assert actions[("master", "lease_timeout")] == defaults.LEASE_TIMEOUT
    assert actions[("master", "bind")] == defaults.MASTER_BIND
    assert actions[("master", "keep_jobs")] == defaults.KEEP_JOBS
    assert actions[("master", "keep_for")] == defaults.KEEP_FOR
    assert actions[("submit", "chunk_size")] == defaults.CHUNK_SIZE
    assert actions[("submit", "retries")] == defaults.RETRIES
    assert actions[("submit", "on_error")] == defaults.ON_ERROR
    assert actions[("jobs", "limit")] == defaults.JOBS_LIMIT
    assert actions[("submit", "connect_timeout")] == defaults.CONNECT_TIMEOUT
    assert actions[("smoke", "timeout")] == defaults.SMOKE_TIMEOUT


def test_the_documented_port_is_the_default_port() -> None:
    text = (REPO / "docs" / "interfaces.md").read_text()
    assert re.search(rf"Default manager port: \*\*{defaults.MASTER_PORT}\*\*", text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1h", "h", "1y"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_the_master_role_passes_the_retention_flags_to_the_container() -> None:
    tasks = (ROLES_DIR / "master" / "tasks" / "main.yml").read_text()
    # The command is one list expression (the TLS arguments are appended to it).
    assert "'--keep-jobs', taskfleet_master_keep_jobs | string," in tasks
    assert "'--keep-for', taskfleet_master_keep_for | string]" in tasks
