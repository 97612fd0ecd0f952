"""CLI error lines: one line, exact text, non-zero exit, nothing half-done."""

from __future__ import annotations

import fnmatch
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet import authkey
from taskfleet.cli import main


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "key"
    authkey.keygen(str(path))
    return str(path)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return code, err.rstrip("\n")


def test_malformed_master_address(capsys: pytest.CaptureFixture[str], key: str) -> None:
    assert run(capsys, "status", "--master", "nonsense", "--authkey-file", key) == (
        2,
        "taskfleet: error: malformed --master 'nonsense'"
        " — use HOST:PORT, e.g. --master 10.0.0.1:7451",
    )


def test_missing_master_address(
    capsys: pytest.CaptureFixture[str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKFLEET_MASTER", raising=False)
    assert run(capsys, "status", "--authkey-file", key) == (
        2,
        "taskfleet: error: no master address given"
        " — pass --master HOST:PORT or --profile PATH, or set TASKFLEET_MASTER",
    )


def test_missing_authkey_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "nokey"
    assert run(capsys, "worker", "--master", "127.0.0.1:7451", "--authkey-file", str(p)) == (
        2,
        f"taskfleet: error: authkey file {p} does not exist"
        f" — create it with taskfleet keygen {p} and copy it to every host",
    )


def test_env_fallbacks_are_used(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "k"
    p.write_text("x" * 40)
    p.chmod(0o604)
    monkeypatch.setenv("TASKFLEET_MASTER", "127.0.0.1:1")
    monkeypatch.setenv("TASKFLEET_AUTHKEY_FILE", str(p))
    assert run(capsys, "status") == (
        2,
        f"taskfleet: error: authkey file {p} is accessible by every user (mode 0604)"
        f" — chmod 600 {p}",
    )


def test_master_unreachable_gives_up_after_the_timeout_and_status_exits_2(
    capsys: pytest.CaptureFixture[str], key: str
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = run(
        capsys,
        "status",
        "--master",
        f"127.0.0.1:{port}",
        "--authkey-file",
        key,
        "--connect-timeout",
        "1",
    )
    assert code == 2  # status: 0 healthy, 1 degraded, 2 unreachable
    assert err == (
        f"taskfleet: error: cannot reach the master at 127.0.0.1:{port} (connection refused)"
        " — check that the master runs there, the address and port, and the firewall"
    )


def test_port_in_use(
    capsys: pytest.CaptureFixture[str], key: str, busy_port: int, tmp_path: Path
) -> None:
    journal = tmp_path / "j.db"
    code, err = run(
        capsys,
        "master",
        "--bind",
        "127.0.0.1",
        "--port",
        str(busy_port),
        "--authkey-file",
        key,
        "--journal",
        str(journal),
    )
    assert code == 1
    assert err == (
        f"taskfleet: error: port {busy_port} on 127.0.0.1 is already in use"
        f" — stop what listens there (ss -ltnp 'sport = :{busy_port}') or choose another --port"
    )
    assert not journal.exists(), "nothing half-done: no journal created"


def test_bind_address_not_on_this_machine(capsys: pytest.CaptureFixture[str], key: str) -> None:
    # 192.0.2.1 is TEST-NET-1: never local; binding sends no packet.
    code, err = run(
        capsys, "master", "--bind", "192.0.2.1", "--port", "7451", "--authkey-file", key
    )
    assert code == 1
    assert err == (
        "taskfleet: error: cannot bind 192.0.2.1:7451: 192.0.2.1 is not an address of this machine"
        " — use one of this host's addresses (ip -brief addr) or 0.0.0.0"
    )


def test_bad_numbers_and_unknown_commands(capsys: pytest.CaptureFixture[str], key: str) -> None:
    assert run(
        capsys, "submit", "squares", "--range", "0", "--master", "h:1", "--authkey-file", key
    ) == (
        2,
        "taskfleet: error: argument --range: '0' must be at least 1"
        " — see 'taskfleet submit --help'",
    )
    code, err = run(capsys, "frobnicate")
    assert code == 2 and err.startswith(
        "taskfleet: error: argument COMMAND: invalid choice: 'frobnicate'"
    )


def test_keygen_refuses_overwrite(capsys: pytest.CaptureFixture[str], key: str) -> None:
    assert run(capsys, "keygen", key) == (
        2,
        f"taskfleet: error: {key} already exists"
        " — keep it (every host must share one key) or pass --force to replace it",
    )


def test_items_file_missing(capsys: pytest.CaptureFixture[str], key: str, tmp_path: Path) -> None:
    p = tmp_path / "items.txt"
    assert run(
        capsys,
        "submit",
        "squares",
        "--items-file",
        str(p),
        "--master",
        "h:1",
        "--authkey-file",
        key,
    ) == (
        2,
        f"taskfleet: error: cannot read items file {p}: No such file or directory"
        " — give a readable text file with one item per line",
    )


def test_healthcheck_worker_stale_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import os

    hb = tmp_path / "hb"
    hb.write_text("x")
    os.utime(hb, (1, 1))
    code, err = run(capsys, "healthcheck", "worker", "--heartbeat-file", str(hb), "--max-age", "30")
    assert code == 1
    assert err.startswith(f"taskfleet: error: heartbeat file {hb} is ")
    assert err.endswith("s old (limit 30s) — the worker cannot reach the master; see its log")


@pytest.mark.parametrize(
    "argv",
    [
        ["master"],
        ["worker"],
        ["submit", "squares", "--range", "3"],
        ["smoke", "--count", "3"],
        ["status"],
        ["healthcheck", "master"],
        ["jobs"],
        ["job", "abc"],
        ["results", "abc"],
        ["cancel", "abc"],
    ],
)
def test_every_command_that_connects_takes_the_tls_files(argv: list[str]) -> None:
    from taskfleet.cli import build_parser

    args = build_parser().parse_args([*argv, "--tls-ca", "a", "--tls-cert", "b", "--tls-key", "c"])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == ("a", "b", "c")


def test_some_tls_files_without_the_others_is_one_line(
    capsys: pytest.CaptureFixture[str], key: str
) -> None:
    assert run(
        capsys, "status", "--master", "127.0.0.1:1", "--authkey-file", key, "--tls-key", "k"
    ) == (
        2,
        "taskfleet: error: --tls-key given without --tls-ca and --tls-cert — pass all three of"
        " --tls-ca, --tls-cert and --tls-key (or none, for a plaintext cluster)",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["submit", "squares", "--range", "5", "--on-error", "ignore"],
            # argparse quotes the choices from Python 3.12 on
            "argument --on-error: invalid choice: 'ignore' (choose from *fail*, *skip*)"
            " — see 'taskfleet submit --help'",
        ),
        (
            ["submit", "squares", "--range", "5", "--retries", "-1"],
            "argument --retries: '-1' must be at least 0 — see 'taskfleet submit --help'",
        ),
        (
            ["submit", "squares", "--range", "5", "--item-timeout", "0"],
            "argument --item-timeout: '0' must be greater than 0 — see 'taskfleet submit --help'",
        ),
        (
            ["master", "--keep-for", "7 days"],
            "argument --keep-for: '7 days' is not a duration (use e.g. 90s, 30m, 12h, 7d;"
            " 0 for no limit) — see 'taskfleet master --help'",
        ),
        (
            ["cancel"],
            "the following arguments are required: JOB_ID — see 'taskfleet cancel --help'",
        ),
    ],
)
def test_bad_job_control_options_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], key: str, argv: list[str], message: str
) -> None:
    code, err = run(capsys, *argv, "--authkey-file", key)
    assert code == 2 and fnmatch.fnmatchcase(err, f"taskfleet: error: {message}"), err
