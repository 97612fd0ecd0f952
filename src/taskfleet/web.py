"""The master's read-only HTTP server: ``/metrics``, ``/healthz``, ``/api/status``, ``/``.

Standard library only, on threads of its own, built so that a slow or
hostile client can never stall the manager port or a running job:

* **one reader thread** accepts connections and reads request heads for all
  of them at once (``selectors``): a client trickling bytes costs a file
  descriptor, not a thread;
* every connection has a **deadline** for its whole request head
  (``defaults.HTTP_REQUEST_DEADLINE``), however slowly it sends, and a **size
  limit** (``HTTP_MAX_REQUEST_BYTES``); at most ``HTTP_MAX_CONNECTIONS`` are
  open, more are closed at once;
* complete requests go to a **fixed pool** of ``HTTP_THREADS`` threads
  through a bounded queue (full: the connection is closed); each response is
  written with a total time limit (``HTTP_WRITE_TIMEOUT``), then the
  connection is closed (no keep-alive: one request per connection);
* answers come from the :class:`~taskfleet.observe.Observer`'s last sample,
  never from the board, so requests cost the workers nothing.

Read-only: GET and HEAD only, nothing that changes the cluster, no secrets
(the authkey never reaches this module). Static files (the dashboard) are
package data under ``taskfleet/static``.

Lifecycle: ``WebServer(...)`` binds (raises OSError, so a bad address is
found before anything else starts); ``start()`` starts the threads; ``stop()``
closes everything and joins them.
"""

from __future__ import annotations

import json
import logging
import queue
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from taskfleet import __version__, defaults, health, metrics
from taskfleet.observe import Observer, Snapshot

#: Files of the dashboard: URL path -> (package file, content type).
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

_HEADERS_ALWAYS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)


