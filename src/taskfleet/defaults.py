"""Every tunable default of the runtime, once, each with the reason for its value.

The CLI, the master, the worker, the client and the Ansible role defaults all
read these; ``tests/unit/test_defaults.py`` checks that the role defaults in
``deploy/roles/*/defaults/main.yml`` still equal them. Change a value here and
in the role defaults together.
"""

from __future__ import annotations

from typing import Final

# -- addresses ----------------------------------------------------------------------

MASTER_PORT: Final = 7451
"""TCP port of the master's manager (``--port``; role variable ``taskfleet_master_port``)."""

MASTER_BIND: Final = "127.0.0.1"
"""Address a bare ``taskfleet master`` listens on: loopback, never every interface by accident."""

HTTP_PORT: Final = 7452
"""TCP port of the master's read-only HTTP server (``master --http HOST:PORT``: metrics,
health, status and the dashboard; role variable ``taskfleet_http_port``)."""

# -- jobs ---------------------------------------------------------------------------

CHUNK_SIZE: Final = 1000
"""Items per chunk when the caller does not choose (``submit --chunk-size``)."""

MAX_CHUNK_SIZE: Final = 10_000_000
"""Largest chunk the master accepts: one chunk's items and results travel in one message."""

MAX_JOB_CHUNKS: Final = 10_000_000
"""Most chunks one job may have. The master holds one bit per chunk of every job it knows
(1.25 MB at this limit) and a client reading results in completion order one byte per
chunk; a larger job is refused at submit (with the chunk size that would fit)."""

MAX_CHUNK_BYTES: Final = 64 * 1024 * 1024
"""Largest a chunk's items may be, pickled: the journal stores them as one value per
chunk and a worker receives them in one message (SQLite's own limit is 1 GB)."""

MAX_RANGE_BOUND: Final = 2**63 - 1
"""A range job's start, stop and step are journaled as SQLite integers (64-bit)."""

MAX_INT_DIGITS: Final = 100_000
"""Longest integer an items file may hold, in digits: reading a decimal integer takes
time quadratic in its length (Python limits it to 4,300 digits by default)."""

UPLOAD_BATCH_ITEMS: Final = 50_000
"""Items a client sends per call while it uploads a job's items (whole chunks; at least
one chunk): what the client and the master hold of an upload at a time."""

UPLOAD_FLUSH: Final = 30.0
"""Seconds a client collects items before it sends what it has (whole chunks), so a slow
item source still shows the master that its upload is alive."""

UPLOAD_IDLE_TIMEOUT: Final = 3600.0
"""Seconds the master keeps an upload (a job whose items are still arriving) after its
client sent the last batch; then the job is dropped (its client is gone)."""

# -- failures -------------------------------------------------------------------------

RETRIES: Final = 2
"""Times a failed chunk runs again (on another worker when one is connected) before the
job's ``on_error`` applies (``submit --retries``, ``Client.submit(retries=)``)."""

MAX_RETRIES: Final = 100
"""Most retries a job may ask for: each one re-runs a whole chunk."""

ON_ERROR: Final = "fail"
"""``--on-error``: a chunk that still fails after its retries fails the job ("skip":
its failed items are recorded and the job goes on)."""

MAX_CHUNK_ERRORS: Final = 5
"""Failed items per chunk a worker describes in full (traceback included); the others
are counted and marked in the results."""

MAX_JOB_ERRORS: Final = 1000
"""Failure records the journal keeps per job, so a job that fails on every item
cannot fill the disk with tracebacks; later failures are still counted."""

ERROR_MESSAGE_CHARS: Final = 1000
ERROR_ITEM_CHARS: Final = 200
ERROR_TRACEBACK_CHARS: Final = 8000
"""Bounds of one failure record: the exception's message, the item's repr and the
formatted traceback (its last lines are kept: they name the failing line)."""

# -- leases and heartbeats ------------------------------------------------------------

LEASE_TIMEOUT: Final = 30.0
"""Seconds a worker may stay silent before its leases go back to pending
(``master --lease-timeout``; role variable ``taskfleet_master_lease_timeout``)."""

