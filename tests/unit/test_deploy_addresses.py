"""The deploy writes HOST:PORT with an IPv6 bind address in brackets, everywhere a peer
dials the master (the master's own address and HTTP address, the workers, the smoke
client, the control node's profile), and an IPv4 address as it is.

The role variables are rendered with Jinja2, the engine Ansible templates them with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from taskfleet.address import parse_hostport

ROLES = Path(__file__).resolve().parents[2] / "deploy" / "roles"


def _vars(*files: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in files:
        out.update(yaml.safe_load((ROLES / name).read_text()))
    return out


def render(name: str, context: dict[str, Any]) -> str:
    """``name`` rendered as Ansible would (lazily: variables that name others too)."""
    # Not HTML: Ansible renders variables without escaping too.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    value = context[name]
    for _ in range(5):
        if not isinstance(value, str) or "{{" not in value:
            break
        value = env.from_string(value).render(context)
    return str(value)


CASES = [
    ("10.0.0.1", "10.0.0.1"),
    ("fd00:10::10", "[fd00:10::10]"),
    ("::1", "[::1]"),
]


@pytest.mark.parametrize(("bind", "host"), CASES)
def test_every_address_a_peer_dials_brackets_an_ipv6_bind_address(bind: str, host: str) -> None:
    context = {
        **_vars(
            "master/vars/main.yml",
            "smoke/vars/main.yml",
            "profile/defaults/main.yml",
            "workers/vars/main.yml",
        ),
        "taskfleet_bind_ip": bind,
        "taskfleet_workers_master_host": bind,  # the master's bind address (role default)
        "taskfleet_master_port": 7451,
        "taskfleet_http_port": 7452,
        "inventory_hostname": "m",
        "inventory_dir": "/inv",
    }
    for name, port in [
        ("_taskfleet_master_address", 7451),
        ("_taskfleet_master_http_address", 7452),
        ("_taskfleet_smoke_master", 7451),
        ("taskfleet_profile_master", 7451),
        ("_taskfleet_workers_master_address", 7451),
    ]:
        address = render(name, context)
        assert address == f"{host}:{port}", name
        # ... and the runtime reads it back as the bind address and port.
        assert parse_hostport(address, "--master", "") == (bind, port), name
