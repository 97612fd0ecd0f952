"""The wire: a multiprocessing.managers server in the master's own process,
and a client connection that we own (timeouts, reconnect, backoff), both
over plain TCP or mutual TLS (:mod:`taskfleet.tls`).

Both ends speak through :class:`SocketConnection`, a ``Connection`` that keeps
its socket object: the stock class reads and writes the raw descriptor with
``os.read``/``os.write`` (which would bypass TLS) and decodes with the full
unpickler. Ours sends and receives through the socket (TLS or not), keeps
Python socket timeouts on every read and write, and decodes every message
with the restricted unpickler (:mod:`taskfleet.safepickle`): a peer can send
data, never code.

Server side (:class:`TaskfleetServer`, a ``managers.Server``):
  * runs in-process on threads, so registered callables are plain bound
    methods and are never pickled;
  * sets TCP_NODELAY on every accepted socket (Nagle + delayed ACK cost
    40-90 ms per message otherwise) and TCP keepalive (half-open peers die);
  * guards the handshake (:mod:`taskfleet.gate`): one deadline for all of
    it (TLS, the authkey and the first request), a cap on unauthenticated
    connections overall and per source address, and refusals logged with
    their reason, at most once per source per interval;
  * with TLS: requires a client certificate from the cluster's CA; a
    plaintext peer is told so in one frame (``TLS_REQUIRED``) and closed;
    without TLS a TLS peer is recognised by its hello and refused by name;
  * sends refused peers nothing useful (the stock server answers a failed
    handshake with a pickled traceback) and turns any non-taskfleet
    exception of a call into a :class:`RemoteError`, so clients need admit
    no other classes;
  * does not expose ``shutdown``/``debug_info`` to remote peers.

Client side (:class:`Session`): speaks the manager protocol directly on a
socket we create — TLS first when configured, then
``answer_challenge``/``deliver_challenge``, ``accept_connection`` and
``(ident, method, args, kwargs)`` requests — so no ``BaseProxy`` state is
cached per address (CPython #86320) and no proxy finalizer can hang at exit.
Every read and write has a timeout: a hung (SIGSTOP'd) master is detected,
the connection is dropped and re-dialled with backoff. A damaged or
tampered reply (TLS integrity failure, a pickle naming a refused global)
is a broken connection too. Calls are never interrupted by signals; every
board method is safe to retry. Every wait is bounded by what is left of the
caller's time: the connect timeout (``give_up``) bounds connecting, the
handshake and the first answer together, and a call's ``deadline`` bounds the
call with its reconnects, so a timeout is honoured within a fraction of a
second of its value.

Stock ``BaseManager`` clients still work against a plaintext master:
register ``get_board`` on a ``BaseManager`` subclass (see
:class:`BoardManager`) and ``connect()``.
"""

from __future__ import annotations

import errno
import io
import logging
import pickle
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError, managers
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection
from typing import Any

from taskfleet import defaults, safepickle
from taskfleet.address import format_hostport
from taskfleet.errors import (
    AuthkeyRejected,
    MasterUnreachable,
    RemoteError,
    Stopping,
    TaskfleetError,
    TLSRefused,
)
from taskfleet.gate import Deadlines, HandshakeGate, RefusalLog, shutdown_fd
from taskfleet.protocol import BOARD_IDENT, BOARD_TYPEID
from taskfleet.tls import (
    TLS_RECORD_HANDSHAKE,
    TLS_REQUIRED,
    TLSConfig,
    client_failure,
    refusal_reason,
)

# The stock server's own methods a peer may call: connection set-up and the
# reference counting stock proxies do. Not `shutdown` or `debug_info`.
_PUBLIC = (
    "create",
    "accept_connection",
    "get_methods",
    "number_of_objects",
    "dummy",
    "incref",
    "decref",
)

# ssl.SSLError is an OSError; pickle.UnpicklingError covers a reply that names a
# refused global (safepickle.UnsafePickle) or arrives damaged.
_TRANSPORT_ERRORS = (
    OSError,
    EOFError,
    ConnectionError,
    struct.error,
    ValueError,
    pickle.UnpicklingError,
)