def load_static() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files, read once from the package."""
    root = resources.files("taskfleet") / "static"
    return {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}


@dataclass
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    extra: tuple[tuple[str, str], ...] = ()


def _text(status: HTTPStatus, text: str, *extra: tuple[str, str]) -> Response:
    return Response(status, text.encode(), extra=extra)


def _json(doc: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
    return Response(status, json.dumps(doc).encode(), "application/json")


class WebApp:
    """Routes a request (method, target) to a response; no sockets here (unit-testable).

    ``live`` reads the figures taken at scrape time (counters, process).
    """

    def __init__(
        self, observer: Observer, live: Callable[[], metrics.Live], static: Mapping[str, Any]
    ) -> None:
        self.observer = observer
        self.live = live
        self.static = static

    def handle(self, method: str, target: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _text(
                HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET or HEAD\n", ("Allow", "GET, HEAD")
            )
        url = urlsplit(target)
        try:
            expect = _expect_workers(url.query)
        except ValueError as exc:
            return _text(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        path = url.path
        if path == "/metrics":
            return self._metrics()
        if path == "/healthz":
            return self._healthz(expect)
        if path == "/api/status":
            return _json(health.verdict(self.observer.snapshot().status, expect))
        if path == "/api/dashboard":
            return _json(dashboard_doc(self.observer.snapshot(), expect))
        if path in self.static:
            body, ctype = self.static[path]
            return Response(HTTPStatus.OK, body, ctype)
        return _text(HTTPStatus.NOT_FOUND, "not found: try /, /metrics, /healthz, /api/status\n")

    def _metrics(self) -> Response:
        snap = self.observer.snapshot()
        totals = {
            "items_done": snap.items_done_total,
            "duplicates": snap.duplicates_total,
            "items_failed": snap.items_failed_total,
        }
        text = metrics.render(snap.status, totals, health.assess(snap.status), self.live())
        return Response(HTTPStatus.OK, text.encode(), metrics.CONTENT_TYPE)

    def _healthz(self, expect: int) -> Response:
        problems = health.assess(self.observer.snapshot().status, expect)
        if not problems:
            return _text(HTTPStatus.OK, "healthy\n")
        lines = "".join(f"{p}\n" for p in problems)
        return _text(
            HTTPStatus.SERVICE_UNAVAILABLE, f"degraded: {len(problems)} problem(s)\n{lines}"
        )


def _expect_workers(query: str) -> int:
    values = parse_qs(query).get("expect_workers")
    if not values:
        return 0
    text = values[-1]
    if not text.isdigit() or len(text) > 6:
        raise ValueError(f"bad expect_workers {text!r}: use a whole number, e.g. ?expect_workers=4")
    return int(text)


def dashboard_doc(snap: Snapshot, expect: int = 0) -> dict[str, Any]:
    """What the dashboard page draws: the status with the verdict, rates, ETAs, history."""
    doc = health.verdict(snap.status, expect)
    doc["taken"] = snap.taken
    doc["worker_rates"] = snap.worker_rates
    doc["jobs"] = [
        {**job, "items_per_s": snap.job_rates.get(job["id"], 0.0), "eta_s": snap.eta_s(job)}
        for job in doc["jobs"]
    ]
    doc["history"] = snap.history
    doc["items_done_total"] = snap.items_done_total
    return doc


# -- the server -------------------------------------------------------------------------


@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    deadline: float
    buf: bytearray


class WebServer:
    """See the module docstring. Thread-safe counters: ``requests`` (by status code) and
    ``dropped`` (connections closed unanswered, by reason)."""

    def __init__(
        self,
        address: tuple[str, int],
        app: WebApp,
        log: logging.Logger,
        *,
        threads: int = defaults.HTTP_THREADS,
        max_connections: int = defaults.HTTP_MAX_CONNECTIONS,
        request_deadline: float = defaults.HTTP_REQUEST_DEADLINE,
        write_timeout: float = defaults.HTTP_WRITE_TIMEOUT,
        max_request_bytes: int = defaults.HTTP_MAX_REQUEST_BYTES,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(128)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self.app = app
        self._log = log
        self._threads = threads
        self._max_conns = max_connections
        self._deadline = request_deadline
        self._write_timeout = write_timeout
        self._max_bytes = max_request_bytes
        self._queue: queue.Queue[tuple[socket.socket, str, bytes]] = queue.Queue(
            maxsize=threads * 4
        )
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._workers: list[threading.Thread] = []
        self._counts_lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    # -- lifecycle

    def start(self) -> None:
        reader = threading.Thread(target=self._read_loop, name="http-reader", daemon=True)
        self._workers = [reader]
        for i in range(self._threads):
            self._workers.append(
                threading.Thread(target=self._answer_loop, name=f"http-{i}", daemon=True)
            )
        for t in self._workers:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for t in self._workers:
            t.join(timeout=5)
        while not self._queue.empty():  # requests read but never answered
            self._queue.get_nowait()[0].close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(requests by status code, dropped connections by reason), copied."""
        with self._counts_lock:
            return dict(self.requests), dict(self.dropped)

    def _drop(self, conn: socket.socket, reason: str) -> None:
        with self._counts_lock:
            self.dropped[reason] += 1
        try:
            conn.close()
        except OSError:
            pass

    # -- reading request heads (one thread, every connection)

    def _read_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: dict[int, _Conn] = {}
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                timeout = min((c.deadline for c in conns.values()), default=now + 1.0) - now
                for key, _ in sel.select(timeout=max(0.0, min(timeout, 1.0))):
                    if key.fileobj is self._listener:
                        self._accept(sel, conns)
                    elif key.fileobj is self._wake_r:
                        return
                    else:
                        self._read(sel, conns, conns[key.fd])
                now = time.monotonic()
                for fd, c in list(conns.items()):
                    if now >= c.deadline:
                        sel.unregister(c.sock)
                        del conns[fd]
                        self._drop(c.sock, "timeout")
        except Exception as exc:  # the HTTP server must never take the master down
            self._log.error("HTTP reader stopped: %s", exc)
        finally:
            for c in conns.values():
                c.sock.close()
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, conns: dict[int, _Conn]) -> None:
        for _ in range(64):  # a burst, then the other connections get their turn
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next round
                self._log.warning("HTTP accept failed: %s", exc.strerror or exc)
                time.sleep(0.05)
                return
            if len(conns) >= self._max_conns:
                self._drop(sock, "too_many")
                continue
            sock.setblocking(False)
            conn = _Conn(
                sock, f"{addr[0]}:{addr[1]}", time.monotonic() + self._deadline, bytearray()
            )
            conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, None)

    def _read(self, sel: selectors.BaseSelector, conns: dict[int, _Conn], c: _Conn) -> None:
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        c.buf += data
        end = _head_end(c.buf)
        if end < 0 and data and len(c.buf) <= self._max_bytes:
            return  # more to come
        sel.unregister(c.sock)
        del conns[c.sock.fileno()]
        if end < 0 and not data:
            c.sock.close()  # the client went away before a whole request (a port probe)
        elif end < 0 or end > self._max_bytes:
            self._reply_quickly(c.sock, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too_large")
        else:
            try:
                self._queue.put_nowait((c.sock, c.peer, bytes(c.buf[:end])))
            except queue.Full:
                self._reply_quickly(c.sock, HTTPStatus.SERVICE_UNAVAILABLE, "busy")

    def _reply_quickly(self, sock: socket.socket, status: HTTPStatus, reason: str) -> None:
        """A best-effort one-packet answer from the reader thread (never blocks), then close."""
        try:
            sock.send(
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
        except OSError:
            pass
        self._drop(sock, reason)

    # -- answering (the pool)

    def _answer_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer, head = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._answer(sock, head)
            except Exception as exc:  # one bad request must not kill a pool thread
                self._log.debug("HTTP request from %s failed: %s", peer, exc)
            finally:
                try:
                    sock.close()
                except OSError:
                    pass

    def _answer(self, sock: socket.socket, head: bytes) -> None:
        method, target = parse_request_line(head)
        if method == "":
            response = _text(HTTPStatus.BAD_REQUEST, "malformed request\n")
        else:
            try:
                response = self.app.handle(method, target)
            except Exception as exc:
                self._log.error("HTTP %s %s failed: %s", method, target[:100], exc)
                response = _text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        with self._counts_lock:
            self.requests[str(response.status.value)] += 1
        headers = [
            f"HTTP/1.1 {response.status.value} {response.status.phrase}",
            f"Date: {formatdate(usegmt=True)}",
            f"Server: taskfleet/{__version__}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (*_HEADERS_ALWAYS, *response.extra)),
        ]
        data = ("\r\n".join(headers) + "\r\n\r\n").encode()
        if method != "HEAD":
            data += response.body
        sock.setblocking(True)
        # Since Python 3.5 the timeout bounds the whole sendall, not each send.
        sock.settimeout(self._write_timeout)
        sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _head_end(buf: bytes | bytearray) -> int:
    """Length of the request head in ``buf`` (up to its blank line), -1 when incomplete."""
    for blank in (b"\r\n\r\n", b"\n\n"):
        i = buf.find(blank)
        if i >= 0:
            return i + len(blank)
    return -1


def parse_request_line(head: bytes) -> tuple[str, str]:
    """(method, target) from a request head; ("", "") when it is not HTTP/1.x."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return "", ""
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target.startswith("/"):
        return "", ""
    return method.upper(), target
