"""The master image serves its HTTP side: the dashboard's files are in the image (package
data in the wheel), and /metrics, /healthz and / answer from a container on the network."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest

from tests.containers.conftest import SECRET, Cluster, logs
from tests.waiting import wait_for

HTTP_PORT = 7452


def fetch(ip: str, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


@pytest.fixture
def http_master(cluster: Cluster) -> Iterator[str]:
    """A second master from the image with --http on every address; yields its IP."""
    command = ["master", "--bind", "0.0.0.0", "--authkey-file", SECRET]
    container: Any = cluster.client.containers.run(
        cluster.images.master,
        command=[*command, "--http", f"0.0.0.0:{HTTP_PORT}"],
        name=f"{cluster.run_id}-http-master",
        detach=True,
        network=cluster.network,
        volumes=cluster.secret_mount(),
        labels={**cluster.labels, "io.taskfleet.role": "master"},
    )
    try:
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][cluster.network]["IPAddress"]

        def up() -> bool:
            try:
                return fetch(ip, "/healthz")[0] == 200
            except OSError:
                return False

        wait_for("the master's HTTP port", up, timeout=30, detail=lambda: logs(container))
        yield ip
    finally:
        container.remove(force=True, v=True)


def test_the_master_image_serves_the_dashboard_metrics_and_health(http_master: str) -> None:
    status, ctype, page = fetch(http_master, "/")
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    for asset in ("/dashboard.js", "/dashboard.css", "/favicon.svg"):
        assert asset.encode() in page
        status, _, body = fetch(http_master, asset)
        assert status == 200 and len(body) > 100, asset
    status, ctype, metrics = fetch(http_master, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert b"taskfleet_workers_connected 0\n" in metrics
    assert fetch(http_master, "/healthz") == (200, "text/plain; charset=utf-8", b"healthy\n")
