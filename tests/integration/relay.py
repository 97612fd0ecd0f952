"""An on-path attacker for the tests: a TCP relay on loopback that holds no key.

It passes the authkey handshake through untouched (three frames each way) and
then rewrites what follows:

``wrong``
    (plaintext) every result blob in the master's fetch replies becomes a
    list of wrong numbers;
``exec``
    (plaintext) every request, reply and result blob after the handshake gets
    a pickle whose ``__reduce__`` runs ``exec``: decoded by the stock
    unpickler it writes the marker file ``<relay name>-<kind>`` (kind:
    ``request`` — the master decodes it, ``reply`` — a worker or client,
    ``result`` — a client decoding results). Every forged frame is kept in
    ``forged`` so a test can show it really is an exploit;
    ``kinds`` limits which of the three it forges;
``flip``
    (TLS) it cannot read anything, so on each of its first ``tamper_conns``
    connections it flips one byte once a direction has carried 8 KiB.

Counters say what it did, so a test can tell a harmless relay from a beaten one.
"""

from __future__ import annotations

import builtins
import pickle
import socket
import struct
import threading
from pathlib import Path
from typing import Any

HANDSHAKE_FRAMES = 3  # challenge, answer, welcome — each way


class Exec:
    """Unpickled by the stock unpickler, this runs ``code``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (self.code,))


class Relay:
    def __init__(
        self,
        target: tuple[str, int],
        mode: str,
        name: str = "relay",
        markers: Path | None = None,
        tamper_conns: int = 0,
        kinds: tuple[str, ...] = ("request", "reply", "result"),
    ) -> None:
        self.target = target
        self.mode = mode
        self.name = name
        self.markers = markers
        self.tamper_conns = tamper_conns
        self.kinds = kinds
        self.forged: list[tuple[str, bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.connections = 0
        self.rewritten = 0  # frames changed (plaintext) or bytes flipped (TLS)
        self.closing = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        with self.lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.connections += 1
                number = self.connections
                self._socks += [client, server]
            for src, dst, direction in ((client, server, "c2s"), (server, client, "s2c")):
                threading.Thread(
                    target=self._pump, args=(src, dst, direction, number), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, number: int) -> None:
        try:
            if self.mode == "flip":
                self._flip(src, dst, number)
            else:
                self._frames(src, dst, direction)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _flip(self, src: socket.socket, dst: socket.socket, number: int) -> None:
        seen = 0
        flipped = number > self.tamper_conns
        while data := src.recv(65536):
            seen += len(data)
            if not flipped and seen > 8192:
                flipped = True
                data = data[:-1] + bytes([data[-1] ^ 0x01])
                with self.lock:
                    self.rewritten += 1
            dst.sendall(data)

    def _read_exact(self, sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _frames(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        count = 0
        while True:
            head = self._read_exact(src, 4)
            (size,) = struct.unpack("!i", head)
            body = self._read_exact(src, size)
            count += 1
            if count > HANDSHAKE_FRAMES:
                new = self._rewrite(body, direction)
                if new is not None:
                    body = new
                    with self.lock:
                        self.rewritten += 1
            dst.sendall(struct.pack("!i", len(body)) + body)

    def _rewrite(self, body: bytes, direction: str) -> bytes | None:
        try:
            msg = pickle.loads(body)  # the attacker reads everything (test data, trusted)
        except Exception:
            return None
        if self.mode == "wrong" and direction == "s2c":
            fetched = _fetch_rows(msg)
            if fetched is None:
                return None
            rows, view = fetched
            bad = [
                (*row[:4], pickle.dumps([r + 1 for r in pickle.loads(row[4])]), *row[5:])
                for row in rows
            ]
            return pickle.dumps(("#RETURN", (bad, view)))
        if self.mode == "exec" and self.markers is not None:
            if "request" in self.kinds and direction == "c2s" and _is_request(msg):
                ident, method, args, kwds = msg
                frame = pickle.dumps((ident, method, (*args, self._evil("request")), kwds))
                return self._forge("request", frame)
            fetched = _fetch_rows(msg)
            if "result" in self.kinds and fetched is not None:
                rows, view = fetched
                blob = pickle.dumps([self._evil("result")])
                self._forge("result", blob)
                rows = [(*row[:4], blob, *row[5:]) for row in rows]
                return pickle.dumps(("#RETURN", (rows, view)))
            if "reply" in self.kinds and direction == "s2c" and _is_reply(msg):
                return self._forge(
                    "reply", pickle.dumps(("#RETURN", (msg[1], self._evil("reply"))))
                )
        return None

    def _evil(self, kind: str) -> Exec:
        assert self.markers is not None
        path = self.markers / f"{self.name}-{kind}"
        return Exec(f"open({str(path)!r}, 'w').write('pwned')")

    def _forge(self, kind: str, frame: bytes) -> bytes:
        with self.lock:
            self.forged.append((kind, frame))
        return frame


def _is_reply(msg: Any) -> bool:
    return isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "#RETURN"


def _is_request(msg: Any) -> bool:
    return isinstance(msg, tuple) and len(msg) == 4 and isinstance(msg[2], tuple)


def _fetch_rows(msg: Any) -> tuple[list[Any], Any] | None:
    """The rows of a ``fetch`` or ``fetch_ordered`` reply (result blobs), or None for any
    other message. A row is ``(seq, chunk, worker, host, blob, failed, items)``."""
    if not (isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "#RETURN"):
        return None
    value = msg[1]
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list)):
        return None
    rows, view = value
    if rows and all(isinstance(r, tuple) and len(r) == 7 and isinstance(r[4], bytes) for r in rows):
        return rows, view
    return None
