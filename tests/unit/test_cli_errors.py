"""CLI error lines: one line, exact text, non-zero exit, nothing half-done."""

from __future__ import annotations

import fnmatch
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet import authkey, cli, defaults
from taskfleet.cli import error_line, main
from taskfleet.errors import TaskfleetError
from taskfleet.journal import Journal


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
    t0 = time.monotonic()
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
    took = time.monotonic() - t0
    assert code == 2  # status: 0 healthy, 1 degraded, 2 unreachable
    assert err == (
        f"taskfleet: error: cannot reach the master at 127.0.0.1:{port} within the connect"
        " timeout (1s): connection refused"
        " — check that the master runs there, the address and port, and the firewall"
    )
    assert 0.9 <= took < 2.0, f"kept trying for the whole timeout, not more: {took:.2f}s"


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


def test_every_error_line_is_bounded_and_keeps_what_to_do(
    capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """The printer bounds every line (5,000 characters of input here) and keeps the fix."""
    code, err = run(capsys, "status", "--master", "h" * 5000, "--authkey-file", key)
    assert code == 2
    assert len(err) == defaults.MAX_ERROR_LINE
    assert err.startswith("taskfleet: error: malformed --master 'hhhh")
    assert err.endswith("hhh' — use HOST:PORT, e.g. --master 10.0.0.1:7451")
    assert err.count("…") == 1  # cut in the middle: the start and the end of the what stay


def test_an_error_line_is_one_line_however_the_error_is_written() -> None:
    line = error_line(TaskfleetError("first\nsecond\n\tthird " + "x" * 1000, "do\nthis"))
    assert "\n" not in line and len(line) == defaults.MAX_ERROR_LINE
    assert line.startswith("taskfleet: error: first second third xxx") and line.endswith(
        "xxx — do this"
    )
    assert "…" in line
    assert error_line(TaskfleetError("short", "fix")) == "taskfleet: error: short — fix"
    long_fix = error_line(TaskfleetError("what", "f" * 1000))
    assert len(long_fix) <= defaults.MAX_ERROR_LINE and long_fix.startswith(
        "taskfleet: error: what — fff"
    )


def _submit_file(capsys: pytest.CaptureFixture[str], key: str, path: Path) -> tuple[int, str]:
    # No master needed: the items file is read (and refused) before anything is sent.
    return run(
        capsys, "submit", "squares", "--items-file", str(path), "--master", "h:1",
        "--authkey-file", key,
    )  # fmt: skip


def test_an_integer_too_long_for_an_items_file_is_refused_for_its_size(
    capsys: pytest.CaptureFixture[str], key: str, tmp_path: Path
) -> None:
    items = tmp_path / "items.txt"
    items.write_text("1\n\n" + "9" * (defaults.MAX_INT_DIGITS + 1) + "\n")
    assert _submit_file(capsys, key, items) == (
        2,
        f"taskfleet: error: items file {items}, line 3: an integer of 100,001 digits;"
        " an items file may hold integers of at most 100,000 — split such numbers,"
        " or submit them from Python (taskfleet.connect)",
    )


def test_an_items_file_that_is_not_text_or_holds_nothing_is_refused(
    capsys: pytest.CaptureFixture[str], key: str, tmp_path: Path
) -> None:
    binary = tmp_path / "items.bin"
    binary.write_bytes(b"1\n2\n\xff\xfe\x00\n")
    assert _submit_file(capsys, key, binary) == (
        2,
        f"taskfleet: error: cannot read items file {binary}: line 3 is not UTF-8 text"
        " — give a text file with one item per line",
    )
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert _submit_file(capsys, key, blank) == (
        2,
        f"taskfleet: error: items file {blank} holds no items — put one item per line",
    )


def test_items_file_lines_read_as_json_values_or_words() -> None:
    lines = ["7", "-12", "007", "2.5", "1e400", '"s"', "[1, 2]", "word here", "9" * 5000]
    items = list(cli._parse_items("f", io.BytesIO("\n".join(lines).encode())))
    assert items[:3] == [7, -12, "007"], "JSON's rules: a leading zero makes a word"
    assert items[3] == 2.5 and items[4] == float("inf") and items[5:8] == ["s", [1, 2], "word here"]
    assert items[8] == int("9" * 5000), "a 5,000-digit integer is an integer"


def test_a_master_whose_journal_directory_is_missing_changes_nothing(
    capsys: pytest.CaptureFixture[str], key: str, tmp_path: Path
) -> None:
    journal = tmp_path / "nope" / "j.db"
    with socket.socket() as s:  # a free port: the master binds it, then finds no journal
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code, err = run(
        capsys, "master", "--bind", "127.0.0.1", "--port", port, "--authkey-file", key,
        "--journal", str(journal),
    )  # fmt: skip
    assert code == 1
    assert err == (
        f"taskfleet: error: cannot create the journal's lock file {journal}.lock:"
        " No such file or directory — give a --journal path in a writable directory"
    )
    assert not (tmp_path / "nope").exists()


def test_journal_commands_refuse_a_missing_file_and_an_existing_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "gone.db"
    assert run(capsys, "journal", "check", str(missing)) == (
        2,
        f"taskfleet: error: cannot read {missing}: No such file or directory"
        " — give the path of a journal file",
    )
    journal = tmp_path / "j.db"
    Journal(str(journal)).close()
    taken = tmp_path / "out.jsonl"
    taken.write_text("keep me")
    assert run(capsys, "journal", "export", str(journal), "--output", str(taken)) == (
        2,
        f"taskfleet: error: cannot create {taken}: File exists"
        " — give a new file in a writable directory (an existing one is never replaced)",
    )
    assert taken.read_text() == "keep me"
