"""Is the deployed lab healthy, and can one see it: the verdict, the HTTP port, Prometheus, a
real browser on the dashboard, and ``make dashboard``.

Runs on the cluster test_20 leaves deployed (run alone, it deploys it). Everything is
checked through a second path: Debian's ``prometheus`` server (run here on the control
node, bound to its lab address, which the lab's inventory lists as a monitoring source)
scrapes the master through its firewall and is asked back through its own HTTP API;
headless Chromium (Debian's, driven by Selenium) reads what the page really shows; the
lab hosts' own engines stop and start a worker container under ``make status``.
The cluster is left as found: every container running, the firewall as deployed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Lab
from tests.e2e.test_20_deploy import TLS_ARGS, Run, playbook, sh
from tests.e2e.test_30_fabric import cluster, deployed_per_host, inner, master_view
from tests.waiting import wait_for

__all__ = ["cluster"]  # the deployed-lab fixture, shared with test_30

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".build"
HTTP_PORT = 7452
MANAGER_PORT = 7451
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PROMETHEUS = "/usr/bin/prometheus"


def url(lab: Lab, path: str = "/") -> str:
    return f"http://{lab.hosts['master']}:{HTTP_PORT}{path}"


def get(address: str, timeout: float = 10) -> tuple[int, bytes]:
    """GET from the control node (the lab's network; the control node is a monitoring source)."""
    try:
        with urllib.request.urlopen(address, timeout=timeout) as resp:  # noqa: S310 - http only
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def probe_from(lab: Lab, host: str, port: int) -> str:
    """'connected', or why not: a bounded TCP connect from a lab host to the master."""
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(({lab.hosts['master']!r}, {port}), timeout=3).close()\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    return sh(lab, host, f"python3 -c {shlex.quote(code)}", timeout=30).stdout.strip()


def make(lab: Lab, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", *args, f"INVENTORY={lab.inventory_dir}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def firewall(lab: Lab, *extra: str) -> Run:
    run = playbook(lab.inventory_dir, "site.yml", "--tags", "firewall", *extra)
    assert run.rc == 0, run.tail()
    return run


def expected_workers(lab: Lab) -> int:
    return deployed_per_host(lab) * len(lab.workers)


@pytest.fixture(scope="module")
def healthy(cluster: Lab) -> Lab:
    """The deployed lab once ``make status`` and the master's ``/healthz`` call it healthy
    (earlier tests may have left workers reconnecting)."""
    wait_for(
        "make status and /healthz to call the lab healthy",
        lambda: (
            make(cluster, "status", "JSON=1").returncode == 0
            and get(url(cluster, "/healthz"))[0] == 200
        ),
        timeout=180,
        interval=3,
        detail=lambda: make(cluster, "status", "JSON=1").stdout[-3000:],
    )
    return cluster


# -- the HTTP port through the firewall -------------------------------------------------------


def test_the_http_port_answers_the_control_node_and_refuses_the_outsider(healthy: Lab) -> None:
    status, body = get(url(healthy, "/healthz"))
    assert (status, body) == (200, b"healthy\n")
    metrics = get(url(healthy, "/metrics"))[1].decode()
    assert f"taskfleet_workers_connected {expected_workers(healthy)}\n" in metrics
    view = master_view(healthy)
    assert view["master"]["http"] == f"{healthy.hosts['master']}:{HTTP_PORT}"
    for host in ("outsider", healthy.workers[0]):
        verdict = probe_from(healthy, host, HTTP_PORT)
        assert verdict.startswith(("TimeoutError", "timeout", "ConnectionRefused")), (host, verdict)
    table = sh(healthy, "master", "sudo nft list table inet taskfleet").stdout
    assert f"tcp dport {HTTP_PORT} counter packets" in table and "@http_v4 accept" in table


def test_a_monitoring_source_reaches_the_http_port_and_only_that_port(healthy: Lab) -> None:
    outsider = healthy.hosts["outsider"]
    sources = json.dumps({"taskfleet_monitoring_sources": [healthy.cfg.gateway, outsider]})
    try:
        run = firewall(healthy, "-e", sources)
        assert {h for _, h in run.changed_tasks()} == {"master"}, run.changed_tasks()
        assert probe_from(healthy, "outsider", HTTP_PORT) == "connected"
        assert probe_from(healthy, "outsider", MANAGER_PORT) != "connected"
    finally:
        firewall(healthy)
    assert probe_from(healthy, "outsider", HTTP_PORT) != "connected"


# -- Prometheus -------------------------------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(healthy: Lab) -> Iterator[str]:
    """Debian's Prometheus server on the control node's lab address, scraping the master every
    second; yields its base URL and is stopped (by its pid) afterwards."""
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: .ci/setup-host installs Debian's prometheus")
    listen = f"{healthy.cfg.gateway}:{free_port(healthy.cfg.gateway)}"
    with tempfile.TemporaryDirectory(prefix="taskfleet-e2e-prometheus-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: taskfleet\n"
            f"    static_configs: [{{targets: ['{healthy.hosts['master']}:{HTTP_PORT}']}}]\n"
        )
        log = open(Path(tmp) / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address={listen}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://{listen}"
            wait_for(
                "Prometheus to be ready",
                lambda: proc.poll() is None and _ready(base),
                timeout=60,
                detail=lambda: (Path(tmp) / "prometheus.log").read_text()[-2000:],
            )
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


def _ready(base: str) -> bool:
    try:
        return get(f"{base}/-/ready", timeout=2)[0] == 200
    except OSError:
        return False


def query(base: str, expr: str) -> list[dict[str, Any]]:
    status, body = get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_prometheus_scrapes_the_master_through_the_firewall(healthy: Lab, prometheus: str) -> None:
    want = expected_workers(healthy)

    def scraped() -> list[dict[str, Any]] | None:
        result = query(prometheus, "taskfleet_workers_connected")
        return result if result and float(result[0]["value"][1]) == want else None

    (sample,) = wait_for("Prometheus to scrape the master", scraped, timeout=60, interval=1)
    assert sample["metric"]["job"] == "taskfleet"
    assert sample["metric"]["instance"] == f"{healthy.hosts['master']}:{HTTP_PORT}"
    (up,) = query(prometheus, 'up{job="taskfleet"}')
    assert up["value"][1] == "1"
    per_host = query(prometheus, "count by (host) (taskfleet_worker_heartbeat_age_seconds)")
    assert {r["metric"]["host"]: int(r["value"][1]) for r in per_host} == {
        h: deployed_per_host(healthy) for h in healthy.workers
    }
    (healthy_now,) = query(prometheus, "taskfleet_healthy")
    assert healthy_now["value"][1] == "1"


# -- the dashboard in a real browser ----------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium through Selenium, with Debian's driver and browser named explicitly
    (Selenium Manager never downloads anything); quit afterwards."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: .ci/setup-host installs chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # Chromium refuses to run as root otherwise
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,900",
        # This machine's network is closed: no background connections to anywhere.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def page_workers(driver: Any) -> list[str]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('[data-worker]')].map(e => e.dataset.worker)"
        )
    )


def page_job(driver: Any, job_id: str) -> dict[str, str] | None:
    row: dict[str, str] | None = driver.execute_script(
        "const tr = document.querySelector(`tr[data-job='${arguments[0]}']`);"
        "return tr && {pct: tr.querySelector('.pct').textContent,"
        " state: tr.querySelector('.pill').textContent,"
        " width: tr.querySelector('.fill').style.width};",
        job_id,
    )
    return row


def test_the_dashboard_shows_every_worker_and_a_job_running_to_100_percent(
    healthy: Lab, browser: Any
) -> None:
    BUILD.mkdir(exist_ok=True)
    browser.get(url(healthy))
    names = sorted(w["name"] for w in master_view(healthy)["workers"])
    assert len(names) == expected_workers(healthy)
    wait_for("every worker on the page", lambda: sorted(page_workers(browser)) == names, 30)
    assert browser.find_element("id", "verdict").text == "healthy"

    address = f"{healthy.hosts['master']}:{MANAGER_PORT}"
    submit = inner(
        healthy,
        "master",
        *("docker", "exec", "taskfleet-master", "taskfleet", "submit", "squares"),
        *("--range", "4000000", "--chunk-size", "250", "--no-wait", "--json"),
        *("--master", address, "--authkey-file", "/run/secrets/taskfleet_authkey"),
        *TLS_ARGS,  # the master's own certificate (the deploy's default: mutual TLS)
    )
    job_id = json.loads(submit.strip().splitlines()[-1])["job_id"]

    def moving() -> dict[str, str] | None:
        row = page_job(browser, job_id)
        return row if row and row["state"] == "running" and row["pct"] != "0.0%" else None

    wait_for("the job to show progress on the page", moving, timeout=60, interval=0.5)
    time.sleep(3)  # a few samples: items/s, ETA and the chart have something to show
    browser.save_screenshot(str(BUILD / "dashboard-e2e-running.png"))

    def finished() -> dict[str, str] | None:
        row = page_job(browser, job_id)
        return row if row and row["state"] == "done" else None

    row = wait_for("the job to reach 100% on the page", finished, timeout=300, interval=0.5)
    assert row == {"pct": "100%", "state": "done", "width": "100%"}
    assert sorted(page_workers(browser)) == names
    browser.save_screenshot(str(BUILD / "dashboard-e2e-done.png"))
    assert (BUILD / "dashboard-e2e-done.png").stat().st_size > 10_000


# -- make status and make dashboard -----------------------------------------------------------


def test_a_stopped_worker_container_turns_make_status_non_zero(healthy: Lab) -> None:
    host = healthy.workers[1]
    inner(healthy, host, "docker", "stop", "-t", "30", "taskfleet-worker-2", timeout=120)
    try:
        result = make(healthy, "status", "JSON=1")
        assert result.returncode != 0
        doc = json.loads(result.stdout)  # nothing but the JSON document on stdout
        assert doc["healthy"] is False and doc["ok"] is False
        worker = next(
            c
            for h in doc["hosts"]
            if h["host"] == host
            for c in h["containers"]
            if c["name"] == "taskfleet-worker-2"
        )
        assert worker["state"] == "exited" and worker["exit_code"] is not None
        assert (
            f"{host}/taskfleet-worker-2 is exited (exit code {worker['exit_code']})"
            in (doc["problems"])
        )
        per_host = deployed_per_host(healthy)
        assert (
            f"fewer workers than expected on {host}: the master sees {per_host - 1}"
            f" of its {per_host} worker container(s)"
        ) in doc["problems"]

        tables = make(healthy, "status")
        assert tables.returncode != 0
        assert f"problem: {host}/taskfleet-worker-2 is exited" in tables.stdout
        assert "taskfleet: error: the cluster is not healthy" in tables.stderr
    finally:
        inner(healthy, host, "docker", "start", "taskfleet-worker-2")
    wait_for(
        "make status to be healthy again",
        lambda: make(healthy, "status", "JSON=1").returncode == 0,
        timeout=120,
        interval=3,
    )


def test_make_dashboard_prints_the_url_or_holds_a_tunnel_until_ctrl_c(healthy: Lab) -> None:
    direct = make(healthy, "dashboard")
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout == f"dashboard: {url(healthy)}\n"

    tunnel = subprocess.Popen(
        ["make", "-s", "dashboard", "TUNNEL=1", f"INVENTORY={healthy.inventory_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C reaches make and fab together, as in a terminal
    )
    try:
        assert tunnel.stdout is not None
        line = tunnel.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), (line, tunnel.poll())
        local = line.split()[1]
        assert f"SSH tunnel through master to {url(healthy)}" in line
        status, body = get(local + "healthz")
        assert (status, body) == (200, b"healthy\n")
        assert get(local)[0] == 200
        os.killpg(tunnel.pid, signal.SIGINT)
        out, err = tunnel.communicate(timeout=30)
        assert "dashboard: tunnel closed" in out, (out, err)
        port = int(local.rsplit(":", 1)[1].strip("/"))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the tunnel's port is still open"
    finally:
        if tunnel.poll() is None:
            os.killpg(tunnel.pid, signal.SIGKILL)
            tunnel.communicate(timeout=30)


def test_status_inside_the_master_container_gives_the_verdict_exit_codes(healthy: Lab) -> None:
    want = expected_workers(healthy)
    base = ["docker", "exec", "taskfleet-master", "taskfleet", "status", "--json"]
    base += [*TLS_ARGS, "--master", f"{healthy.hosts['master']}:{MANAGER_PORT}"]
    for expect, code in ((want, 0), (want + 1, 1)):
        result = subprocess.run(
            ["docker", "exec", healthy.container("master"), *base, "--expect-workers", str(expect)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == code, result.stderr
        assert json.loads(result.stdout)["healthy"] is (code == 0)
    nowhere = [*base[:-1], "127.0.0.1:1", "--connect-timeout", "2"]
    unreachable = subprocess.run(
        ["docker", "exec", healthy.container("master"), *nowhere],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 2, unreachable.stderr
    assert unreachable.stderr.startswith("taskfleet: error: cannot reach the master at 127.0.0.1:1")
