"""The wire: a multiprocessing.managers server in the master's own process,
and a client connection that we own (timeouts, reconnect, backoff).

Server side (:class:`TaskfleetServer`, a ``managers.Server``):
  * runs in-process on threads, so registered callables are plain bound
    methods and are never pickled;
  * sets TCP_NODELAY on every accepted socket (Nagle + delayed ACK cost
    40-90 ms per message otherwise) and TCP keepalive (half-open peers die);
  * bounds the handshake: a receive/send timeout until the peer has proved
    the key and sent its first request, and a cap on concurrent
    unauthenticated connections (extra ones are closed at once);
  * logs refused peers by address and sends them nothing — the stock server
    answers a failed handshake with a pickled traceback;
  * does not expose ``shutdown``/``debug_info`` to remote peers.

Client side (:class:`Session`): speaks the manager protocol directly on a
socket we create — ``answer_challenge``/``deliver_challenge``, then
``accept_connection`` and ``(ident, method, args, kwargs)`` requests — so no
``BaseProxy`` state is cached per address (CPython #86320) and no proxy
finalizer can hang at exit. Every read and write has a kernel timeout
(SO_RCVTIMEO/SO_SNDTIMEO): a hung (SIGSTOP'd) master is detected, the
connection is dropped and re-dialled with backoff. Calls are never
interrupted by signals; every board method is safe to retry. Every wait is
bounded by what is left of the caller's time: the connect timeout (``give_up``)
bounds connecting, the handshake and the first answer together, and a call's
``deadline`` bounds the call with its reconnects, so a timeout is honoured
within a fraction of a second of its value.

Stock ``BaseManager`` clients still work: register ``get_board`` on a
``BaseManager`` subclass (see :class:`BoardManager`) and ``connect()``.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError, managers
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection
from typing import Any

from taskfleet import defaults
from taskfleet.address import format_hostport
from taskfleet.errors import (
    AuthkeyRejected,
    MasterUnreachable,
    RemoteError,
    Stopping,
    TaskfleetError,
)
from taskfleet.protocol import BOARD_IDENT, BOARD_TYPEID

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

_TRANSPORT_ERRORS = (OSError, EOFError, ConnectionError, struct.error, ValueError)


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-level read/write timeouts on a *blocking* socket (0 = none).

    multiprocessing's Connection reads with os.read on the raw fd, so a Python
    socket timeout would be bypassed; SO_RCVTIMEO makes that read fail with
    EAGAIN instead of blocking forever.
    """
    sec = int(seconds)
    usec = int((seconds - sec) * 1_000_000)
    tv = struct.pack("ll", sec, usec)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def _fd_timeouts(fd: int, seconds: float) -> None:
    tmp = socket.socket(fileno=fd)
    try:
        _set_timeouts(tmp, seconds)
    finally:
        tmp.detach()  # the Connection owns the fd


class BoardManager(managers.BaseManager):
    """For stock-multiprocessing clients: ``BoardManager(addr, authkey).connect()``."""


BoardManager.register(BOARD_TYPEID)


class TaskfleetServer(managers.Server):
    """A manager server with bounded, logged handshakes. See the module docstring."""

    def __init__(
        self,
        board_factory: Callable[[], object],
        exposed: tuple[str, ...],
        address: tuple[str, int],
        authkey: bytes,
        log: logging.Logger,
        handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT,
        max_unauthenticated: int = defaults.MAX_UNAUTHENTICATED,
    ) -> None:
        # The callable is a bound method run in this process: never pickled.
        registry: dict[str, Any] = {BOARD_TYPEID: (board_factory, exposed, None, None)}
        super().__init__(registry, address, authkey, "pickle")
        self._board_factory = board_factory
        self._exposed = exposed
        self.public = list(_PUBLIC)
        self.stop_event = threading.Event()  # stock code makes it in serve_forever()
        self._log = log
        self._handshake_timeout = handshake_timeout
        self._unauth = threading.BoundedSemaphore(max_unauthenticated)
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

    def start(self) -> None:
        """Publish the board under its fixed identity and start accepting."""
        stock: Any = self
        stock.id_to_obj[BOARD_IDENT] = (self._board_factory(), set(self._exposed), None)
        stock.id_to_refcount[BOARD_IDENT] = 1  # never released
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
        with self._conns_lock:
            for conn in self._conns:
                if not conn.closed:  # the stock serving loop may have closed it
                    _shutdown_fd(conn.fileno())
            self._conns.clear()

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
            peer = format_hostport(str(addr[0]), int(addr[1]))
            if not self._unauth.acquire(blocking=False):
                self._log.warning("refused %s: too many unauthenticated connections", peer)
                sock.close()
                continue
            try:
                sock.setblocking(True)
                _tune(sock)
                _set_timeouts(sock, self._handshake_timeout)
                conn = Connection(sock.detach())
            except OSError:
                sock.close()
                self._unauth.release()
                continue
            threading.Thread(
                target=self._serve, args=(conn, peer), name=f"conn {peer}", daemon=True
            ).start()

    def _serve(self, conn: Connection, peer: str) -> None:
        with self._conns_lock:
            if self.stop_event.is_set():
                conn.close()
                return
            self._conns.add(conn)
        try:
            try:
                mpc.deliver_challenge(conn, self._key)
                mpc.answer_challenge(conn, self._key)
                request = conn.recv()
                _, funcname, args, kwds = request
            except AuthenticationError:
                self._log.warning("refused %s: wrong authkey", peer)
                return
            except Exception as exc:  # garbage, timeout, half-open: drop it quietly
                self._log.warning("refused %s: no valid handshake (%s)", peer, _short(exc))
                return
            finally:
                self._unauth.release()
            _fd_timeouts(conn.fileno(), 0)  # authenticated: calls may long-poll
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
            with self._conns_lock:
                self._conns.discard(conn)
                conn.close()


def _shutdown_fd(fd: int) -> None:
    """Shut a connection's socket down in both directions; the owner still closes it."""
    if fd < 0:
        return
    tmp = socket.socket(fileno=fd)
    try:
        tmp.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        tmp.detach()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text[:200]


def _describe(exc: BaseException) -> str:
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


def dial(address: tuple[str, int], authkey: bytes, timeout: float, name: str) -> Connection:
    """Connect, authenticate both ways, and open a serving connection.

    Raises AuthkeyRejected or a transport error (OSError/EOFError).
    """
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.settimeout(None)
        _tune(sock)
        _set_timeouts(sock, timeout)
        conn = Connection(sock.detach())
    except OSError:
        sock.close()
        raise
    try:
        try:
            mpc.answer_challenge(conn, authkey)
            mpc.deliver_challenge(conn, authkey)
        except AuthenticationError:
            raise AuthkeyRejected(
                f"the master at {format_hostport(*address)} refused our authkey",
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
    except BaseException:
        conn.close()
        raise
    return conn


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
    ) -> None:
        self.address = address
        self.where = format_hostport(*address)
        self._authkey = authkey
        self._name = name
        self.timeout = timeout
        self.give_up = give_up
        self._log = log
        self._on_connect = on_connect
        self._stop = stop or threading.Event()
        self._max_backoff = max_backoff
        self._conn: Connection | None = None
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
            _fd_timeouts(conn.fileno(), timeout)
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
        self._conn = dial(self.address, self._authkey, self._left(self.timeout, limit), self._name)
        self._conn_timeout = self._left(self.timeout, limit)
        _fd_timeouts(self._conn.fileno(), self._conn_timeout)
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