HEARTBEATS_PER_LEASE: Final = 5
"""Workers heartbeat this many times per lease timeout, so a few lost heartbeats
never cost a lease."""

HEARTBEAT_MIN_INTERVAL: Final = 0.2
HEARTBEAT_MAX_INTERVAL: Final = 5.0
"""Bounds of the heartbeat interval: not busier than 5/s with tiny lease
timeouts (tests), not rarer than every 5 s with long ones."""


def heartbeat_interval(lease_timeout: float) -> float:
    """How often workers heartbeat for a given lease timeout (the master tells them at hello)."""
    return min(
        HEARTBEAT_MAX_INTERVAL, max(HEARTBEAT_MIN_INTERVAL, lease_timeout / HEARTBEATS_PER_LEASE)
    )


HEARTBEAT_MAX_AGE: Final = 30.0
"""``healthcheck worker --max-age``: a heartbeat file older than this marks the worker
unhealthy. Must exceed ``HEARTBEAT_MAX_INTERVAL`` by several intervals
(role variable ``taskfleet_workers_heartbeat_max_age``)."""

# -- retention --------------------------------------------------------------------------

KEEP_JOBS: Final = 1000
"""``master --keep-jobs``: finished jobs kept with their results; the oldest beyond this
are pruned (0: no limit; role variable ``taskfleet_master_keep_jobs``)."""

KEEP_FOR: Final = 7 * 86400.0
"""``master --keep-for``: seconds a finished job is kept after it finished (a week: results
outlive a weekend; 0: no limit; role variable ``taskfleet_master_keep_for``, "7d")."""

PRUNE_BATCH_ROWS: Final = 500
"""Result rows deleted per journal transaction while pruning, so a pruned 100M-item job
never holds the journal's write lock for more than a few milliseconds at a time."""

VACUUM_PAGES: Final = 256
"""Free journal pages (4 KiB each) returned to the file system per housekeeping tick."""

STATUS_FINISHED_JOBS: Final = 20
"""Finished jobs ``status`` lists after the pending and running ones (``jobs`` lists more)."""

MAX_WORKER_JOB_PACKAGES: Final = 100
"""Job packages a worker's hello may report (status lists them for every worker)."""

JOBS_LIMIT: Final = 50
"""Jobs ``taskfleet jobs`` and ``Client.jobs()`` list by default, newest first."""

MAX_JOBS_LIMIT: Final = 10_000
"""Most jobs one ``jobs`` call returns."""

# -- the wire -------------------------------------------------------------------------

HANDSHAKE_TIMEOUT: Final = 5.0
"""Seconds a new connection has for its *whole* handshake (TLS, the authkey and its
first request); a deadline, not a per-read timeout, so a peer that trickles one
byte at a time is cut at the same moment as a silent one."""

TLS_SNIFF_TIMEOUT: Final = 2.0
"""A TLS master waits this long for a peer's TLS hello. A TLS client sends it at
once; a plaintext taskfleet peer sends nothing (it waits for the challenge), so
after this it is told that the master requires TLS and is closed."""

TLS_FILES_SETTLE: Final = 3.0
"""Seconds a TLS key that does not match its certificate is read again before that is an
error: ``make rotate-tls`` replaces a host's certificate and key one after the other, and
a worker or client starting in between must get the pair, not an error."""

MAX_UNAUTHENTICATED: Final = 128
"""Concurrent connections still in the handshake, from all sources; extra ones are
closed at once."""

MAX_UNAUTHENTICATED_PER_SOURCE: Final = 16
"""Concurrent connections in the handshake from one source address: one host
cannot take the slots of the others. A worker host restarting 8 worker
containers makes 16 at once (each has a heartbeat connection too)."""

REFUSAL_LOG_INTERVAL: Final = 10.0
"""The master logs refused peers once per source address per this many seconds,
with counts: a flood of bad handshakes cannot flood the log."""

FETCH_MAX_ITEMS: Final = 200_000
"""Items per result fetch (whole chunks, at least one): bounds a reader's memory."""

FETCH_WAIT: Final = 1.0
"""Seconds a client's result fetch long-polls the master when nothing is new."""

MAX_FETCH_WAIT: Final = 5.0
"""Upper bound the master puts on any long-poll (fetch, lease), so calls stay short."""

