"""Nothing a user types can brick the master: real processes on loopback.

Limits refused before anything is journaled, journal entries that cannot be
loaded, one master per journal (``kill -9`` included), damaged journals and what
``taskfleet journal check|export`` recovers from them, timeouts honoured within
a second, streamed item lists in bounded memory, exact item validation.
"""

from __future__ import annotations

import json
import pickle
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskfleet import __version__, cli, defaults
from taskfleet.journal import Journal
from tests.integration.conftest import REPO, Cluster
from tests.waiting import wait_for


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed command (and that it is exactly one line)."""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.rstrip("\n")
    assert len(line) <= defaults.MAX_ERROR_LINE
    return line


def master_fails(cluster: Cluster, journal: Path, name: str = "refused") -> tuple[int, str]:
    """Start a master that must refuse to start: its exit code and its last log line."""
    proc = cluster.spawn(
        name,
        "master",
        "--bind",
        "127.0.0.1",
        "--port",
        str(cluster.port),
        "--authkey-file",
        str(cluster.key),
        "--journal",
        str(journal),
    )
    code = proc.popen.wait(timeout=60)
    lines = proc.text().strip().splitlines()
    assert "Traceback" not in proc.text(), proc.text()
    return code, lines[-1]


# -- limits: refused before anything is journaled --------------------------------------------


def test_a_job_the_master_cannot_hold_is_refused_at_submit_and_never_journaled(
    cluster: Cluster, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.db"
    master = cluster.master(journal=journal)
    r = cluster.client("submit", "squares", "--range", str(10**15))
    assert r.returncode == 2
    assert one_line(r) == (
        "taskfleet: error: 1,000,000,000,000,000 items in chunks of 1,000 make"
        " 1,000,000,000,000 chunks; a job has at most 10,000,000 (the master keeps one bit per"
        " chunk) — split it into jobs of at most 100,000,000,000,000 items"
    )
    r = cluster.client("submit", "squares", "--range", str(10**11))
    assert one_line(r).endswith("— use --chunk-size 10000 or more, or split the job")
    assert cluster.status()["jobs"] == [], "nothing was created"
    master.signal(signal.SIGTERM)
    master.popen.wait(timeout=30)
    cluster.master(journal=journal, name="master2")  # and every restart starts
    assert cluster.status()["jobs"] == []


def test_squares_refuses_an_item_that_is_not_an_integer_in_one_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.master()
    items = tmp_path / "items.txt"
    for line, shown, kind in [
        ("2.5", "2.5", "float"),
        ("NaN", "nan", "float"),
        ("1e400", "inf", "float"),
        ("true", "True", "bool"),
        ("abc", "'abc'", "str"),
    ]:
        items.write_text(f"1\n2\n{line}\n4\n")
        r = cluster.client("submit", "squares", "--items-file", str(items))
        assert r.returncode == 2
        assert one_line(r) == (
            f"taskfleet: error: squares: item 3 ({shown}) is a {kind}, not an integer"
            " — give squares whole numbers, one per line in the items file"
        )
    assert cluster.status()["jobs"] == []


def test_a_5000_digit_integer_is_squared_and_printed_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.master()
    cluster.worker("w1")
    digits = "1" + "0" * 4998 + "7"  # 5,000 digits: past Python's 4,300-digit text limit
    items = tmp_path / "items.txt"
    items.write_text(f"3\n{digits}\n")
    r = cluster.client("submit", "squares", "--items-file", str(items))
    assert r.returncode == 0, r.stderr
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # so this test can do the arithmetic in text
    try:
        assert r.stdout.splitlines() == ["3\t9", f"{digits}\t{int(digits) ** 2}"]
    finally:
        sys.set_int_max_str_digits(before)


def test_a_refused_item_deep_in_a_streamed_file_leaves_no_job_behind(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The upload is refused at the batch holding the bad item; what it journaled goes."""
    master = cluster.master()
    n = 3 * defaults.UPLOAD_BATCH_ITEMS
    items = tmp_path / "items.txt"
    items.write_text("".join(f"{k}\n" for k in range(n)) + "oops\n")
    r = cluster.client("submit", "squares", "--items-file", str(items))
    assert r.returncode == 2
    assert one_line(r) == (
        f"taskfleet: error: squares: item {n + 1} ('oops') is a str, not an integer"
        " — give squares whole numbers, one per line in the items file"
    )
    assert cluster.status()["jobs"] == []
    master.wait_for(r"upload dropped after 150000 items \(refused: squares: item 150001")


