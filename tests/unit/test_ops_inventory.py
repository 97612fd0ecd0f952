"""The Fabric tasks' inventory reader: ansible-inventory JSON → Host/Inventory, validated."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from taskfleet.ops.engine import REPO
from taskfleet.ops.errors import InventoryError, OpsError
from taskfleet.ops.inventory import (
    known_hosts_from_args,
    lab_inventory,
    load_inventory,
    make_setting,
    parse_inventory,
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    known = tmp_path / "known_hosts"
    known.write_text("")
    return {"key": key, "known": known}


def listing(
    files: dict[str, Path], masters: list[str], workers: list[str], **extra: dict[str, Any]
) -> dict[str, Any]:
    ssh = {
        "ansible_user": "deploy",
        "ansible_ssh_private_key_file": str(files["key"]),
        "ansible_ssh_common_args": (
            f"-o UserKnownHostsFile={files['known']} -o StrictHostKeyChecking=yes"
        ),
    }
    hostvars: dict[str, Any] = {}
    for i, name in enumerate([*masters, *workers, "outsider"]):
        hostvars[name] = {**ssh, "ansible_host": f"172.28.40.{10 + i}", **extra.get(name, {})}
    return {
        "_meta": {"hostvars": hostvars},
        "all": {"children": ["ungrouped", "taskfleet_master", "taskfleet_workers"]},
        "ungrouped": {"hosts": ["outsider"]},
        "taskfleet_master": {"hosts": masters},
        "taskfleet_workers": {"hosts": workers},
    }


def test_master_and_workers_with_their_ssh_settings(files: dict[str, Path]) -> None:
    inv = parse_inventory(listing(files, ["master"], ["worker1", "worker2"]), "inv")
    assert inv.master.name == "master"
    assert inv.master.address == "172.28.40.10"
    assert [w.name for w in inv.workers] == ["worker1", "worker2"]
    w1 = inv.workers[0]
    assert (w1.address, w1.user, w1.port) == ("172.28.40.11", "deploy", 22)
    assert w1.key_file == files["key"]
    assert w1.known_hosts == files["known"]
    assert w1.sudo is True
    assert [h.name for h in inv.all] == ["master", "worker1", "worker2"]


def test_outsider_in_no_group_is_not_a_taskfleet_host(files: dict[str, Path]) -> None:
    inv = parse_inventory(listing(files, ["master"], ["worker1"]), "inv")
    assert "outsider" not in [h.name for h in inv.all]


def test_a_master_that_is_also_a_worker_is_listed_once(files: dict[str, Path]) -> None:
    inv = parse_inventory(listing(files, ["m"], ["m", "w"]), "inv")
    assert [h.name for h in inv.all] == ["m", "w"]


def test_workers_from_child_groups_count(files: dict[str, Path]) -> None:
    data = listing(files, ["master"], [])
    data["taskfleet_workers"] = {"children": ["rack_a"]}
    data["rack_a"] = {"hosts": ["worker1"]}
    data["_meta"]["hostvars"]["worker1"] = data["_meta"]["hostvars"]["outsider"]
    inv = parse_inventory(data, "inv")
    assert [w.name for w in inv.workers] == ["worker1"]


def test_master_bind_and_port_come_from_group_vars(files: dict[str, Path]) -> None:
    inv = parse_inventory(
        listing(
            files,
            ["master"],
            ["w"],
            master={"taskfleet_bind_ip": "10.1.2.3", "taskfleet_master_port": 7999},
        ),
        "inv",
    )
    assert (inv.master_bind, inv.master_port) == ("10.1.2.3", 7999)
    plain = parse_inventory(listing(files, ["master"], ["w"]), "inv")
    assert (plain.master_bind, plain.master_port) == ("172.28.40.10", 7451)


def test_no_master_and_no_workers_are_both_reported(files: dict[str, Path]) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(listing(files, [], []), "inventory/x")
    assert info.value.problems == [
        "taskfleet_master: needs exactly one host, found 0",
        "taskfleet_workers: needs at least one host, found 0",
    ]
    assert str(info.value) == (
        "inventory inventory/x is not usable — fix these:\n"
        "  taskfleet_master: needs exactly one host, found 0\n"
        "  taskfleet_workers: needs at least one host, found 0"
    )


def test_two_masters_are_named(files: dict[str, Path]) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(listing(files, ["m1", "m2"], ["w"]), "inv")
    assert info.value.problems == ["taskfleet_master: needs exactly one host, found 2 (m1, m2)"]


def test_bad_port_and_missing_key_file_name_the_host_and_variable(
    files: dict[str, Path], tmp_path: Path
) -> None:
    data = listing(
        files,
        ["master"],
        ["w1", "w2"],
        w1={"ansible_port": "ssh"},
        w2={"ansible_ssh_private_key_file": str(tmp_path / "gone")},
    )
    with pytest.raises(InventoryError) as info:
        parse_inventory(data, "inv")
    assert info.value.problems == [
        "hosts/w1/ansible_port: should be an integer 1-65535, got 'ssh'",
        f"hosts/w2/ansible_ssh_private_key_file: no such file: {tmp_path / 'gone'}",
    ]


def test_missing_known_hosts_file_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    data = listing(
        files,
        ["master"],
        ["w1"],
        w1={"ansible_ssh_common_args": f"-o UserKnownHostsFile={tmp_path}/nope"},
    )
    with pytest.raises(InventoryError) as info:
        parse_inventory(data, "inv")
    assert info.value.problems == [
        f"hosts/w1/ansible_ssh_common_args: UserKnownHostsFile {tmp_path}/nope does not exist "
        "— create it (ssh-keyscan, then check the fingerprints)"
    ]


def test_jinja_values_are_refused_rather_than_used_literally(files: dict[str, Path]) -> None:
    data = listing(files, ["master"], ["w1"], w1={"ansible_host": "{{ lookup('env', 'X') }}"})
    with pytest.raises(InventoryError) as info:
        parse_inventory(data, "inv")
    assert info.value.problems == [
        "hosts/w1/ansible_host: is a Jinja template (\"{{ lookup('env', 'X') }}\"); "
        "the Fabric tasks read literal values — set it literally"
    ]


def test_without_known_hosts_option_the_user_file_is_used(files: dict[str, Path]) -> None:
    data = listing(files, ["master"], ["w1"], w1={"ansible_ssh_common_args": "-o Compression=yes"})
    inv = parse_inventory(data, "inv")
    assert inv.workers[0].known_hosts is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("-o UserKnownHostsFile=/a/kh -o StrictHostKeyChecking=yes", "/a/kh"),
        ("-oUserKnownHostsFile=/b/kh", "/b/kh"),
        ("-o 'UserKnownHostsFile /c/kh /d/kh'", "/c/kh"),
        ("-o userknownhostsfile=/e/kh", "/e/kh"),
        ("-o StrictHostKeyChecking=yes", None),
        ("", None),
    ],
)
def test_known_hosts_file_is_found_in_ssh_args(args: str, expected: str | None) -> None:
    assert known_hosts_from_args(args) == expected


def test_unknown_host_name_lists_the_valid_ones(files: dict[str, Path]) -> None:
    inv = parse_inventory(listing(files, ["master"], ["worker1", "worker2"]), "inv")
    with pytest.raises(
        OpsError,
        match=r"^unknown host 'w9' — valid hosts: master, worker1, "
        r"worker2$",
    ):
        inv.host("w9")
    with pytest.raises(
        OpsError,
        match=r"^'master' is not a worker host — worker hosts: "
        r"worker1, worker2$",
    ):
        inv.worker("master")


# --- through the real ansible-inventory ------------------------------------------------

needs_ansible = pytest.mark.skipif(
    not (Path(sys.executable).parent / "ansible-inventory").exists()
    and shutil.which("ansible-inventory") is None,
    reason="ansible-inventory not installed",
)


@needs_ansible
def test_group_vars_and_host_vars_are_honoured(files: dict[str, Path], tmp_path: Path) -> None:
    inv_dir = tmp_path / "inv"
    (inv_dir / "group_vars" / "all").mkdir(parents=True)
    (inv_dir / "host_vars").mkdir()
    (inv_dir / "hosts.yml").write_text(
        "all:\n  children:\n"
        "    taskfleet_master:\n      hosts:\n        m:\n          ansible_host: 10.9.0.10\n"
        "    taskfleet_workers:\n      hosts:\n        w1:\n          ansible_host: 10.9.0.11\n"
    )
    (inv_dir / "group_vars" / "all" / "ssh.yml").write_text(
        f"ansible_user: deploy\nansible_ssh_private_key_file: {files['key']}\n"
        f"ansible_ssh_common_args: -o UserKnownHostsFile={files['known']}\n"
        "taskfleet_master_port: 7452\n"
    )
    (inv_dir / "host_vars" / "w1.yml").write_text("ansible_port: 2222\n")
    inv = load_inventory(inv_dir)
    assert (inv.master.address, inv.master_port) == ("10.9.0.10", 7452)
    assert (inv.workers[0].address, inv.workers[0].port) == ("10.9.0.11", 2222)
    assert inv.workers[0].known_hosts == files["known"]


@needs_ansible
def test_an_unparsable_inventory_is_one_error_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text("all: [this is: not an inventory\n")
    with pytest.raises(OpsError) as info:
        load_inventory(tmp_path)
    assert str(info.value) == (
        f"ansible-inventory cannot read {tmp_path}: YAML parsing failed: While parsing a flow "
        f"sequence did not find expected ',' or ']'. (at {tmp_path}/hosts.yml:2:1) "
        "— fix the inventory (or the vault password) and retry"
    )


def test_a_missing_inventory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(OpsError) as info:
        load_inventory(tmp_path / "nope")
    assert str(info.value) == (
        f"no inventory at {tmp_path / 'nope'} — use INVENTORY=local "
        "(make lab) or copy inventory/lab and fill in your hosts"
    )


def test_the_labs_inventory_is_named_after_the_lab_unless_overridden(tmp_path: Path) -> None:
    assert lab_inventory({}) == REPO / "inventory" / "local"
    assert lab_inventory({"TASKFLEET_LAB": "ux"}) == REPO / "inventory" / "ux"
    override = {"TASKFLEET_LAB": "ux", "TASKFLEET_LAB_INVENTORY": str(tmp_path)}
    assert lab_inventory(override) == tmp_path


def test_hints_add_the_inventory_setting_make_needs(tmp_path: Path) -> None:
    assert make_setting("inventory/local", env={}) == ""
    assert make_setting(REPO / "inventory" / "lab", env={}) == " INVENTORY=lab"
    assert make_setting(tmp_path, env={}) == f" INVENTORY={tmp_path}"
    # make's default follows an exported TASKFLEET_LAB
    assert make_setting("inventory/local", env={"TASKFLEET_LAB": "ux"}) == " INVENTORY=local"
    assert make_setting(REPO / "inventory" / "ux", env={"TASKFLEET_LAB": "ux"}) == ""
