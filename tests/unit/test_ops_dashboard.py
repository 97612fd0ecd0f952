"""``make dashboard``'s probe of the tunnel it opened: real sockets on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import threading
import time

from taskfleet.ops import dashboard


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_listener_that_starts_late_is_waited_for() -> None:
    """Fabric's forwarder binds its port in a thread: the first probes are refused."""
    port = _free_port()
    servers: list[http.server.HTTPServer] = []

    def start_late() -> None:
        time.sleep(0.5)
        server = http.server.HTTPServer(("127.0.0.1", port), _Healthz)
        servers.append(server)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        assert not dashboard.answers("127.0.0.1", port)  # refused: nothing listens yet
        assert dashboard.answers_within("127.0.0.1", port, 10.0)
    finally:
        while thread.is_alive() and not servers:
            time.sleep(0.05)
        for server in servers:
            server.shutdown()
            server.server_close()
        thread.join(timeout=5)


def test_nothing_listening_gives_up_when_the_time_is_up() -> None:
    port = _free_port()
    started = time.monotonic()
    assert not dashboard.answers_within("127.0.0.1", port, 0.5)
    assert 0.4 < time.monotonic() - started < 3.0
