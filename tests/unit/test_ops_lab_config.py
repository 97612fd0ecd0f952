"""One name for a lab: its subnet and inventory derive from it; hints repeat it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from taskfleet.ops.engine import REPO
from taskfleet.ops.errors import LabError
from taskfleet.ops.lab import LabConfig, render_inventory
from taskfleet.ops.lab.config import (
    DEFAULT_SUBNET,
    DERIVED_SUBNETS,
    derive_subnet,
    subnet_candidates,
)
from taskfleet.ops.lab.demo import next_steps, summary

LOCAL = ipaddress.IPv4Network(DEFAULT_SUBNET)


def no_docker() -> dict[str, list[str]]:
    raise AssertionError("Docker was asked although nothing had to be derived")


def networks(**subnets: str) -> dict[str, list[str]]:
    return {name.replace("_", "-"): [subnet] for name, subnet in subnets.items()}


def test_the_default_lab_is_local_on_its_fixed_subnet_without_asking_docker() -> None:
    cfg = LabConfig.from_env({}, networks=no_docker)
    assert (cfg.name, cfg.subnet, cfg.inventory_dir) == ("local", LOCAL, REPO / "inventory/local")
    assert (cfg.network, cfg.container("master"), cfg.addr(10)) == (
        "taskfleet-local",
        "taskfleet-local-master",
        "172.28.10.10",
    )


def test_a_named_lab_gets_its_own_inventory_and_a_subnet_from_its_name() -> None:
    cfg = LabConfig.from_env({"TASKFLEET_LAB": "ux"}, networks=lambda: {})
    assert cfg.inventory_dir == REPO / "inventory" / "ux"
    assert cfg.subnet == subnet_candidates("ux")[0]
    assert cfg.subnet in DERIVED_SUBNETS
    # the same name, the same subnet; another name starts elsewhere
    assert LabConfig.from_env({"TASKFLEET_LAB": "ux"}, networks=lambda: {}).subnet == cfg.subnet
    assert {subnet_candidates(n)[0] for n in ("ux", "mine", "ci", "demo")} != {cfg.subnet}


def test_derived_subnets_never_take_the_default_labs_or_the_container_tests() -> None:
    for subnet in DERIVED_SUBNETS:
        assert not subnet.overlaps(LOCAL)
        assert not subnet.overlaps(ipaddress.IPv4Network("172.28.50.0/24"))
    assert sorted(subnet_candidates("x")) == sorted(DERIVED_SUBNETS)


def test_a_taken_candidate_is_skipped_for_the_next_free_one() -> None:
    first, second, third = subnet_candidates("ux")[:3]
    taken = networks(other_lab=str(first), compose_net=str(second.network_address + 64) + "/26")
    assert derive_subnet("ux", taken) == third


def test_a_lab_keeps_the_subnet_its_network_already_has() -> None:
    # e.g. created with TASKFLEET_LAB_SUBNET before: `make lab LAB=ux` again must not move it
    own = networks(taskfleet_ux="172.28.11.0/24")
    assert derive_subnet("ux", own) == ipaddress.IPv4Network("172.28.11.0/24")
    ipv6_only = {"taskfleet-ux": ["fd00::/64"]}
    assert derive_subnet("ux", ipv6_only) == subnet_candidates("ux")[0]


def test_no_free_subnet_is_one_line_naming_the_way_out() -> None:
    everything = networks(big="172.28.0.0/16")
    assert derive_subnet("ux", everything) is None
    with pytest.raises(LabError) as info:
        LabConfig.from_env({"TASKFLEET_LAB": "ux"}, networks=lambda: everything)
    assert str(info.value) == (
        "no free /24 for lab 'ux': each of 172.28.100.0/24 … 172.28.254.0/24 overlaps a "
        "Docker network — remove a lab you no longer use (make lab-down LAB=<name>), or set "
        "TASKFLEET_LAB_SUBNET to a free private /24"
    )
    # taking a lab down needs no free subnet
    down = LabConfig.from_env(
        {"TASKFLEET_LAB": "ux"}, networks=lambda: everything, need_free_subnet=False
    )
    assert down.name == "ux"


def test_explicit_settings_override_what_the_name_derives(tmp_path: Path) -> None:
    env = {
        "TASKFLEET_LAB": "ops",
        "TASKFLEET_LAB_SUBNET": "172.28.11.0/24",
        "TASKFLEET_LAB_INVENTORY": str(tmp_path / "inv"),
        "LAB_WORKERS": "2",
        "TASKFLEET_LAB_APT_CACHE": "0",
    }
    cfg = LabConfig.from_env(env, networks=no_docker)
    assert (cfg.subnet, cfg.inventory_dir, cfg.workers, cfg.apt_cache) == (
        ipaddress.IPv4Network("172.28.11.0/24"),
        tmp_path / "inv",
        2,
        False,
    )
    assert [h.name for h in cfg.hosts()] == ["master", "worker1", "worker2", "outsider"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TASKFLEET_LAB": "Bad_Name"},
            "TASKFLEET_LAB='Bad_Name' is not a valid lab name — use 1-30 characters a-z, 0-9 "
            "and '-', starting with a letter or digit",
        ),
        (
            {"LAB_WORKERS": "0"},
            "LAB_WORKERS='0' must be a whole number from 1 to 80 — e.g. LAB_WORKERS=3",
        ),
        (
            {"TASKFLEET_LAB_SUBNET": "8.8.8.0/24"},
            "TASKFLEET_LAB_SUBNET=8.8.8.0/24 must be a private /24 or larger (hosts use .2 … .99)"
            " — use e.g. 172.28.20.0/24",
        ),
    ],
)
def test_bad_settings_are_refused_before_docker_is_asked(env: dict[str, str], message: str) -> None:
    with pytest.raises(LabError) as info:
        LabConfig.from_env(env, networks=no_docker)
    assert str(info.value) == message


def test_hints_name_the_lab_unless_it_is_the_default() -> None:
    local = LabConfig.from_env({}, networks=no_docker)
    ux = LabConfig.from_env({"TASKFLEET_LAB": "ux"}, networks=lambda: {})
    assert (local.make("lab-down"), ux.make("lab-down")) == (
        "make lab-down",
        "make lab-down LAB=ux",
    )
    assert "rewritten by every `make lab LAB=ux`" in render_inventory(ux)


def test_the_demos_next_line_repeats_the_lab_or_the_inventory(tmp_path: Path) -> None:
    local = LabConfig.from_env({}, networks=no_docker)
    assert next_steps(local) == "make status | make smoke | make teardown | make lab-down"
    ux = LabConfig.from_env({"TASKFLEET_LAB": "ux"}, networks=lambda: {})
    assert next_steps(ux) == (
        "make status LAB=ux | make smoke LAB=ux | make teardown LAB=ux | make lab-down LAB=ux"
    )
    elsewhere = LabConfig.from_env(
        {"TASKFLEET_LAB": "ops", "TASKFLEET_LAB_INVENTORY": str(tmp_path / "inv")},
        networks=lambda: {},
    )
    assert next_steps(elsewhere) == (
        f"make status INVENTORY={tmp_path}/inv | make smoke INVENTORY={tmp_path}/inv"
        f" | make teardown INVENTORY={tmp_path}/inv | make lab-down LAB=ops"
    )
    in_repo = LabConfig.from_env(
        {"TASKFLEET_LAB": "ops", "TASKFLEET_LAB_INVENTORY": str(REPO / "inventory/ops-2")},
        networks=lambda: {},
    )
    assert next_steps(in_repo).startswith("make status INVENTORY=ops-2 | ")


def test_the_demo_summary_reads_the_smoke_report() -> None:
    report = {
        "master": "172.28.10.10:7451",
        "hosts": {"worker2": 12600, "worker1": 1600},
        "workers": ["w1-1", "w1-2", "w2-1", "w2-2"],
        "verified": 20000,
        "count": 20000,
        "items_per_s": 590530.4,
    }
    ux = LabConfig.from_env({"TASKFLEET_LAB": "ux"}, networks=lambda: {})
    assert summary(report, ux).splitlines() == [
        "",
        "==> taskfleet demo: OK",
        "    master        172.28.10.10:7451",
        "    worker hosts  2 (worker1=1600, worker2=12600 items)",
        "    workers       4",
        "    verified      20000 of 20000 squares",
        "    speed         590530 items/s",
        "    next: make status LAB=ux | make smoke LAB=ux | make teardown LAB=ux"
        " | make lab-down LAB=ux",
    ]
