"""Static checks of the Ansible roles: every role is a full skeleton, documents
exactly the variables it validates, and follows the naming conventions.

(prometheus-community/ansible keeps defaults and argument_specs in step the same
way.) Nothing here runs Ansible; ansible-lint runs in test_roles_lint.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "deploy" / "roles"
ROLES = [
    "preflight",
    "docker_engine",
    "firewall",
    "authkey",
    "images",
    "master",
    "profile",
    "workers",
    "smoke",
]
# No handlers/: every reload is a task with a live check (it survives an interrupted run,
# and the result is in place for the next role of the same run).
SKELETON = [
    "defaults/main.yml",
    "tasks/main.yml",
    "meta/main.yml",
    "meta/argument_specs.yml",
    "vars/main.yml",
]
# Cluster-wide settings that several roles read; each such role carries the same default.
SHARED = {
    "taskfleet_bind_ip",
    "taskfleet_master_port",
    "taskfleet_authkey_path",
    "taskfleet_images_manifest",
    "taskfleet_authkey_local_path",
}
# Names an issue gave (a contract, docs/jobs.md): kept as written, without the role prefix.
CONTRACT = {"taskfleet_job_packages": "images"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) or {}


def defaults(role: str) -> dict[str, Any]:
    data = load(ROLES_DIR / role / "defaults/main.yml")
    assert isinstance(data, dict)
    return data


def specs(role: str) -> dict[str, Any]:
    data = load(ROLES_DIR / role / "meta/argument_specs.yml")
    return data["argument_specs"]  # type: ignore[no-any-return]


def test_every_role_is_present() -> None:
    assert sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir()) == sorted(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_role_has_a_full_skeleton(role: str) -> None:
    missing = [f for f in SKELETON if not (ROLES_DIR / role / f).is_file()]
    assert not missing, f"{role}: missing {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_name_the_same_variables(role: str) -> None:
    assert set(defaults(role)) == set(specs(role)["main"]["options"])


@pytest.mark.parametrize("role", ROLES)
def test_every_option_is_described_and_typed(role: str) -> None:
    for entry, spec in specs(role).items():
        for name, option in (spec.get("options") or {}).items():
            assert option.get("description"), f"{role}/{entry}/{name}: no description"
            assert option.get("type"), f"{role}/{entry}/{name}: no type"


@pytest.mark.parametrize("role", ROLES)
def test_spec_defaults_match_role_defaults(role: str) -> None:
    values = defaults(role)
    for entry, spec in specs(role).items():
        for name, option in (spec.get("options") or {}).items():
            if "default" in option:
                assert values.get(name) == option["default"], f"{role}/{entry}/{name}"
            else:  # only templated defaults (facts, lookups) are left out of the spec
                assert "{{" in str(values.get(name)), f"{role}/{entry}/{name}: spec has no default"


@pytest.mark.parametrize("role", ROLES)
def test_variables_carry_the_project_and_role_prefix(role: str) -> None:
    own = f"taskfleet_{role}_"
    for name in defaults(role):
        allowed = name in SHARED or CONTRACT.get(name) == role
        assert allowed or name.startswith(own), f"{role}: {name} should start with {own}"
    internal = load(ROLES_DIR / role / "vars/main.yml")
    for name in internal:
        assert name.startswith(f"_taskfleet_{role}_"), f"{role}/vars: {name} should be _{own}…"


def test_shared_settings_have_one_default_everywhere() -> None:
    for name in SHARED:
        seen = {role: defaults(role)[name] for role in ROLES if name in defaults(role)}
        assert len(seen) >= 2, name
        assert len(set(map(str, seen.values()))) == 1, f"{name} differs: {seen}"


def _tasks(role: str) -> list[tuple[Path, dict[str, Any]]]:
    found: list[tuple[Path, dict[str, Any]]] = []

    def walk(path: Path, items: list[dict[str, Any]]) -> None:
        for task in items or []:
            found.append((path, task))
            for key in ("block", "rescue", "always"):
                walk(path, task.get(key, []))

    for path in sorted((ROLES_DIR / role / "tasks").glob("*.yml")):
        walk(path, load(path))
    return found


@pytest.mark.parametrize("role", ROLES)
def test_commands_declare_changed_when_and_registers_are_dunder(role: str) -> None:
    for path, task in _tasks(role):
        where = f"{path.relative_to(REPO)}: {task.get('name')}"
        if "ansible.builtin.command" in task or "ansible.builtin.shell" in task:
            args = task.get("ansible.builtin.command") or task.get("ansible.builtin.shell")
            # `creates:` makes a command idempotent by itself.
            assert "changed_when" in task or "creates" in (args or {}), where
        if "register" in task:
            assert task["register"].startswith(f"__taskfleet_{role}_"), where
        modules = [k for k in task if "." in k]
        for module in modules:
            assert re.fullmatch(r"[a-z_]+\.[a-z_]+\.[a-z_]+", module), f"{where}: {module}"


@pytest.mark.parametrize("role", ROLES)
def test_templates_mirror_their_destination_and_say_managed(role: str) -> None:
    for template in (ROLES_DIR / role / "templates").rglob("*.j2"):
        rel = template.relative_to(ROLES_DIR / role / "templates")
        assert rel.parts[0] in {"etc", "usr", "var", "opt"}, rel
        assert template.read_text().startswith("{{ ansible_managed | comment }}"), rel


@pytest.mark.parametrize("role", ["authkey"])
def test_every_task_that_touches_the_key_content_has_no_log(role: str) -> None:
    for path, task in _tasks(role):
        text = yaml.safe_dump(task)
        if "password" in text or "copy" in text or "vault" in text.lower():
            # A block's tasks are checked one by one; an assert prints its
            # fail_msg and the condition's source, never evaluated content.
            if "block" in task or "ansible.builtin.assert" in task:
                continue
            assert task.get("no_log") is True, f"{path.name}: {task.get('name')}"
