"""A handshake nobody can starve: the master's guards before a peer is authenticated.

Three small parts, used by :class:`taskfleet.manager.TaskfleetServer`:

:class:`HandshakeGate`
    caps connections still in the handshake, overall and per source address,
    so one host (64 idle sockets, or 64 that trickle a byte every few seconds)
    cannot take the slots every other worker and client need.
:class:`Deadlines`
    one thread that cuts a connection whose *whole* handshake (TLS, authkey,
    first request) outlives its deadline. A per-read timeout is not enough: a
    peer sending one byte just before each timeout keeps a slot for minutes.
:class:`RefusalLog`
    refused peers, rate-limited: the first refusal of a source is logged at
    once with its reason; further ones within the interval are counted and
    summed up in one line per source per interval. A flood cannot rotate the
    real log lines away.
"""

from __future__ import annotations

import heapq
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from taskfleet import defaults


class HandshakeGate:
    """Counts unauthenticated connections; thread-safe.

    ``admit(source)`` returns None when a connection from ``source`` may start
    its handshake (the caller must ``release(source)`` when it ends), or the
    reason it may not.
    """

    def __init__(
        self,
        total: int = defaults.MAX_UNAUTHENTICATED,
        per_source: int = defaults.MAX_UNAUTHENTICATED_PER_SOURCE,
    ) -> None:
        self.total = total
        self.per_source = per_source
        self._lock = threading.Lock()
        self._by_source: Counter[str] = Counter()
        self._count = 0

    def admit(self, source: str) -> str | None:
        with self._lock:
            if self._by_source[source] >= self.per_source:
                return f"too many unauthenticated connections from this address ({self.per_source})"
            if self._count >= self.total:
                return f"too many unauthenticated connections ({self.total})"
            self._by_source[source] += 1
            self._count += 1
            return None

    def release(self, source: str) -> None:
        with self._lock:
            self._count -= 1
            self._by_source[source] -= 1
            if self._by_source[source] <= 0:
                del self._by_source[source]

    def pending(self, source: str | None = None) -> int:
        """Connections in the handshake now (from ``source``, or in all)."""
        with self._lock:
            return self._count if source is None else self._by_source.get(source, 0)


def shutdown_fd(fd: int) -> None:
    """Shut a socket down by its descriptor (a thread blocked reading it wakes with EOF);
    the descriptor's owner still closes it."""
    if fd < 0:
        return
    tmp = socket.socket(fileno=fd)
    try:
        tmp.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        tmp.detach()


class Deadlines:
    """Cuts sockets that are still in their handshake at their deadline.

    Lifecycle: ``start()`` once; ``add(fd, deadline)`` when a handshake
    begins; ``remove(token)`` when it ends, always *before* the socket is
    closed (so a cut can never hit a reused descriptor), which tells whether
    it ended in time; ``stop()`` at the end. ``tick`` (if given) is called
    about once a second from the same thread (the refusal log's flush).
    """

    def __init__(self, tick: Callable[[], None] | None = None, period: float = 1.0) -> None:
        self._tick = tick
        self._period = period
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, int] = {}  # token -> fd
        self._next = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="handshake-deadlines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def add(self, fd: int, deadline: float) -> int:
        with self._cond:
            self._next += 1
            token = self._next
            self._live[token] = fd
            heapq.heappush(self._heap, (deadline, token))
            if self._heap[0][1] == token:
                self._cond.notify()
            return token

    def remove(self, token: int) -> bool:
        """Forget a handshake; True if it ended before its deadline (was not cut)."""
        with self._cond:
            return self._live.pop(token, None) is not None

    def _run(self) -> None:
        last_tick = time.monotonic()
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, token = heapq.heappop(self._heap)
                    fd = self._live.pop(token, None)
                    if fd is not None:  # under the lock: the owner has not closed it
                        shutdown_fd(fd)
                wait = self._period
                if self._heap:
                    wait = min(wait, max(0.0, self._heap[0][0] - now))
                self._cond.wait(wait)
            if self._tick is not None and time.monotonic() - last_tick >= self._period:
                last_tick = time.monotonic()
                self._tick()


@dataclass
class _Window:
    start: float
    reasons: Counter[str] = field(default_factory=Counter)


class RefusalLog:
    """Logs refused peers at most once per source address per ``interval`` seconds.

    ``refuse`` logs ``refused HOST:PORT: reason`` for the first refusal of a
    quiet source and counts the rest; ``flush`` (about once a second) logs
    ``refused HOST: N more in the last Ss (reason: n, ...)`` for each source
    whose interval is over. At most ``max_sources`` sources are tracked; the
    rest are summed under ``other sources``. ``total`` counts every refusal.
    """

    OTHERS = "other sources"

    def __init__(
        self,
        log: logging.Logger,
        interval: float = defaults.REFUSAL_LOG_INTERVAL,
        max_sources: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self.interval = interval
        self._max = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self.total = 0

    def refuse(self, source: str, peer: str, reason: str) -> None:
        with self._lock:
            self.total += 1
            window = self._windows.get(source)
            if window is None and len(self._windows) >= self._max:
                source = self.OTHERS
                window = self._windows.get(source)
            if window is not None:
                window.reasons[reason] += 1
                return
            self._windows[source] = _Window(self._clock())
        self._log.warning("refused %s: %s", peer, reason)

    def flush(self) -> None:
        now = self._clock()
        lines = []
        with self._lock:
            for source, window in list(self._windows.items()):
                if now - window.start < self.interval:
                    continue
                if window.reasons:
                    lines.append((source, now - window.start, window.reasons))
                    # Still refusing: a new interval starts, counted from now.
                    self._windows[source] = _Window(now)
                else:
                    del self._windows[source]
        for source, seconds, reasons in lines:
            detail = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common())
            self._log.warning(
                "refused %s: %d more in the last %.0fs (%s)",
                source,
                sum(reasons.values()),
                seconds,
                detail,
            )