# Messages up to this size are read into one buffer allocated up front; larger
# ones grow as their bytes really arrive (a length prefix alone allocates nothing).
_PREALLOC = 1 << 20


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class SocketConnection(Connection):
    """A ``multiprocessing.connection.Connection`` over a socket object (plain or TLS).

    Same frames as the stock class (a 4-byte big-endian length, then the
    bytes), so the stock ``deliver_challenge``/``answer_challenge`` and the
    stock server loop run over it unchanged. Differences: bytes go through the
    socket object (``SSLSocket`` encrypts them), a frame's header and body go
    out in one write, ``poll`` sees bytes TLS has already decrypted, and
    ``recv`` decodes with :func:`taskfleet.safepickle.loads` (``allowed``).
    Closing the connection closes the socket.
    """

    def __init__(
        self, sock: socket.socket, allowed: frozenset[safepickle.Global] = safepickle.WIRE
    ) -> None:
        super().__init__(sock.fileno())
        self._sock = sock
        self._allowed = allowed

    @property
    def tls(self) -> bool:
        return isinstance(self._sock, ssl.SSLSocket)

    def settimeout(self, seconds: float | None) -> None:
        """Timeout of every later read and write (None: block)."""
        self._sock.settimeout(seconds)

    def peek_byte(self) -> bytes:
        """The next byte the peer sent, left in place (b"" at EOF); plain sockets only."""
        return self._sock.recv(1, socket.MSG_PEEK)

    def _close(self, _close: Any = None) -> None:
        self._sock.close()

    def _send(self, buf: Any, write: Any = None) -> None:
        self._sock.sendall(buf)

    def _send_bytes(self, buf: Any) -> None:
        n = len(buf)
        if n > 0x7FFFFFFF:
            header = struct.pack("!i", -1) + struct.pack("!Q", n)
        else:
            header = struct.pack("!i", n)
        if n <= _PREALLOC:
            # One write: one TCP segment run and, with TLS, no extra record.
            self._sock.sendall(header + bytes(buf))
        else:
            self._sock.sendall(header)
            self._sock.sendall(buf)

    def _exact(self, size: int) -> bytes | bytearray:
        """Exactly ``size`` bytes; EOFError at a clean end, OSError at one mid-frame."""
        sock = self._sock
        if size <= _PREALLOC:
            buf = bytearray(size)
            view = memoryview(buf)
            pos = 0
            while pos < size:
                n = sock.recv_into(view[pos:], size - pos)
                if n == 0:
                    if pos == 0:
                        raise EOFError
                    raise OSError("got end of file during message")
                pos += n
            return buf
        parts = []
        remaining = size
        while remaining:
            chunk = sock.recv(min(remaining, _PREALLOC))
            if not chunk:
                if remaining == size:
                    raise EOFError
                raise OSError("got end of file during message")
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def _frame(self, maxsize: int | None = None) -> bytes | bytearray | None:
        (size,) = struct.unpack("!i", self._exact(4))
        if size == -1:
            (size,) = struct.unpack("!Q", self._exact(8))
        if maxsize is not None and size > maxsize:
            return None
        return self._exact(size)

    def _recv(self, size: int, read: Any = None) -> io.BytesIO:
        return io.BytesIO(self._exact(size))

    def _recv_bytes(self, maxsize: int | None = None) -> io.BytesIO | None:
        frame = self._frame(maxsize)
        return None if frame is None else io.BytesIO(frame)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        self._check_closed()  # type: ignore[attr-defined]
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        frame = self._frame(maxlength)
        if frame is None:
            self._bad_message_length()  # type: ignore[attr-defined]
        return bytes(frame)  # type: ignore[arg-type]

    def recv(self) -> Any:
        """The next message, decoded with the restricted unpickler.

        Raises safepickle.UnsafePickle (a refused global; the stream stays in
        step), EOFError at the end, OSError/ssl.SSLError when the transport fails.
        """
        self._check_closed()  # type: ignore[attr-defined]
        frame = self._frame()
        assert frame is not None
        return safepickle.loads(frame, self._allowed)

    def _poll(self, timeout: float) -> bool:
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return bool(mpc.wait([self], timeout))