def test_an_items_file_that_turns_bad_halfway_drops_its_upload_on_the_master(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The client stops at the bad line and tells the master to drop what it sent."""
    master = cluster.master()
    n = 2 * defaults.UPLOAD_BATCH_ITEMS + 10
    items = tmp_path / "items.txt"
    items.write_bytes(b"".join(b"%d\n" % k for k in range(n)) + b"\xff\xfe\n")
    r = cluster.client("submit", "squares", "--items-file", str(items))
    assert r.returncode == 2
    assert one_line(r) == (
        f"taskfleet: error: cannot read items file {items}: line {n + 1} is not UTF-8 text"
        " — give a text file with one item per line"
    )
    master.wait_for(r"upload dropped after \d+ items \(cancelled from 127\.0\.0\.1:")
    assert cluster.status()["jobs"] == []


# -- a journal entry that cannot be loaded ---------------------------------------------------


def test_journal_entries_that_cannot_be_loaded_fail_their_jobs_and_the_master_serves(
    cluster: Cluster, tmp_path: Path
) -> None:
    """What an older master left behind: a job too large to hold (it died of MemoryError on
    every start) and an item list that no longer unpickles."""
    journal = tmp_path / "journal.db"
    Journal(str(journal)).close()
    with sqlite3.connect(journal) as conn:
        conn.execute(
            "INSERT INTO jobs (id, job, chunk_size, start, stop, created)"
            " VALUES ('huge', 'squares', 1000, 0, ?, 1.0)",
            (10**15,),
        )
        conn.execute(
            "INSERT INTO jobs (id, job, chunk_size, start, stop, items, created)"
            " VALUES ('garbled', 'squares', 10, 0, 0, ?, 2.0)",
            (b"\x80\x05garbage",),
        )
    conn.close()
    master = cluster.master(journal=journal)
    master.wait_for("job huge cannot be loaded")
    cluster.worker("w1")
    jobs = {j["id"]: j for j in cluster.status()["jobs"]}
    assert jobs["huge"]["state"] == "failed"
    assert jobs["huge"]["error"] == (
        "the master could not load this job: 1,000,000,000,000,000 items in chunks of 1,000 make"
        " 1,000,000,000,000 chunks; a job has at most 10,000,000 (the master keeps one bit per"
        " chunk)"
    )
    assert jobs["huge"]["items_total"] == 10**15
    assert jobs["garbled"]["state"] == "failed"
    assert jobs["garbled"]["error"].startswith(
        "the master could not load this job: its items cannot be read (UnpicklingError: "
    )
    r = cluster.client("smoke", "--count", "2000", "--json")
    assert r.returncode == 0, r.stderr
    r = cluster.client("jobs", "--json")
    states = {j["id"]: j["state"] for j in json.loads(r.stdout)["jobs"]}
    assert states["huge"] == states["garbled"] == "failed"
    master.signal(signal.SIGTERM)
    master.popen.wait(timeout=30)
    master2 = cluster.master(journal=journal, name="master2")
    assert "cannot be loaded" not in master2.text(), "the verdict was journaled"
    assert {j["id"]: j["state"] for j in cluster.status()["jobs"]}["huge"] == "failed"


# -- one master per journal ------------------------------------------------------------------


def test_a_second_master_on_the_same_journal_is_refused_and_kill_9_frees_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.db"
    first = cluster.master(journal=journal)
    cluster.worker("w1")
    r = cluster.client("submit", "squares", "--range", "50000", "--no-wait")
    job_id = r.stdout.strip()
    second_port = str(cluster.port + 1 if cluster.port < 65535 else cluster.port - 1)
    second = cluster.spawn(
        "second",
        "master",
        "--bind",
        "127.0.0.1",
        "--port",
        second_port,
        "--authkey-file",
        str(cluster.key),
        "--journal",
        str(journal),
    )
    assert second.popen.wait(timeout=60) == 1
    line = second.text().strip().splitlines()[-1]
    assert line.startswith(
        f"taskfleet: error: journal {journal} is in use by another master"
        f" (pid {first.pid} on host {socket.gethostname()}, since "
    )
    assert line.endswith(") — stop that master first, or give this one another --journal")
    assert cluster.status()["jobs"][0]["id"] == job_id, "the first master serves on"

    first.signal(signal.SIGKILL)
    first.popen.wait(timeout=10)
    restarted = cluster.master(journal=journal, name="master2")  # the kernel freed the lock
    assert "in use" not in restarted.text()
    done = cluster.wait_status(lambda st: st["jobs"][0]["state"] == "done", timeout=120)
    assert done["jobs"][0]["items_done"] == 50000


# -- damaged journals, and what can be recovered ---------------------------------------------


@pytest.fixture
def used_journal(cluster: Cluster, tmp_path: Path) -> Iterator[Path]:
    """A journal with a range job, an item-list job and their results, its master stopped
    (so the WAL is checkpointed into the file)."""
    journal = tmp_path / "used.db"
    master = cluster.master(journal=journal, name="writer")
    worker = cluster.worker("w1")
    r = cluster.client("submit", "squares", "--range", "20000", "--chunk-size", "100")
    assert r.returncode == 0, r.stderr
    items = tmp_path / "items.txt"
    items.write_text("".join(f"{k}\n" for k in range(300)))
    r = cluster.client("submit", "squares", "--items-file", str(items), "--chunk-size", "100")
    assert r.returncode == 0, r.stderr
    worker.signal(signal.SIGTERM)
    worker.popen.wait(timeout=30)
    master.signal(signal.SIGTERM)
    master.popen.wait(timeout=30)
    assert not Path(f"{journal}-wal").exists()
    yield journal


FIX = (
    " — move it and its -wal/-shm files aside, then start again;"
    " taskfleet journal check FILE tells what is recoverable"
)


def test_a_truncated_journal_is_refused_and_check_and_export_recover_what_is_there(
    cluster: Cluster, used_journal: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.db"
    data = used_journal.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    code, line = master_fails(cluster, broken)
    assert code == 1
    assert line == (
        f"taskfleet: error: journal {broken} is damaged (database disk image is malformed)" + FIX
    )
    assert broken.read_bytes() == data[: len(data) * 2 // 3], "left as it was"

    r = cluster.run("journal", "check", str(broken), "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["kind"] == "journal" and not report["intact"]
    assert report["problems"][0].startswith("the file is shorter than its header says")
    assert report["tables"]["jobs"] == {"readable": 2, "unreadable": 0}
    assert {j["items"] for j in report["jobs"]} == {20000, 300}
    r = cluster.run("journal", "check", str(broken))
    size = len(data) * 2 // 3
    assert r.stdout.splitlines()[0] == f"{broken}: a taskfleet journal, {size:,} bytes — DAMAGED"
    assert r.stdout.splitlines()[-1].startswith(f"what to do: taskfleet journal export {broken}")

    out = tmp_path / "recovered.jsonl"
    r = cluster.run("journal", "export", str(broken), "--output", str(out))
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [rec["record"] for rec in records]
    assert kinds[0] == "journal" and kinds[-1] == "summary" and kinds.count("job") == 2
    ranged = next(rec["id"] for rec in records if rec["record"] == "job" and rec["range"])
    results = [rec for rec in records if rec["record"] == "result" and rec["job_id"] == ranged]
    assert results, "some results are still readable"
    for rec in results:  # what is recovered is right
        base = rec["chunk"] * 100
        assert rec["results"] == [x * x for x in range(base, base + 100)]
    summary = records[-1]
    assert summary["intact"] is False
    assert summary["tables"]["done"]["readable"] == kinds.count("result")


def test_an_intact_journal_exports_every_job_item_and_result(
    cluster: Cluster, used_journal: Path
) -> None:
    r = cluster.run("journal", "check", str(used_journal))
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[0].endswith("— intact")
    r = cluster.run("journal", "export", str(used_journal))
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    jobs = {rec["id"]: rec for rec in records if rec["record"] == "job"}
    ranged = next(j for j in jobs.values() if j["range"] is not None)
    listed = next(j for j in jobs.values() if j["range"] is None)
    assert ranged["range"] == [0, 20000, 1] and listed["items"] == 300
    items = {rec["chunk"]: rec["items"] for rec in records if rec["record"] == "items"}
    assert [x for c in sorted(items) for x in items[c]] == list(range(300))
    results = [rec for rec in records if rec["record"] == "result"]
    assert len(results) == 200 + 3
    by_chunk = {r["chunk"]: r["results"] for r in results if r["job_id"] == listed["id"]}
    assert [x for c in sorted(by_chunk) for x in by_chunk[c]] == [k * k for k in range(300)]
    assert records[-1] == {
        "record": "summary",
        "intact": True,
        "problems": [],
        "tables": {
            "jobs": {"readable": 2, "unreadable": 0},
            "chunk_items": {"readable": 3, "unreadable": 0},
            "done": {"readable": 203, "unreadable": 0},
            "errors": {"readable": 0, "unreadable": 0},
        },
    }


def test_random_bytes_and_a_foreign_database_are_refused_and_reported(
    cluster: Cluster, tmp_path: Path
) -> None:
    noise = tmp_path / "noise.db"
    noise.write_bytes(random.Random(15).randbytes(64 * 1024))
    assert master_fails(cluster, noise, "noise") == (
        1,
        f"taskfleet: error: journal {noise} is not a taskfleet journal"
        " (file is not a database)" + FIX,
    )
    r = cluster.run("journal", "check", str(noise))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{noise}: not an SQLite database, 65,536 bytes — unusable",
        "  problem: the file is not an SQLite database",
        "what to do: nothing here can be recovered; start the master on a new journal",
    ]

    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    conn.close()
    before = foreign.read_bytes()
    assert master_fails(cluster, foreign, "foreign") == (
        1,
        f"taskfleet: error: journal {foreign} is not a taskfleet journal"
        " (an SQLite database with the tables invoices)" + FIX,
    )
    assert foreign.read_bytes() == before
    r = cluster.run("journal", "check", str(foreign))
    assert r.returncode == 1 and "an SQLite database, not a taskfleet journal" in r.stdout
    r = cluster.run("journal", "export", str(foreign))
    assert r.returncode == 2 and one_line(r).startswith(
        f"taskfleet: error: {foreign} holds no taskfleet journal"
    )


def test_journal_check_names_the_master_that_holds_a_live_journal(
    cluster: Cluster, tmp_path: Path
) -> None:
    journal = tmp_path / "live.db"
    master = cluster.master(journal=journal)
    r = cluster.run("journal", "check", str(journal))
    assert r.returncode == 0, r.stdout
    assert f"  in use by a master (pid {master.pid} on host {socket.gethostname()}, since" in (
        r.stdout
    )


# -- timeouts: honoured within a second, saying what timed out -------------------------------
#
# The commands run in this process (cli.main), so the time measured is the command's own and
# not the interpreter's start, which on a busy machine varies by more than a second.


@pytest.fixture
def black_hole() -> Iterator[str]:
    """HOST:PORT on 127.0.0.2 where a connection never completes: a listener whose
    backlog is full (one queued connection, never accepted), so SYNs are dropped."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        yield f"127.0.0.2:{listener.getsockname()[1]}"
    finally:
        filler.close()
        listener.close()


@pytest.fixture
def mute() -> Iterator[str]:
    """HOST:PORT on 127.0.0.3 that accepts connections (in the kernel) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.3", 0))
    listener.listen(64)
    try:
        yield f"127.0.0.3:{listener.getsockname()[1]}"
    finally:
        listener.close()


Command = Callable[..., tuple[int, str, float]]


@pytest.fixture
def command(capsys: pytest.CaptureFixture[str]) -> Iterator[Command]:
    """Run the command line in this process: (exit code, its one error line, seconds)."""
    digits = sys.get_int_max_str_digits()

    def run(*argv: str) -> tuple[int, str, float]:
        t0 = time.monotonic()
        code = cli.main(list(argv))
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("taskfleet: error:") == 1, err
        line = err.splitlines()[-1]  # after submit's "job J: … items in … chunks"
        assert line.startswith("taskfleet: error:") and len(line) <= defaults.MAX_ERROR_LINE
        return code, line, took

    yield run
    sys.set_int_max_str_digits(digits)  # submit and results lift it for themselves


UNREACHABLE = "check that the master runs there, the address and port, and the firewall"


def test_connect_timeout_3_to_an_address_that_drops_packets_fails_in_3_seconds(
    cluster: Cluster, black_hole: str, command: Command
) -> None:
    code, line, took = command(
        "status", "--master", black_hole, "--authkey-file", str(cluster.key),
        "--connect-timeout", "3",
    )  # fmt: skip
    assert code == 2  # status: the master cannot be reached
    assert line == (
        f"taskfleet: error: cannot reach the master at {black_hole} within the connect timeout"
        f" (3s): no answer in time — {UNREACHABLE}"
    )
    assert 3.0 <= took <= 4.0, took


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs"],
        ["job", "abc"],
        ["results", "abc"],
        ["cancel", "abc"],
        ["healthcheck", "master"],
        ["submit", "squares", "--range", "10"],
        ["smoke", "--count", "10"],
    ],
    ids=lambda argv: "-".join(argv[:2]) if argv[0] == "healthcheck" else argv[0],
)
def test_every_command_honours_its_connect_timeout(
    cluster: Cluster, argv: list[str], black_hole: str, mute: str, command: Command
) -> None:
    for where in (black_hole, mute):
        code, line, took = command(
            *argv, "--master", where, "--authkey-file", str(cluster.key),
            "--connect-timeout", "1.5",
        )  # fmt: skip
        assert code == 1
        assert line == (
            f"taskfleet: error: cannot reach the master at {where} within the connect timeout"
            f" (1.5s): no answer in time — {UNREACHABLE}"
        )
        assert 1.5 <= took <= 2.5, f"{argv[0]} to {where}: {took:.2f}s"


def test_submit_results_and_smoke_timeouts_bound_the_wait_and_say_what_timed_out(
    cluster: Cluster, command: Command
) -> None:
    master = cluster.master()  # no workers: nothing finishes
    code, line, took = command(*cluster.client_args("submit", "squares", "--range", "10"),
                               "--timeout", "2")  # fmt: skip
    assert code == 1 and 2.0 <= took <= 3.0, took
    job_id = line.split()[3]
    assert line == (
        f"taskfleet: error: job {job_id} not finished within --timeout 2s (still pending,"
        f" 0/10 items done) — it keeps running on the master; follow it with"
        f" taskfleet job {job_id}"
    )
    code, line, took = command(*cluster.client_args("results", job_id, "--timeout", "2"))
    assert code == 1 and 2.0 <= took <= 3.0, took
    assert line.startswith(f"taskfleet: error: job {job_id} not finished within --timeout 2s (")
    code, line, took = command(*cluster.client_args("smoke", "--count", "10", "--timeout", "2"))
    assert code == 1 and 2.0 <= took <= 3.0, took
    assert line.startswith("taskfleet: error: smoke failed: timed out after --timeout 2s (")

    master.signal(signal.SIGSTOP)  # a hung master: the kernel accepts, nobody answers
    try:
        code, line, took = command(
            *cluster.client_args("submit", "squares", "--range", "10", "--timeout", "2")
        )
        assert code == 1 and 2.0 <= took <= 3.0, took
        assert line == (
            "taskfleet: error: the job was not submitted within --timeout 2s (no answer from the"
            f" master at {cluster.address} in time) — check the master (taskfleet status),"
            " then submit again"
        )
        code, line, took = command(*cluster.client_args("smoke", "--count", "10", "--timeout", "2"))
        assert code == 1 and 2.0 <= took <= 3.0, took
        assert line.startswith(
            "taskfleet: error: smoke failed: timed out after --timeout 2s before the job ran"
        )
        code, line, took = command(*cluster.client_args("status", "--connect-timeout", "2"))
        assert code == 2 and 2.0 <= took <= 3.0, took  # status: 2 is "cannot be reached"
    finally:
        master.signal(signal.SIGCONT)


# -- streamed items: bounded memory, resumable, never leased before sealed --------------------


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def write_items(path: Path, n: int, seed: int = 15) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n // 10_000):
            fh.write("".join(f"{rng.randrange(10**8, 10**9)}\n" for _ in range(10_000)))


def test_a_large_items_file_streams_through_client_and_master_in_bounded_memory(
    cluster: Cluster, tmp_path: Path
) -> None:
    """2,000,000 items (20 MB). Loaded whole, the client held the file's text, a string per
    line and an int per item (over 200 MB); the master the list and its pickle (over 100 MB).
    Streamed, each holds a batch of 50,000 items at a time."""
    n = 2_000_000
    items = tmp_path / "items.txt"
    write_items(items, n)
    master = cluster.master(journal=tmp_path / "journal.db")
    cluster.worker("w1", "--processes", "2")
    out, peak = tmp_path / "out.txt", tmp_path / "client-peak-kib"
    submit = cluster.argv(*cluster.client_args("submit", "squares", "--items-file", str(items)))
    with open(out, "w") as fh:
        # Through the launcher: started from pytest directly, the client's ru_maxrss would
        # be at least pytest's own peak (bench/peak_rss.py says why).
        client = subprocess.run(
            [sys.executable, str(REPO / "bench" / "peak_rss.py"), str(peak), "--", *submit],
            stdout=fh,
            stderr=subprocess.PIPE,
            env=cluster.env,
            text=True,
            timeout=600,
        )
    assert client.returncode == 0, client.stderr
    client_mb, master_mb = int(peak.read_text()) / 1024, peak_rss_mb(master.pid)
    assert client_mb < 60 and master_mb < 60, (client_mb, master_mb)
    count = 0
    with open(items) as fi, open(out) as fo:
        for line_in, line_out in zip(fi, fo, strict=True):
            item, result = line_out.rstrip("\n").split("\t")
            assert item == line_in.strip() and int(result) == int(item) ** 2
            count += 1
    assert count == n


def test_an_upload_survives_a_master_killed_mid_upload_without_adding_a_batch_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    n = 1_500_000
    items = tmp_path / "items.txt"
    write_items(items, n, seed=3)
    journal = tmp_path / "journal.db"
    master = cluster.master(journal=journal)
    cluster.worker("w1", "--processes", "2")
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        client = subprocess.Popen(
            cluster.argv(*cluster.client_args("submit", "squares", "--items-file", str(items))),
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster.env,
        )
        try:

            def batches_in() -> int:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
                    row = conn.execute(
                        "SELECT upload_seq FROM jobs WHERE state = 'open'"
                    ).fetchone()
                conn.close()
                return int(row[0]) if row else 0

            wait_for("two batches journaled", lambda: batches_in() >= 2, 120, interval=0.05)
            master.signal(signal.SIGKILL)
            master.popen.wait(timeout=10)
            restarted = cluster.master(journal=journal, name="master2")
            restarted.wait_for(r"upload of its items resumes at batch \d+")
            _, err = client.communicate(timeout=600)
        finally:
            client.kill()
    assert client.returncode == 0, err
    assert f"over {n} items" in err
    with open(items) as fi, open(out) as fo:
        lines = 0
        for line_in, line_out in zip(fi, fo, strict=True):
            assert line_out.startswith(line_in.strip() + "\t")
            lines += 1
    assert lines == n, "every item once: no batch was added twice"


def test_an_unsealed_upload_is_not_leased_and_expires_when_its_client_is_gone(
    cluster: Cluster, tmp_path: Path
) -> None:
    """In-process master (the idle timeout set short); a client that opens an upload and
    vanishes."""
    import logging

    from taskfleet.errors import JobNotFound
    from taskfleet.master import Master

    m = Master(
        "127.0.0.1",
        0,
        b"k" * 40,
        str(tmp_path / "j.db"),
        10.0,
        logging.getLogger("taskfleet.test-upload"),
        upload_timeout=0.5,
    )
    m.start()
    try:
        service = m.service
        assert service is not None
        service.open("up1", "squares", 2, None)
        assert service.append("up1", 0, [1, 2, 3, 4])["n_items"] == 4
        assert service.append("up1", 0, [1, 2, 3, 4])["n_items"] == 4, "a resend adds nothing"
        assert service.lease("w1", 10) == [], "not leased before it is sealed"
        assert service.status()["jobs"] == []
        time.sleep(0.6)
        service.tick(False)
        with pytest.raises(JobNotFound, match=r"dropped after 0\.5s without items"):
            service.append("up1", 1, [5])
        assert service.journal.jobs() == [] and service.journal.chunk_items("up1", [0]) == {}

        service.open("up2", "squares", 2, None)
        service.append("up2", 0, [5, 6, 7])
        assert service.seal("up2", 3) == {
            "id": "up2",
            "job": "squares",
            "n_items": 3,
            "n_chunks": 2,
            "code_version": f"taskfleet {__version__}",  # what the job runs, as at submit
            "result_types": [],  # squares returns plain data
        }
        leases = service.lease("w1", 10)
        assert [(lease[1], lease[3][0], pickle.loads(lease[3][1])) for lease in leases] == [
            (0, "pickled", [5, 6]),
            (1, "pickled", [7]),
        ]
    finally:
        m.close()
