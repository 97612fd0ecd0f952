"""The wire's contract (taskfleet.protocol) against a real master on loopback."""

from __future__ import annotations

import logging
import pickle
import pickletools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfleet import __version__
from taskfleet.errors import BadJobArguments, ProtocolMismatch, RemoteError
from taskfleet.manager import Session
from taskfleet.master import Master
from taskfleet.protocol import (
    EXPOSED,
    PROTOCOL_VERSION,
    BoardStub,
    ChunkId,
    ItemFailure,
    JobState,
    Lease,
    Method,
    Result,
    ResultRow,
    Role,
)

KEY = b"p" * 40


@pytest.fixture
def master(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Master]:
    caplog.set_level(logging.INFO, logger="taskfleet.test-master")
    m = Master(
        "127.0.0.1",
        0,
        KEY,
        str(tmp_path / "j.db"),
        10.0,
        logging.getLogger("taskfleet.test-master"),
    )
    m.start()
    try:
        yield m
    finally:
        m.close()


def _address(m: Master) -> tuple[str, int]:
    assert m.server is not None
    host, port = m.server.address
    return str(host), int(port)


def _globals_in(value: Any) -> list[str]:
    """The classes/functions a pickle of ``value`` would make the receiver import."""
    found = []
    for op, arg, _ in pickletools.genops(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)):
        if op.name in ("GLOBAL", "STACK_GLOBAL", "INST"):
            found.append(str(arg) if arg is not None else op.name)
    return found


def test_exposed_is_exactly_the_protocol_methods(master: Master) -> None:
    assert set(EXPOSED) == {m.value for m in Method}
    assert master.service is not None
    for name in EXPOSED:
        assert callable(getattr(master.service, name)), name