class _Replay:
    """A connection whose first received frame was already read (``first``)."""

    def __init__(self, conn: SocketConnection, first: bytes) -> None:
        self._conn = conn
        self._first: bytes | None = first

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._conn.recv_bytes(maxlength)

    def send_bytes(self, buf: bytes) -> None:
        self._conn.send_bytes(buf)


class _Refused(Exception):
    """A handshake the master refuses; ``reason`` goes to its (rate-limited) log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _PlainServerHandshake:
    """The plaintext master's side of the authkey handshake; it recognises a TLS
    client by its hello instead of reading it as a 369 MB frame length."""

    def __init__(self, conn: SocketConnection) -> None:
        self._conn = conn
        self._checked = False

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        if not self._checked:
            self._checked = True
            first = self._conn.peek_byte()
            if first and first[0] == TLS_RECORD_HANDSHAKE:
                raise _Refused(
                    "it speaks TLS, this master runs without it"
                    " (start it with --tls-ca/--tls-cert/--tls-key)"
                )
        return self._conn.recv_bytes(maxlength)

    def send_bytes(self, buf: bytes) -> None:
        self._conn.send_bytes(buf)


class _ServerConnection(SocketConnection):
    """The master's end: errors a client cannot decode become RemoteError; a TLS
    failure or a refused global ends the connection (the stock loop would answer
    with a traceback and try to read on)."""

    broken = ""

    def send(self, obj: Any) -> None:
        if type(obj) is tuple and len(obj) == 2 and obj[0] == "#ERROR":
            exc = obj[1]
            if (type(exc).__module__, type(exc).__qualname__) not in safepickle.WIRE:
                obj = ("#ERROR", RemoteError(f"{type(exc).__name__}: {_short(exc)}", ""))
        super().send(obj)

    def recv(self) -> Any:
        try:
            return super().recv()
        except ssl.SSLError as exc:
            self.broken = f"TLS failed ({_short(exc)}): tampering on the path?"
        except safepickle.UnsafePickle as exc:
            self.broken = f"its request names {exc.name}, which is not plain data"
        raise EOFError


class BoardManager(managers.BaseManager):
    """For stock-multiprocessing clients: ``BoardManager(addr, authkey).connect()``."""


BoardManager.register(BOARD_TYPEID)


def _listener(address: tuple[str, int], backlog: int = 1) -> mpc.Listener:
    """A stock Listener whose socket family follows the bind address.

    ``Listener`` derives the family of a ``(host, port)`` tuple as AF_INET
    whatever the host, so an IPv6 bind address fails with "address family not
    supported"; given explicitly, AF_INET6 works (SocketListener takes any
    family ``socket`` knows).
    """
    family = "AF_INET6" if ":" in address[0] else "AF_INET"
    return mpc.Listener(address, family, backlog)


# managers.Server picks its listener by serializer name; ours differs from "pickle"
# only in the listener (same Client, same pickling).
_SERIALIZER = "taskfleet-pickle"
managers.listener_client.setdefault(_SERIALIZER, (_listener, mpc.Client))  # type: ignore[attr-defined]


class TaskfleetServer(managers.Server):
    """A manager server with guarded, logged handshakes, plain or TLS. See the module docstring."""

    def __init__(
        self,
        board_factory: Callable[[], object],
        exposed: tuple[str, ...],
        address: tuple[str, int],
        authkey: bytes,
        log: logging.Logger,
        handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT,
        max_unauthenticated: int = defaults.MAX_UNAUTHENTICATED,
        max_unauthenticated_per_source: int = defaults.MAX_UNAUTHENTICATED_PER_SOURCE,
        tls: TLSConfig | None = None,
        sniff_timeout: float = defaults.TLS_SNIFF_TIMEOUT,
        refusal_interval: float = defaults.REFUSAL_LOG_INTERVAL,
    ) -> None:
        # Before binding: a bad certificate changes nothing (TLSError).
        self._tls = tls.context(server_side=True) if tls is not None else None
        # The callable is a bound method run in this process: never pickled.
        registry: dict[str, Any] = {BOARD_TYPEID: (board_factory, exposed, None, None)}
        super().__init__(registry, address, authkey, _SERIALIZER)
        self._board_factory = board_factory
        self._exposed = exposed
        self.public = list(_PUBLIC)
        self.stop_event = threading.Event()  # stock code makes it in serve_forever()
        self._log = log
        self._handshake_timeout = handshake_timeout
        self._sniff_timeout = sniff_timeout
        self._gate = HandshakeGate(max_unauthenticated, max_unauthenticated_per_source)
        self.refusals = RefusalLog(log, refusal_interval)
        self._deadlines = Deadlines(tick=self.refusals.flush)
        stock: Any = self  # attributes typeshed does not declare
        self._key = authkey
        self._sock: socket.socket = stock.listener._listener._socket
        self._sock.listen(128)
        self._peer = threading.local()
        self._accepter: threading.Thread | None = None
        # Live connections, so stop() can cut them before the master closes
        # its journal: a peer then sees a dropped connection and reconnects,
        # instead of an error from a half-closed master.
        self._conns: set[Connection] = set()
        self._conns_lock = threading.Lock()

    def refused_handshakes(self) -> int:
        """Connections refused so far, before or during the handshake (metrics)."""
        return self.refusals.total

    def start(self) -> None:
        """Publish the board under its fixed identity and start accepting."""
        stock: Any = self
        stock.id_to_obj[BOARD_IDENT] = (self._board_factory(), set(self._exposed), None)
        stock.id_to_refcount[BOARD_IDENT] = 1  # never released
        self._deadlines.start()
        self._accepter = threading.Thread(target=self.accepter, name="accepter", daemon=True)
        self._accepter.start()

    def stop(self) -> None:
        """Stop accepting and cut every connection; calls in flight get no answer."""
        self.stop_event.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        self._deadlines.stop()
        with self._conns_lock:
            for conn in self._conns:
                if not conn.closed:  # the stock serving loop may have closed it
                    shutdown_fd(conn.fileno())
            self._conns.clear()
        self.refusals.flush()

    def peer(self) -> str:
        """Address of the peer whose call this thread serves ("" outside a call)."""
        return getattr(self._peer, "addr", "")

    def accepter(self) -> None:
        emfile_logged = 0.0
        while not self.stop_event.is_set():
            try:
                sock, addr = self._sock.accept()
            except OSError as exc:
                if self.stop_event.is_set():
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Do not spin at 100 % CPU when out of descriptors.
                    if time.monotonic() - emfile_logged > 10:
                        self._log.warning("accept failed: %s; pausing accepts", exc.strerror)
                        emfile_logged = time.monotonic()
                    time.sleep(0.1)
                continue
            source = str(addr[0])
            peer = format_hostport(source, int(addr[1]))
            refused = self._gate.admit(source)
            if refused is not None:
                sock.close()
                self.refusals.refuse(source, peer, refused)
                continue
            try:
                threading.Thread(
                    target=self._serve, args=(sock, source, peer), name=f"conn {peer}", daemon=True
                ).start()
            except RuntimeError:  # no thread for it: treat it as refused
                sock.close()
                self._gate.release(source)
                self.refusals.refuse(source, peer, "no thread to serve it")

    def _tls_accept(self, pending: _Pending, deadline: float) -> None:
        """TLS server handshake on ``pending.sock``; raises _Refused with the reason."""
        assert self._tls is not None
        sock = pending.sock
        # A TLS client speaks first (its hello); a plaintext taskfleet peer
        # waits for the challenge. Silence therefore means plaintext.
        sock.settimeout(max(0.01, min(self._sniff_timeout, deadline - time.monotonic())))
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            try:
                sock.settimeout(1.0)
                sock.sendall(struct.pack("!i", len(TLS_REQUIRED)) + TLS_REQUIRED)
            except OSError:
                pass
            raise _Refused(
                "plaintext peer (it sent no TLS hello; this master requires TLS)"
            ) from None
        if not first:
            raise _Refused("closed before the handshake")
        if first[0] != TLS_RECORD_HANDSHAKE:
            raise _Refused("it does not speak TLS (this master requires TLS)")
        # The SSLSocket takes over the descriptor (same number: the deadline still applies).
        pending.sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        pending.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            pending.sock.do_handshake()
        except ssl.SSLError as exc:
            raise _Refused(refusal_reason(exc)) from None

    def _handshake(self, pending: _Pending, deadline: float) -> Any:
        """TLS (if on), both authkey challenges and the first request, before ``deadline``.

        Leaves what it made in ``pending``; closing is the caller's, after the
        deadline is forgotten (a cut must never hit a reused descriptor).
        """
        pending.sock.setblocking(True)
        _tune(pending.sock)
        if self._tls is not None:
            self._tls_accept(pending, deadline)
        # Per read as well: a backstop behind the deadline thread.
        pending.sock.settimeout(self._handshake_timeout)
        conn = pending.conn = _ServerConnection(pending.sock)
        with self._conns_lock:
            if self.stop_event.is_set():
                raise _Refused("the master is stopping")
            self._conns.add(conn)
        mpc.deliver_challenge(
            conn if conn.tls else _PlainServerHandshake(conn),  # type: ignore[arg-type]
            self._key,
        )
        mpc.answer_challenge(conn, self._key)
        return conn.recv()

    def _serve(self, sock: socket.socket, source: str, peer: str) -> None:
        deadline = time.monotonic() + self._handshake_timeout
        token = self._deadlines.add(sock.fileno(), deadline)
        pending = _Pending(sock)
        reason = ""
        request: Any = None
        try:
            request = self._handshake(pending, deadline)
        except AuthenticationError:
            reason = "wrong authkey"
        except _Refused as exc:
            reason = exc.reason
        except Exception as exc:  # garbage, timeout, half-open: drop it quietly
            broken = pending.conn.broken if pending.conn is not None else ""
            reason = broken or f"no valid handshake ({_short(exc)})"
        finally:
            in_time = self._deadlines.remove(token)
            self._gate.release(source)
        conn = pending.conn
        if reason:
            # At the deadline the cut and a read timeout race: either way, it was the deadline.
            if not in_time or time.monotonic() >= deadline - 0.05:
                reason = f"handshake not finished within {self._handshake_timeout:g}s"
            if conn is not None:
                with self._conns_lock:
                    self._conns.discard(conn)
                conn.close()
            else:
                pending.sock.close()
            self.refusals.refuse(source, peer, reason)
            return
        assert conn is not None
        try:
            try:
                _, funcname, args, kwds = request
            except (TypeError, ValueError):
                self.refusals.refuse(source, peer, "its first request is malformed")
                return
            conn.settimeout(None)  # authenticated: calls may long-poll
            self._peer.addr = peer
            if funcname not in self.public:
                conn.send(("#ERROR", RemoteError(f"{funcname!r} is not allowed", "")))
                return
            try:
                result = getattr(self, funcname)(conn, *args, **kwds)
            except Exception as exc:
                msg: tuple[str, Any] = ("#ERROR", RemoteError(_short(exc), ""))
            else:
                msg = ("#RETURN", result)
            if funcname == "accept_connection" or self.stop_event.is_set():
                # accept_connection answered at its start and then served the
                # peer until the loop ended: a second answer here would be
                # taken as the reply to the peer's pending call (a bare None).
                return
            conn.send(msg)
        except SystemExit:  # serve_client() exits its thread on EOF
            pass
        except Exception as exc:
            self._log.debug("connection %s closed: %s", peer, _short(exc))
        finally:
            if conn.broken:
                self.refusals.refuse(source, peer, f"connection dropped: {conn.broken}")
            with self._conns_lock:
                self._conns.discard(conn)
                conn.close()


class _Pending:
    """What a handshake has made so far: the socket (plain, then TLS) and its connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn: _ServerConnection | None = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text[:200]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, safepickle.UnsafePickle):
        return f"refused a reply naming {exc.name}: tampering on the path?"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({_short(exc)})"
    if isinstance(exc, BlockingIOError | TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
        return "connection closed"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return _short(exc)


def dial(
    address: tuple[str, int],
    authkey: bytes,
    timeout: float,
    name: str,
    tls: TLSConfig | None = None,
) -> SocketConnection:
    """Connect (TLS first, when ``tls`` is given), authenticate both ways, and open
    a serving connection.

    Raises TLSError (our own files) before connecting; AuthkeyRejected, or
    TLSRefused for a TLS failure that retrying cannot fix; otherwise a
    transport error (OSError/EOFError) the caller may retry.
    """
    where = format_hostport(*address)
    ctx = tls.context(server_side=False) if tls is not None else None
    sock = socket.create_connection(address, timeout=timeout)
    try:
        _tune(sock)
        sock.settimeout(timeout)
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=address[0], do_handshake_on_connect=False)
            sock.do_handshake()
        conn = SocketConnection(sock)
    except BaseException as exc:
        sock.close()
        _raise_tls_failure(exc, where, address[0], tls)
        raise
    try:
        try:
            first = conn.recv_bytes(256)
            if first == TLS_REQUIRED:
                raise TLSRefused(
                    f"the master at {where} requires TLS",
                    "pass --tls-ca, --tls-cert and --tls-key (or a --profile with a"
                    ' "tls" section; make deploy writes them to inventory/<env>/secrets/)',
                )
            mpc.answer_challenge(_Replay(conn, first), authkey)  # type: ignore[arg-type]
            mpc.deliver_challenge(conn, authkey)
        except AuthenticationError:
            raise AuthkeyRejected(
                f"the master at {where} refused our authkey",
                "use the same authkey file as the master"
                " (one key per cluster, copied to every host)",
            ) from None
        conn.send((None, "accept_connection", (name,), {}))
        kind, result = conn.recv()
        if kind != "#RETURN":
            raise RemoteError(
                f"master refused the connection: {result}",
                "run the same taskfleet version on the master and here",
            )
    except BaseException as exc:
        conn.close()
        _raise_tls_failure(exc, where, address[0], tls)
        raise
    return conn