WORKER_CALL_TIMEOUT: Final = 15.0
"""Seconds a worker waits for one answer before it drops the connection and re-dials."""

CLIENT_CALL_TIMEOUT: Final = 30.0
"""Seconds a client waits for one answer (a submit of many items takes longer: see client)."""

CONNECT_TIMEOUT: Final = 10.0
"""``--connect-timeout``: a client gives up when the master does not answer this long
(connecting, the handshake and the first call together)."""

DEADLINE_GRACE: Final = 0.5
"""Seconds a call may run past a caller's deadline (``--timeout``): a long-poll that ends
at the deadline still gets its answer, and the timeout is honoured within a second."""

HEALTHCHECK_CONNECT_TIMEOUT: Final = 5.0
"""``healthcheck master --connect-timeout``: below Docker's health-check timeout."""

RECONNECT_FOR: Final = 120.0
"""Seconds a connected client waits for a lost master to come back (a restart)."""

MAX_BACKOFF: Final = 10.0
"""Longest pause between two re-dials of an unreachable master."""

# -- the worker -------------------------------------------------------------------------

DRAIN_SECONDS: Final = 6.0
"""On SIGTERM a worker finishes what it holds for this long, then gives the rest back;
with the final calls it stays well within Docker's 10 s stop timeout."""

MAX_RESULT_BATCH: Final = 64
"""Finished chunks a worker sends in one exchange."""

PREFETCH_PER_PROCESS: Final = 2
"""Chunks a worker keeps in hand per pool process, so the next one is queued while
results travel."""

# -- clients -------------------------------------------------------------------------------

PROGRESS_INTERVAL: Final = 0.5
"""Seconds between two updates of ``submit``'s progress line (a terminal only)."""

# -- the smoke job -----------------------------------------------------------------------

SMOKE_TIMEOUT: Final = 300.0
"""``smoke --timeout``: the whole smoke run, waiting for workers included."""

# -- health ------------------------------------------------------------------------------

LOST_WORKER_WINDOW: Final = 600.0
"""Seconds a worker that went silent (no goodbye) stays a problem in the verdict, unless it
comes back: long enough for an operator or an alert to see it, short enough that a worker
removed for good stops counting as trouble."""

MAX_LOST_WORKERS: Final = 256
"""Silent workers the master remembers for the verdict (the oldest are forgotten first)."""

JOURNAL_DISK_MIN_FREE: Final = 0.05
"""The journal's file system counts as nearly full below this fraction of free space."""

TLS_MIN_DAYS: Final = 14.0
"""A certificate that expires within this many days is a problem in the verdict."""

# -- the HTTP server ---------------------------------------------------------------------

HTTP_THREADS: Final = 4
"""Threads that answer HTTP requests; a request is answered from a snapshot, so a few
threads serve many scrapers and dashboards."""

HTTP_MAX_CONNECTIONS: Final = 64
"""Open HTTP connections (reading a request or waiting for a thread); more are closed at once."""

HTTP_REQUEST_DEADLINE: Final = 5.0
"""Seconds a client has to send its whole request head, however slowly it trickles."""

HTTP_WRITE_TIMEOUT: Final = 10.0
"""Seconds a client has to take the whole response."""

HTTP_MAX_REQUEST_BYTES: Final = 8192
"""Largest request head (request line and headers); there is never a body."""

SAMPLE_INTERVAL: Final = 1.0
"""Seconds between two samples of the board for the HTTP server (rates, history)."""

HISTORY_SECONDS: Final = 900.0
"""Seconds of throughput history the dashboard can chart."""

RATE_WINDOW: Final = 5.0
"""Seconds over which items/s of a worker or a job are averaged."""
# -- error lines ---------------------------------------------------------------------------

MAX_ERROR_LINE: Final = 500
"""Longest error line the command line prints (``taskfleet: error: …`` included): the
*what* is cut in its middle, the *what to do* kept. Room for a job's first failure with
its fix and where it happened (~320 characters), never a 5 KB echo of an item."""

ERROR_VALUE_CHARS: Final = 60
"""Longest repr of a value quoted in a one-line error (an item refused at submit)."""
