"""The HTTP routes without sockets: read-only, exact answers, the dashboard's files."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import pytest

from taskfleet import metrics
from taskfleet.observe import Observer
from taskfleet.web import WebApp, load_static, parse_request_line

LIVE = metrics.Live(0, 0, 0, 0, 0.0, 1, 0.0, 1, None, {}, {})


def status() -> Any:
    return {
        "master": {"address": "a:1", "version": "x", "lease_timeout_s": 30.0},
        "workers": [{"name": "w1", "host": "h1", "items_done": 5, "last_heartbeat_age_s": 0.1}],
        "lost_workers": [],
        "jobs": [],
    }


@pytest.fixture
def app() -> WebApp:
    return WebApp(Observer(status, logging.getLogger("t")), lambda: LIVE, load_static())


def test_healthz_is_200_or_503_with_one_problem_per_line(app: WebApp) -> None:
    ok = app.handle("GET", "/healthz")
    assert (ok.status, ok.body) == (HTTPStatus.OK, b"healthy\n")
    bad = app.handle("GET", "/healthz?expect_workers=2")
    assert bad.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert (
        bad.body
        == b"degraded: 1 problem(s)\nfewer workers than expected: 1 connected, 2 expected\n"
    )


@pytest.mark.parametrize("query", ["expect_workers=-1", "expect_workers=x", "expect_workers=1e9"])
def test_a_bad_expectation_is_a_400_naming_the_fix(app: WebApp, query: str) -> None:
    r = app.handle("GET", f"/api/status?{query}")
    assert r.status == HTTPStatus.BAD_REQUEST and b"use a whole number" in r.body


def test_api_status_is_the_status_document_with_the_verdict(app: WebApp) -> None:
    doc = json.loads(app.handle("GET", "/api/status").body)
    assert doc == {**status(), "healthy": True, "problems": []}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_only_get_and_head_are_allowed(app: WebApp, method: str) -> None:
    r = app.handle(method, "/metrics")
    assert r.status == HTTPStatus.METHOD_NOT_ALLOWED and ("Allow", "GET, HEAD") in r.extra


def test_the_dashboard_files_come_from_the_package(app: WebApp) -> None:
    page = app.handle("GET", "/")
    assert page.status == HTTPStatus.OK and page.content_type.startswith("text/html")
    for ref in (b"/dashboard.css", b"/dashboard.js", b"/favicon.svg"):
        assert ref in page.body
        assert app.handle("GET", ref.decode()).status == HTTPStatus.OK
    assert app.handle("GET", "/index.html").status == HTTPStatus.NOT_FOUND


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
        (b"head /healthz?expect_workers=2 HTTP/1.0\n\n", ("HEAD", "/healthz?expect_workers=2")),
        (b"GET http://evil/ HTTP/1.1\r\n\r\n", ("", "")),
        (b"GET / SPDY/3\r\n\r\n", ("", "")),
        (b"\xff\xfe / HTTP/1.1\r\n\r\n", ("", "")),
        (b"GET /  HTTP/1.1\r\n\r\n", ("", "")),
    ],
)
def test_request_lines(head: bytes, parsed: tuple[str, str]) -> None:
    assert parse_request_line(head) == parsed