def _raise_tls_failure(exc: BaseException, where: str, host: str, tls: TLSConfig | None) -> None:
    if tls is not None:
        failure = client_failure(exc, where, host, tls)
        if failure is not None:
            raise failure from None


class _NoRetry:
    """A Session's ``call_once`` as ``call`` (a :class:`taskfleet.protocol.Caller`)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        return self._session.call_once(method, *args, timeout=timeout, deadline=deadline)


class Session:
    """One connection to the master, re-dialled with backoff when it breaks.

    ``call`` sends one request and waits for its reply; transport failures
    (refused, reset, timeout) close the connection and retry the call on a
    new one, so every method called through a Session must be idempotent
    (the board's are). It gives up with MasterUnreachable after ``give_up``
    seconds without a working connection (None: never, for workers).
    Not thread-safe: one Session per thread.
    """

    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        name: str,
        *,
        timeout: float = defaults.WORKER_CALL_TIMEOUT,
        give_up: float | None = defaults.CONNECT_TIMEOUT,
        log: logging.Logger | None = None,
        on_connect: Callable[[Session], None] | None = None,
        stop: threading.Event | None = None,
        max_backoff: float = defaults.MAX_BACKOFF,
        tls: TLSConfig | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        self.where = format_hostport(*address)
        self._authkey = authkey
        self._name = name
        self.timeout = timeout
        self.give_up = give_up
        self._log = log
        self._on_connect = on_connect
        self._stop = stop or threading.Event()
        self._max_backoff = max_backoff
        self._conn: SocketConnection | None = None
        self._conn_timeout = timeout
        self.connects = 0

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def last_calls(self, seconds: float) -> None:
        """Switch to a few bounded calls after the process was asked to stop (a draining worker).

        Calls retry again despite the stop flag, but each waits at most
        ``seconds`` and the session gives up after ``seconds`` without a
        working connection: the master may be gone.
        """
        self.give_up = seconds
        self.timeout = min(self.timeout, seconds)
        self._stop = threading.Event()

    def _raw_call(self, method: str, args: tuple[Any, ...], timeout: float) -> Any:
        conn = self._conn
        assert conn is not None
        if timeout != self._conn_timeout:
            conn.settimeout(timeout)
            self._conn_timeout = timeout
        conn.send((BOARD_IDENT, method, args, {}))
        kind, result = conn.recv()
        if kind == "#RETURN":
            return result
        if kind == "#ERROR" and isinstance(result, TaskfleetError):
            raise result
        # The stock server's own refusals (an unknown method, an unpicklable reply):
        # the reason is in the reply, and the master logged nothing more.
        raise RemoteError(
            f"the master failed on {method}: {_short(Exception(result))}",
            "run the same taskfleet version on the master and here",
        )

    def call_once(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Call on the current connection (used by on_connect hooks); no retry. Without
        ``timeout`` it waits what is left of the connection attempt (``deadline`` is the
        attempt's, which the session set)."""
        del deadline
        return self._raw_call(method, args, timeout or self._conn_timeout)

    @property
    def once(self) -> _NoRetry:
        """This session as a caller that never retries (for ``BoardStub`` in on_connect hooks)."""
        return _NoRetry(self)

    def _connect(self, limit: float | None) -> None:
        """Dial and say hello, both within ``limit`` (a monotonic time) when given."""
        timeout = self._left(self.timeout, limit)
        self._conn = dial(self.address, self._authkey, timeout, self._name, self.tls)
        self._conn_timeout = timeout
        self.connects += 1
        if self._on_connect is not None:
            self._on_connect(self)

    @staticmethod
    def _left(timeout: float, limit: float | None) -> float:
        """``timeout``, cut to what is left before ``limit`` (never 0: that means "no limit"
        to the kernel)."""
        if limit is None:
            return timeout
        return max(0.001, min(timeout, limit - time.monotonic()))

    def _limit(self, failing_since: float | None, deadline: float | None) -> float | None:
        """When to give up: the caller's deadline, or ``give_up`` after the connection
        stopped working (or, before the first answer, after the call began)."""
        limits = [] if deadline is None else [deadline]
        if failing_since is not None and self.give_up is not None:
            limits.append(failing_since + self.give_up)
        return min(limits) if limits else None

    def _gave_up(self, deadline: float | None, limit: float, reason: str) -> Exception:
        if deadline is not None and limit == deadline:
            why = "" if reason == "no answer in time" else f" ({reason})"
            return TimeoutError(f"no answer from the master at {self.where} in time{why}")
        if self.connects == 0:
            what = (
                f"cannot reach the master at {self.where} within the connect timeout"
                f" ({self.give_up:g}s): {reason}"
            )
        else:
            what = (
                f"lost the master at {self.where}; it did not answer again within"
                f" {self.give_up:g}s ({reason})"
            )
        return MasterUnreachable(
            what, "check that the master runs there, the address and port, and the firewall"
        )

    def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Call a board method, reconnecting as needed. See the class docstring.

        ``timeout`` bounds one attempt (default: the session's); ``deadline`` (a
        ``time.monotonic()`` value) the whole call: past it, TimeoutError. Raises
        MasterUnreachable after ``give_up`` seconds without an answer, Stopping.
        """
        call_timeout = timeout or self.timeout
        # Not connected yet: the master must answer within give_up from now on.
        failing_since: float | None = None if self._conn is not None else time.monotonic()
        delay = 0.5
        reason = "no answer in time"
        failed = False
        while True:
            if self._stop.is_set() and self._conn is None:
                raise Stopping()
            limit = self._limit(failing_since, deadline)
            if limit is not None and limit - time.monotonic() < 0.01:
                raise self._gave_up(deadline, limit, reason)
            try:
                if self._conn is None:
                    self._connect(limit)
                result = self._raw_call(method, args, self._left(call_timeout, limit))
                if failed and self._log is not None:
                    self._log.info("the master at %s answers again", self.where)
                return result
            except _TRANSPORT_ERRORS as exc:
                was_connected = self._conn is not None
                failed = True
                self.close()
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                reason = _describe(exc)
                limit = self._limit(failing_since, deadline)
                if limit is not None and limit - now < 0.05:
                    raise self._gave_up(deadline, limit, reason) from None
                if self._log is not None:
                    if was_connected:
                        self._log.warning(
                            "lost the master at %s during %s (%s); reconnecting",
                            self.where,
                            method,
                            reason,
                        )
                        delay = 0.2  # first retry fast: a restarted master is usually back at once
                    else:
                        self._log.warning(
                            "master unreachable at %s (%s), retrying in %gs",
                            self.where,
                            reason,
                            delay,
                        )
                pause = delay if limit is None else min(delay, limit - now)
                if self._stop.wait(pause):
                    raise Stopping() from None
                delay = min(self._max_backoff, max(0.5, delay * 2))
