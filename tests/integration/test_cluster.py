"""End-to-end behaviour of master, workers and clients as real processes."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from taskfleet import __version__
from tests.integration.conftest import Cluster, parse_submit_json
from tests.waiting import wait_for

SLOW = "tests.integration.testjobs:slow_square"


def assert_exactly_once(stdout: str, n: int) -> dict[str, object]:
    chunks, summary, repeats = parse_submit_json(stdout)
    assert repeats == 0
    assert summary["duplicates"] == 0
    seen: list[int] = []
    for items, results in chunks.values():
        assert results == [x * x for x in items]
        seen.extend(items)
    assert sorted(seen) == list(range(n)), "every item exactly once"
    return summary


def test_smoke_squares_100k_with_two_workers(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    cluster.worker("w2", "--host-label", "hostB")
    r = cluster.client(
        "smoke",
        "--count",
        "100000",
        "--expect-workers",
        "2",
        "--expect-hosts",
        "hostA,hostB",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["ok"] is True
    assert (report["count"], report["verified"], report["missing"], report["wrong"]) == (
        100000,
        100000,
        0,
        0,
    )
    assert report["duplicates"] == 0
    assert set(report["workers"]) == {"w1", "w2"}
    assert set(report["hosts"]) == {"hostA", "hostB"}
    assert sum(report["workers"].values()) == 100000
    assert report["items_per_s"] > 0 and report["seconds"] > 0


def test_smoke_fails_when_expectations_are_not_met(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    r = cluster.client(
        "smoke", "--count", "2000", "--expect-workers", "2", "--timeout", "6", "--json"
    )
    assert r.returncode == 1
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["ok"] is False and report["verified"] == 2000
    assert "1 workers returned results, expected at least 2" in report["errors"]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("taskfleet: error: smoke failed")

    r = cluster.client(
        "smoke", "--count", "2000", "--expect-hosts", "hostA,hostZ", "--timeout", "6", "--json"
    )
    assert r.returncode == 1
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["hosts"] == {"hostA": 2000}
    assert "no results from host(s) hostZ" in report["errors"]


def test_status_json_shape(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    r = cluster.client("submit", "squares", "--range", "3000", "--json")
    assert r.returncode == 0, r.stderr
    st = cluster.status()
    assert set(st) == {
        "master",
        "workers",
        "lost_workers",
        "jobs",
        "jobs_not_listed",
        "jobs_by_state",
        "healthy",
        "problems",
    }
    assert (st["healthy"], st["problems"], st["lost_workers"]) == (True, [], [])
    m = st["master"]
    assert m["address"] == cluster.address and m["uptime_s"] >= 0 and m["http"] is None
    assert m["lease_timeout_s"] == 30.0 and m["process"]["rss_bytes"] > 0
    assert m["journal"]["bytes"] > 0 and m["journal"]["disk_size_bytes"] > 0
    assert st["jobs_not_listed"] == 0
    (w,) = st["workers"]
    assert set(w) == {
        "name",
        "host",
        "last_heartbeat_age_s",
        "chunks_done",
        "items_done",
        "leased",
        "job_packages",
    }
    assert (w["name"], w["host"], w["chunks_done"], w["items_done"]) == ("w1", "hostA", 3, 3000)
    assert w["job_packages"] == {}  # the test venv has no taskfleet.jobs distribution
    (job,) = st["jobs"]
    assert {"id", "job", "state", "chunks", "items_total", "items_done", "code_version"} <= set(job)
    assert job["code_version"] == f"taskfleet {__version__}"  # squares is built in
    assert job["state"] == "done" and job["chunks"] == {"pending": 0, "leased": 0, "done": 3}
    assert (job["items_total"], job["items_done"]) == (3000, 3000)


def test_worker_kill9_mid_job_loses_nothing(cluster: Cluster) -> None:
    cluster.master("--lease-timeout", "2")
    w1 = cluster.worker("w1")
    cluster.worker("w2")
    n = 3000
    sub = cluster.background_client(
        "submit", SLOW, "--range", str(n), "--chunk-size", "50", "--json"
    )
    try:
        cluster.wait_status(
            lambda st: any(w["name"] == "w1" and w["chunks_done"] >= 2 for w in st["workers"])
        )
        w1.signal(signal.SIGKILL)
        out, err = sub.communicate(timeout=90)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    assert_exactly_once(out, n)
    master_log = cluster.procs[0].text()
    assert "worker w1 left (silent" in master_log
    assert "expired and are pending again" in master_log


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "graceful-stop"]
)
def test_master_kill9_and_restart_resumes_every_job(
    cluster: Cluster, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """kill -9 (crash) and SIGTERM (docker restart): the waiting client and the
    workers reconnect to the restarted master and every result arrives once."""
    journal = tmp_path / "journal.db"
    master = cluster.master("--lease-timeout", "3", journal=journal)
    cluster.worker("w1")
    w2 = cluster.worker("w2")
    n = 3000
    sub = cluster.background_client(
        "submit", SLOW, "--range", str(n), "--chunk-size", "50", "--json"
    )
    try:
        cluster.wait_status(lambda st: bool(st["jobs"]) and st["jobs"][0]["chunks"]["done"] >= 10)
        master.signal(stop_signal)
        master.popen.wait(timeout=10)
        time.sleep(1.0)  # workers and the client notice and start retrying
        restarted = cluster.master("--lease-timeout", "3", journal=journal, name="master2")
        restarted.wait_for(
            r"resumed job \w+ \(tests.integration.testjobs:slow_square\): \d+/60 chunks done"
        )
        out, err = sub.communicate(timeout=90)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    assert_exactly_once(out, n)
    w2.wait_for("worker w2 reconnected")
    st = cluster.status()
    assert st["jobs"][0]["state"] == "done"


def test_sigstopped_master_is_detected_by_worker(cluster: Cluster) -> None:
    master = cluster.master("--lease-timeout", "2")
    worker = cluster.worker("w1")
    master.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        worker.wait_for(
            r"(lost the master|master unreachable) at 127.0.0.1:\d+.*no answer in time", timeout=15
        )
    finally:
        master.signal(signal.SIGCONT)
    assert time.monotonic() - t0 < 15
    worker.wait_for("the master at 127.0.0.1:\\d+ answers again", timeout=20)
    r = cluster.client("smoke", "--count", "5000", "--json")
    assert r.returncode == 0, r.stderr


def test_worker_sigterm_drains_and_exits_zero(cluster: Cluster) -> None:
    cluster.master("--lease-timeout", "30")  # nothing may depend on lease expiry here
    w1 = cluster.worker("w1")
    n = 2000
    sub = cluster.background_client(
        "submit", SLOW, "--range", str(n), "--chunk-size", "50", "--json"
    )
    try:
        cluster.wait_status(lambda st: bool(st["workers"]) and st["workers"][0]["chunks_done"] >= 2)
        t0 = time.monotonic()
        w1.signal(signal.SIGTERM)
        assert w1.popen.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 10
        w1.wait_for(r"worker w1 drained: \d+ results sent, \d+ chunks given back")
        cluster.worker("w2")
        out, err = sub.communicate(timeout=90)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    assert_exactly_once(out, n)
    assert "worker w1 left (drained" in cluster.procs[0].text()


def test_wrong_authkey_is_reported_on_both_sides(cluster: Cluster, tmp_path: Path) -> None:
    master = cluster.master()
    other = tmp_path / "other-key"
    assert cluster.run("keygen", str(other)).returncode == 0
    r = cluster.run(
        "worker",
        "--master",
        cluster.address,
        "--authkey-file",
        str(other),
        "--processes",
        "1",
        timeout=30,
    )
    assert r.returncode != 0
    assert f"taskfleet: error: the master at {cluster.address} refused our authkey" in r.stderr
    assert "Traceback" not in r.stderr
    master.wait_for(r"refused 127\.0\.0\.1:\d+: wrong authkey")
    assert "Traceback" not in master.text()


def test_idle_connections_and_garbage_do_not_stop_a_job(cluster: Cluster) -> None:
    import socket

    master = cluster.master()
    cluster.worker("w1")
    idle: list[socket.socket] = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", cluster.port), timeout=5))
        for payload in (b"\x00\x00\x00\x05hello", b"GET / HTTP/1.0\r\n\r\n", b"\xff" * 64):
            s = socket.create_connection(("127.0.0.1", cluster.port), timeout=5)
            s.sendall(payload)
            idle.append(s)
        r = cluster.client("smoke", "--count", "20000", "--json", "--timeout", "60")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["verified"] == 20000
    finally:
        for s in idle:
            s.close()
    master.wait_for(r"refused 127\.0\.0\.1:\d+: (no valid handshake|too many unauthenticated)")
    assert "Traceback" not in master.text()


def test_failed_job_function_fails_the_job_with_one_line(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1")
    r = cluster.client(
        "submit", "tests.integration.testjobs:explode", "--range", "20", "--chunk-size", "5"
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("taskfleet: error: job ") and "seven is not allowed" in last
    assert "Traceback" not in r.stderr


def test_healthchecks(cluster: Cluster, tmp_path: Path) -> None:
    cluster.master()
    hb = tmp_path / "hb" / "heartbeat"
    cluster.worker("w1", "--heartbeat-file", str(hb))
    wait_for("the worker's first heartbeat file", hb.exists, timeout=10, interval=0.1)
    assert cluster.run("healthcheck", "worker", "--heartbeat-file", str(hb)).returncode == 0
    r = cluster.client("healthcheck", "master")
    assert r.returncode == 0, r.stderr
    r = cluster.run("healthcheck", "worker", "--heartbeat-file", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stderr.startswith("taskfleet: error: heartbeat file")


def test_submit_refuses_unknown_jobs_and_bad_items(cluster: Cluster, tmp_path: Path) -> None:
    cluster.master()
    r = cluster.client("submit", "nosuchjob", "--range", "10")
    assert r.returncode == 2
    assert r.stderr == (
        "taskfleet: error: unknown job 'nosuchjob'"
        " — use one of: squares, or package.module:function;"
        " your own job package must be in the images (make deploy JOBS=<folder>, docs/jobs.md)\n"
    )
    items = tmp_path / "items.txt"
    items.write_text("1\n2\nthree\n")
    r = cluster.client("submit", "squares", "--items-file", str(items))
    assert r.returncode == 2
    assert r.stderr == (
        "taskfleet: error: squares: item 3 ('three') is a str, not an integer"
        " — give squares whole numbers, one per line in the items file\n"
    )
    assert cluster.status()["jobs"] == [], "nothing was created"


def test_items_file_job_returns_results_in_items(cluster: Cluster, tmp_path: Path) -> None:
    cluster.master()
    cluster.worker("w1")
    items = tmp_path / "items.txt"
    items.write_text("\n".join(str(x) for x in [5, -3, 12, 7]) + "\n")
    r = cluster.client("submit", "squares", "--items-file", str(items), "--chunk-size", "3")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(["5\t25", "-3\t9", "12\t144", "7\t49"])


def test_worker_keeps_retrying_while_the_master_is_down(cluster: Cluster) -> None:
    worker = cluster.worker("w1", wait=False)
    worker.wait_for(
        rf"master unreachable at {cluster.address} \(connection refused\), retrying in 1s"
    )
    assert worker.popen.poll() is None
    cluster.master()
    worker.wait_for("worker w1 connected", timeout=20)
    r = cluster.client("smoke", "--count", "3000", "--json")
    assert r.returncode == 0, r.stderr


def test_graceful_master_restart_under_many_small_fetches(cluster: Cluster, tmp_path: Path) -> None:
    """`docker restart` sends SIGTERM: a client fetching results chunk by chunk
    must see a dropped connection (and reconnect), never an error or a stray
    answer from the stopping master."""
    journal = tmp_path / "journal.db"
    master = cluster.master("--lease-timeout", "3", journal=journal)
    cluster.worker("w1")
    n = 30_000
    sub = cluster.background_client("smoke", "--count", str(n), "--chunk-size", "1", "--json")
    try:
        cluster.wait_status(lambda st: bool(st["jobs"]) and st["jobs"][0]["chunks"]["done"] >= 2000)
        master.signal(signal.SIGTERM)
        master.popen.wait(timeout=10)
        cluster.master("--lease-timeout", "3", journal=journal, name="master2")
        out, err = sub.communicate(timeout=120)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] and report["verified"] == n
    assert report["missing"] == 0 and report["wrong"] == 0


def test_a_master_bound_to_an_ipv6_address_serves_workers_there_and_only_there(
    cluster: Cluster,
) -> None:
    cluster.bind, cluster.address = "::1", f"[::1]:{cluster.port}"
    master = cluster.master()
    assert f"listening on [::1]:{cluster.port}" in master.text()
    cluster.worker("w6", "--host-label", "v6host")
    r = cluster.client("smoke", "--count", "2000", "--expect-hosts", "v6host", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["verified"] == 2000
    # the IPv6 bind address alone: nothing listens on the IPv4 loopback
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cluster.port), timeout=2).close()