def test_a_peer_speaking_another_protocol_is_refused_in_one_line(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    session = Session(_address(master), KEY, "old-worker", timeout=5)
    try:
        with pytest.raises(ProtocolMismatch) as err:
            session.call(Method.HELLO.value, PROTOCOL_VERSION - 1, "worker", "old-worker", "h", 1)
    finally:
        session.close()
    assert str(err.value) == (
        f"the master at 127.0.0.1:{_address(master)[1]} speaks taskfleet protocol"
        f" {PROTOCOL_VERSION} (taskfleet {__version__}), this worker speaks"
        f" {PROTOCOL_VERSION - 1} — run the same taskfleet version on the master, the workers"
        " and the clients"
    )
    assert "refused worker old-worker" in caplog.text
    assert master.service is not None
    assert master.service.status()["workers"] == []  # it never joined


def test_a_newer_peer_with_more_hello_arguments_still_gets_the_one_line_refusal(
    master: Master,
) -> None:
    session = Session(_address(master), KEY, "new-worker", timeout=5)
    try:
        with pytest.raises(ProtocolMismatch) as err:
            session.call(
                Method.HELLO.value, PROTOCOL_VERSION + 1, "worker", "w", "h", 1, {}, "later", 2
            )
    finally:
        session.close()
    assert f"this worker speaks {PROTOCOL_VERSION + 1}" in str(err.value)


def test_a_workers_job_packages_from_hello_are_in_status_as_plain_strings(
    master: Master,
) -> None:
    service = master.service
    assert service is not None
    service.hello(PROTOCOL_VERSION, "worker", "w1", "hostA", 1, {"taskfleet-primes": "1.0.0"})
    service.hello(PROTOCOL_VERSION, "worker", "w2", "hostB", 1, ["not", "a", "mapping"])
    service.hello(PROTOCOL_VERSION, "worker", "w3", "hostC", 1, {"ok": "1", "bad": 2, 3: "x"})
    service.hello(PROTOCOL_VERSION, "worker", "w4", "hostD", 1)  # a stock peer says nothing
    packages = {w["name"]: w["job_packages"] for w in service.status()["workers"]}
    assert packages == {"w1": {"taskfleet-primes": "1.0.0"}, "w2": {}, "w3": {"ok": "1"}, "w4": {}}


def test_every_reply_is_plain_data_and_the_stub_rebuilds_the_shapes(master: Master) -> None:
    """Replies carry no class references (a restricted unpickler admits them as they are);
    the typed stub gives both ends named tuples back."""
    service = master.service
    assert service is not None
    replies: dict[str, Any] = {}
    replies["hello"] = service.hello(PROTOCOL_VERSION, "worker", "w1", "hostA", 2)
    replies["ping"] = service.ping()
    replies["submit"] = service.submit("jr", "squares", 10, 0, 25)
    replies["submit items"] = service.submit("ji", "squares", 2, items=[3, 4, 5])
    replies["lease"] = leases = service.lease("w1", 4)
    results = [(job, chunk, pickle.dumps([x * x for x in range(3)])) for job, chunk, *_ in leases]
    replies["exchange"] = service.exchange("w1", "hostA", results, 2)
    replies["heartbeat"] = service.heartbeat("w1", "hostA", [("jr", 2)])
    service.submit("jf", "squares", 5, 0, 10)
    assert [lease[:2] for lease in service.lease("w1", 1)] == [("jf", 0)]
    failed = Result("jf", 0, pickle.dumps([0]), 1, [ItemFailure(3, "exception", "E", "m", "3", "")])
    assert _globals_in(failed.to_wire()) == [], "a failed result is sent as plain data"
    replies["exchange failed"] = service.exchange("w1", "hostA", [failed.to_wire()], 0, 0, [])
    replies["open"] = service.open("ju", "squares", 2, None)
    replies["append"] = service.append("ju", 0, [6, 7, 8])
    replies["seal"] = service.seal("ju", 3)
    replies["lease stored items"] = stored = service.lease("w1", 10)
    items = {
        (job, chunk): pickle.loads(p[1]) for job, chunk, _, p, *_ in stored if p[0] == "pickled"
    }
    assert items == {("ju", 0): [6, 7], ("ju", 1): [8]}, "as stored, per chunk"
    replies["job"] = service.job("ji")
    replies["jobs"] = service.jobs(10)
    replies["wait"] = service.wait("jr", 0.0)
    replies["fetch"] = service.fetch("jr", 0, 1000, 0.0)
    replies["fetch ordered"] = service.fetch_ordered("jr", 0, 1000, 0.0)
    replies["fetch with items"] = service.fetch_ordered("ji", 0, 1000, 0.0, True)
    replies["errors"] = service.errors("jf", 10)
    replies["cancel"] = service.cancel("ji")
    replies["status"] = service.status()
    replies["goodbye"] = service.goodbye("w1", [])
    for name, reply in replies.items():
        assert _globals_in(reply) == [], f"{name} reply pickles class references"
    assert replies["errors"][0]["message"] == "m" and replies["errors"][0]["index"] == 3
    assert replies["cancel"]["state"] == "cancelled"

    session = Session(_address(master), KEY, "stub", timeout=5)
    try:
        stub = BoardStub(session)
        hello = stub.hello(Role.WORKER, "w2", "hostB", 1)
        assert hello["protocol"] == PROTOCOL_VERSION and hello["lease_timeout"] == 10.0
        submitted = stub.submit("jz", "squares", 5, 0, 5)
        assert submitted == {
            "id": "jz",
            "job": "squares",
            "n_items": 5,
            "n_chunks": 1,
            "code_version": f"taskfleet {__version__}",
            "result_types": [],
        }
        _, leases2, stop = stub.exchange("w2", "hostB", [], 1, 0.0, [ChunkId("ji", 0)])
        assert stop == [ChunkId("ji", 0)], "a cancelled job's chunk is to be stopped"
        assert all(isinstance(lease, Lease) for lease in leases2)
        lease = leases2[0]
        ack = stub.complete("w2", "hostB", [Result(lease.job_id, lease.chunk, pickle.dumps(["r"]))])
        assert ack == {"accepted": 1, "duplicates": 0}
        rows, view = stub.fetch(lease.job_id, 0, 1000, 0.0, timeout=5)
        assert rows and all(isinstance(r, ResultRow) for r in rows)
        assert view["state"] in {s.value for s in JobState}
        assert ChunkId(lease.job_id, lease.chunk) in [ChunkId(lease.job_id, r.chunk) for r in rows]
    finally:
        session.close()


def test_python_dash_m_taskfleet_is_the_command_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "taskfleet", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and r.stdout.strip() == f"taskfleet {__version__}"
    r = subprocess.run(
        [sys.executable, "-m", "taskfleet", "status"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "taskfleet: error: no master address given"
        " — pass --master HOST:PORT or --profile PATH, or set TASKFLEET_MASTER"
    )


def test_an_unexpected_failure_in_the_master_reaches_the_client_with_its_reason(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    """Never "see the master's log" for a log that is empty: the client's line carries the
    exception, and the master's log has its traceback."""
    assert master.service is not None
    master.service.submit("jr", "squares", 10, 0, 25)
    session = Session(_address(master), KEY, "client", timeout=5)
    try:
        with pytest.raises(RemoteError) as err:
            session.call(Method.FETCH.value, "jr", 0, "many", 0.0)
    finally:
        session.close()
    assert str(err.value) == (
        "the master failed on fetch: TypeError: unsupported operand type(s) for //: 'str' and"
        " 'int' — a bug or a damaged journal; the master's log has the traceback"
    )
    assert "fetch from 127.0.0.1:" in caplog.text and "Traceback (most recent call last)" in (
        caplog.text
    )


def test_an_upload_batch_resent_after_a_lost_reply_is_not_added_twice(master: Master) -> None:
    session = Session(_address(master), KEY, "uploader", timeout=5)
    try:
        stub = BoardStub(session)
        assert stub.open("u1", "squares", 2)["seq"] == 0
        assert stub.append("u1", 0, [1, 2, 3, 4]) == {"id": "u1", "seq": 1, "n_items": 4}
        assert stub.append("u1", 0, [1, 2, 3, 4]) == {"id": "u1", "seq": 1, "n_items": 4}
        assert stub.open("u1", "squares", 2)["seq"] == 1, "a resent open says where it is"
        assert stub.append("u1", 1, [5])["n_items"] == 5
        with pytest.raises(BadJobArguments, match="got items after a short chunk"):
            stub.append("u1", 2, [6])
    finally:
        session.close()
    assert master.service is not None
    assert master.service.status()["jobs"] == [], "the refused upload is gone"
