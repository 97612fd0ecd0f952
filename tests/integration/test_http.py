"""The master's HTTP server and the health verdict, with real processes on 127.0.0.1.

`/metrics` is checked by Debian's `promtool` on real output (skipped with its reason
where promtool is missing; under CI, which installs it, a missing promtool fails).
The slowloris test times the same job with and without the attack in one run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet import defaults
from tests.integration.conftest import Cluster, free_port
from tests.waiting import wait_for

SLOW = "tests.integration.testjobs:slow_square"
EXPLODE = "tests.integration.testjobs:explode"  # raises on item 7


class Http:
    """The master's HTTP server on 127.0.0.1 (``--http``)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """``name{labels}`` → value for every sample of ``/metrics``."""
        status, _, body = self.get("/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out


def start(cluster: Cluster, *extra: str) -> Http:
    port = free_port()
    proc = cluster.master("--http", f"127.0.0.1:{port}", *extra)
    proc.wait_for(f"HTTP on http://127.0.0.1:{port}/")
    return Http(port)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/setup-host installs Debian's prometheus package")
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path


# -- the verdict ----------------------------------------------------------------------------


def test_status_exits_0_healthy_1_degraded_2_unreachable(cluster: Cluster) -> None:
    master = cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    healthy = cluster.client("status")
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.rstrip().endswith("healthy")

    degraded = cluster.client("status", "--expect-workers", "2")
    assert degraded.returncode == 1, degraded.stderr
    assert "degraded: 1 problem(s)" in degraded.stdout
    assert "  problem: fewer workers than expected: 1 connected, 2 expected" in degraded.stdout
    doc = json.loads(cluster.client("status", "--expect-workers", "2", "--json").stdout)
    assert (doc["healthy"], doc["problems"]) == (
        False,
        ["fewer workers than expected: 1 connected, 2 expected"],
    )

    master.kill()
    gone = cluster.client("status", "--json", "--connect-timeout", "1")
    assert gone.returncode == 2
    assert gone.stderr.startswith("taskfleet: error: cannot reach the master at")
    assert gone.stderr.count("\n") == 1
    doc = json.loads(gone.stdout)
    assert doc["healthy"] is False and doc["master"] is None
    assert doc["problems"][0].startswith("master unreachable: cannot reach the master at")


def test_a_silent_worker_is_a_problem_until_it_comes_back(cluster: Cluster) -> None:
    cluster.master("--lease-timeout", "1")
    cluster.worker("w1", "--host-label", "hostA")
    w2 = cluster.worker("w2", "--host-label", "hostB")
    w2.signal(signal.SIGSTOP)
    try:
        st = cluster.wait_status(lambda s: not s["healthy"], timeout=30)
        (problem,) = st["problems"]
        assert re.fullmatch(
            r"worker w2 on hostB silent for \d+s \(lease timeout 1s\):"
            r" its chunks went back to pending",
            problem,
        ), problem
        assert [w["name"] for w in st["lost_workers"]] == ["w2"]
        assert cluster.client("status").returncode == 1
    finally:
        w2.signal(signal.SIGCONT)
    st = cluster.wait_status(lambda s: s["healthy"], timeout=30)
    assert sorted(w["name"] for w in st["workers"]) == ["w1", "w2"] and st["lost_workers"] == []


def test_a_worker_that_says_goodbye_is_no_problem(cluster: Cluster) -> None:
    cluster.master("--lease-timeout", "1")
    cluster.worker("w1")
    w2 = cluster.worker("w2")
    w2.signal(signal.SIGTERM)
    w2.wait_for("drained: .* exiting", timeout=30)
    time.sleep(2.5)  # past the lease timeout: a silent worker would be reported by now
    st = cluster.status()
    assert st["healthy"], st["problems"]
    assert [w["name"] for w in st["workers"]] == ["w1"] and st["lost_workers"] == []


def test_a_job_without_any_worker_cannot_progress(cluster: Cluster) -> None:
    cluster.master()
    r = cluster.client("submit", "squares", "--range", "5000", "--no-wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    st = cluster.status()
    assert st["problems"] == [f"job {job_id} (squares) cannot progress: no worker is connected"]
    cluster.worker("w1")
    st = cluster.wait_status(lambda s: s["healthy"] and s["jobs"][0]["state"] == "done")
    assert st["problems"] == []


# -- HTTP ---------------------------------------------------------------------------------


def test_metrics_pass_promtool_and_count_what_happened(cluster: Cluster, tmp_path: Path) -> None:
    http = start(cluster)
    cluster.worker("w1", "--host-label", "hostA")
    cluster.worker("w2", "--host-label", "hostB")
    r = cluster.client("submit", "squares", "--range", "20000", "--chunk-size", "500", "--json")
    assert r.returncode == 0, r.stderr
    wrong = tmp_path / "wrong-key"
    assert cluster.run("keygen", str(wrong)).returncode == 0
    refused = cluster.run("status", "--master", cluster.address, "--authkey-file", str(wrong))
    assert refused.returncode == 2 and "refused our authkey" in refused.stderr

    def settled() -> dict[str, float] | None:
        m = http.metrics()
        return m if m["taskfleet_items_done_total"] == 20000 else None

    m = wait_for("the sampler to see the job", settled, timeout=15)
    assert m["taskfleet_workers_connected"] == 2
    assert m["taskfleet_healthy"] == 1 and m["taskfleet_problems"] == 0
    assert m['taskfleet_jobs{state="done"}'] == 1 and m['taskfleet_jobs{state="running"}'] == 0
    assert m['taskfleet_chunks{state="done"}'] == 40
    assert m['taskfleet_chunks{state="pending"}'] == m['taskfleet_chunks{state="leased"}'] == 0
    per_worker = {k: v for k, v in m.items() if k.startswith("taskfleet_worker_items_done_total")}
    assert set(per_worker) == {
        'taskfleet_worker_items_done_total{worker="w1",host="hostA"}',
        'taskfleet_worker_items_done_total{worker="w2",host="hostB"}',
    }
    assert sum(per_worker.values()) == 20000
    assert m["taskfleet_handshakes_refused_total"] >= 1
    assert m["taskfleet_duplicates_dropped_total"] == 0
    assert m["taskfleet_lease_expiries_total"] == 0
    assert m["taskfleet_journal_bytes"] > 0 and m["taskfleet_process_resident_memory_bytes"] > 0
    assert m["taskfleet_process_cpu_seconds_total"] > 0

    _, headers, body = http.get("/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == b"" and check.stderr.strip() == b"", "promtool lint findings"


def test_failed_retried_skipped_and_cancelled_jobs_show_in_the_metrics(cluster: Cluster) -> None:
    http = start(cluster)
    cluster.worker("w1")
    base = ("--range", "20", "--chunk-size", "5", "--json")
    # item 7 fails three times (retries 2): the job fails; then the same with skip.
    assert cluster.client("submit", EXPLODE, *base).returncode == 1
    assert cluster.client("submit", EXPLODE, *base, "--on-error", "skip").returncode == 3
    r = cluster.client("submit", SLOW, "--range", "100000", "--chunk-size", "50", "--no-wait")
    assert r.returncode == 0, r.stderr
    assert cluster.client("cancel", r.stdout.strip()).returncode == 0

    def settled() -> dict[str, float] | None:
        m = http.metrics()
        return m if m['taskfleet_jobs{state="cancelled"}'] == 1 else None

    m = wait_for("the sampler to see the cancelled job", settled, timeout=15)
    assert m['taskfleet_jobs{state="failed"}'] == 1 and m['taskfleet_jobs{state="done"}'] == 1
    assert m['taskfleet_jobs{state="running"}'] == m['taskfleet_jobs{state="pending"}'] == 0
    assert m["taskfleet_chunk_attempts_failed_total"] == 6  # 3 attempts of one chunk, twice
    assert m["taskfleet_chunk_retries_total"] == 4  # the first two of each job's three
    assert m["taskfleet_items_failed_total"] == 2  # one item of each job, for good
    # Failed and cancelled jobs are outcomes, not a sick cluster.
    assert m["taskfleet_healthy"] == 1 and m["taskfleet_problems"] == 0
    _, _, body = http.get("/api/dashboard")
    doc = json.loads(body)
    assert doc["jobs_by_state"] == {
        "pending": 0,
        "running": 0,
        "done": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert {j["state"] for j in doc["jobs"]} == {"failed", "done", "cancelled"}


def test_lease_expiries_are_counted(cluster: Cluster) -> None:
    http = start(cluster, "--lease-timeout", "1")
    w1 = cluster.worker("w1")
    sub = cluster.background_client("submit", SLOW, "--range", "3000", "--chunk-size", "50")
    try:
        cluster.wait_status(lambda s: any(w["leased"] for w in s["workers"]))
        w1.signal(signal.SIGSTOP)
        m = wait_for(
            "a lease expiry and the silent worker in /metrics",
            lambda: (m := http.metrics())["taskfleet_workers_lost"] == 1 and m,
            timeout=30,
        )
        assert m["taskfleet_lease_expiries_total"] >= 1
        assert m["taskfleet_healthy"] == 0 and m["taskfleet_workers_connected"] == 0
    finally:
        w1.signal(signal.SIGCONT)
        sub.kill()
        sub.communicate()


def test_healthz_and_api_status_give_the_verdict(cluster: Cluster) -> None:
    http = start(cluster)
    cluster.worker("w1", "--host-label", "hostA")
    # HTTP answers from the last one-second sample: wait until it has the worker.
    wait_for("the worker in /metrics", lambda: http.metrics()["taskfleet_workers_connected"], 10)
    status, _, body = http.get("/healthz")
    assert (status, body) == (200, b"healthy\n")
    status, _, body = http.get("/healthz?expect_workers=3")
    assert status == 503
    assert body == b"degraded: 1 problem(s)\nfewer workers than expected: 1 connected, 3 expected\n"
    assert http.get("/healthz?expect_workers=lots")[0] == 400

    status, headers, body = http.get("/api/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    cli = cluster.status()
    assert set(doc) == set(cli)
    assert doc["healthy"] is True and doc["problems"] == []
    assert doc["master"]["http"] == f"127.0.0.1:{http.port}" == cli["master"]["http"]
    assert [w["name"] for w in doc["workers"]] == ["w1"]
    degraded = json.loads(http.get("/api/status?expect_workers=2")[2])
    assert degraded["healthy"] is False and len(degraded["problems"]) == 1


def test_the_dashboard_is_served_from_the_package_and_everything_is_read_only(
    cluster: Cluster,
) -> None:
    http = start(cluster)
    status, headers, page = http.get("/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script src="/dashboard.js">' in page and b"http://" not in page.replace(
        b"http://www.w3.org", b""
    ), "the page loads nothing from elsewhere"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, ctype in (
        ("/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ):
        status, headers, body = http.get(path)
        assert (status, headers["Content-Type"]) == (200, ctype) and body
    doc = json.loads(http.get("/api/dashboard")[2])
    assert {"healthy", "problems", "history", "worker_rates", "items_done_total"} <= set(doc)
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = http.get("/api/status", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert http.get("/../etc/passwd")[0] == 404
    assert http.get("/static/index.html")[0] == 404
    status, headers, body = http.get("/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_http_refuses_oversized_idle_and_excess_connections(cluster: Cluster) -> None:
    http = start(cluster)
    with socket.create_connection(("127.0.0.1", http.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", http.port), timeout=10) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    # An idle connection is closed after the 5 s request deadline, sent nothing.
    idle = socket.create_connection(("127.0.0.1", http.port), timeout=15)
    started = time.monotonic()
    assert idle.recv(100) == b""
    assert 4 <= time.monotonic() - started < 9
    idle.close()
    # More than 64 open connections: the extra ones are closed at once.
    held = [socket.create_connection(("127.0.0.1", http.port), timeout=10) for _ in range(80)]
    try:
        time.sleep(0.5)
        closed = 0
        for s in held:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
        assert closed >= 80 - 64, closed
    finally:
        for s in held:
            s.close()
    m = wait_for(
        "the drops to be counted",
        lambda: (
            (m := http.metrics())['taskfleet_http_connections_dropped_total{reason="timeout"}'] >= 1
            and m
        ),
        timeout=15,
    )
    assert m['taskfleet_http_connections_dropped_total{reason="too_large"}'] == 1
    assert m['taskfleet_http_connections_dropped_total{reason="too_many"}'] >= 16
    assert http.get("/healthz")[0] == 200  # and it still answers


class Slowloris:
    """Keeps ``n`` connections to the HTTP port open, each trickling one header byte every
    ``pace`` seconds and re-opened as soon as the server closes it; stops by itself after
    ``limit`` seconds (bounded, loopback only)."""

    def __init__(self, port: int, n: int = 200, pace: float = 0.5, limit: float = 120) -> None:
        self.port, self.n, self.pace, self.limit = port, n, pace, limit
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            self.opened += 1
            return s
        except OSError:
            return None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        socks: list[socket.socket | None] = [self._open() for _ in range(self.n)]
        while not self.stop.is_set() and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                try:
                    if s is None:
                        raise OSError
                    s.sendall(b"X")
                except OSError:
                    if s is not None:
                        s.close()
                    socks[i] = self._open()
            self.stop.wait(self.pace)
        for s in socks:
            if s is not None:
                s.close()

    def __enter__(self) -> Slowloris:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def loris_cluster(cluster: Cluster) -> Iterator[tuple[Cluster, Http]]:
    http = start(cluster)
    cluster.worker("w1", "--processes", "2")
    cluster.worker("w2", "--processes", "2")
    yield cluster, http


def timed_job(cluster: Cluster) -> float:
    t0 = time.monotonic()
    r = cluster.client(
        "submit", SLOW, "--range", "6000", "--chunk-size", "20", "--json", timeout=180
    )
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def test_a_slowloris_on_the_http_port_does_not_slow_a_running_job(
    loris_cluster: tuple[Cluster, Http],
) -> None:
    cluster, http = loris_cluster
    timed_job(cluster)  # warm-up: pools started, first chunks leased
    # Interleaved, so a change in the machine's load hits both sides alike.
    quiet: list[float] = []
    attacked: list[float] = []
    opened = 0
    for _ in range(3):
        quiet.append(timed_job(cluster))
        with Slowloris(http.port) as attack:
            started = time.monotonic()
            time.sleep(1)
            attacked.append(timed_job(cluster))
            # Hold the attack past the request deadline, so its trickled requests time out
            # even when the job was quicker than that.
            time.sleep(max(0.0, started + defaults.HTTP_REQUEST_DEADLINE + 1 - time.monotonic()))
        opened += attack.opened
    assert opened > 3 * 200, "the attack reconnected: the server kept closing its sockets"
    m = http.metrics()
    assert m['taskfleet_http_connections_dropped_total{reason="timeout"}'] > 0
    assert m['taskfleet_http_connections_dropped_total{reason="too_many"}'] > 0
    assert m["taskfleet_process_threads"] < 40, "the attack cost threads"
    print(f"job seconds: quiet {quiet}, under a slowloris {attacked}")
    # Same run, same job: the attack must not cost the job more than the noise of a shared
    # machine (medians of three).
    assert statistics.median(attacked) <= statistics.median(quiet) * 1.15, (quiet, attacked)
    assert http.get("/healthz")[0] == 200


def test_a_busy_http_port_is_one_line_and_leaves_the_manager_port_free(cluster: Cluster) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = cluster.run(
            "master",
            *("--port", str(cluster.port), "--authkey-file", str(cluster.key)),
            *("--http", f"127.0.0.1:{port}"),
        )
    assert r.returncode == 1
    assert r.stderr == (
        f"taskfleet: error: port {port} on 127.0.0.1 is already in use — stop what listens there"
        f" (ss -ltnp 'sport = :{port}') or choose another --http port\n"
    )
    with socket.socket() as s:  # the manager port was bound first, then let go
        s.bind(("127.0.0.1", cluster.port))
    bad = cluster.run("master", "--authkey-file", str(cluster.key), "--http", "nowhere")
    assert bad.returncode == 2
    assert bad.stderr == (
        "taskfleet: error: malformed --http 'nowhere' — use HOST:PORT, e.g. --http 10.0.0.1:7452\n"
    )


def test_a_master_serving_http_stops_cleanly_on_sigterm(cluster: Cluster) -> None:
    http = start(cluster)
    cluster.worker("w1")
    held = socket.create_connection(("127.0.0.1", http.port), timeout=5)  # an idle client
    try:
        master = cluster.procs[0]
        master.signal(signal.SIGTERM)
        assert master.popen.wait(timeout=20) == 0
        assert "master stopped" in master.text()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", http.port)) != 0
    finally:
        held.close()
