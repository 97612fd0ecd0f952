"""Jobs are called by name, never by pickled code.

A job is a function of one item. Names resolve, in order, to a built-in job
(``squares``), an entry point in the ``taskfleet.jobs`` group, or
``package.module:function``. The master resolves the name at submit time so a
bad name or bad items are refused there, not later in a worker.

Items and results travel as data, decoded by a restricted unpickler
(:mod:`taskfleet.safepickle`): items are plain data (None, bool, int, float,
complex, str, bytes, and tuples/lists/dicts/sets of them). Results may also
hold the classes a job declares with :func:`result_types`::

    from decimal import Decimal
    from taskfleet.jobs import result_types

    @result_types(Decimal)
    def price(n: int) -> Decimal: ...

The master tells clients what a job declares; a client decodes that job's
results with exactly that allowlist, and a worker checks its results against
it before sending them (an undeclared class fails its item, like a result that
cannot be pickled, with a message that says how to declare it).

Note: ``module:function`` runs any importable function on the workers; that is
no more power than the authkey already grants.
"""

from __future__ import annotations

import functools
import importlib
import math
import pickle
import re
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, TypeVar

from taskfleet import __version__, defaults, safepickle
from taskfleet.errors import BadJobArguments, ItemError, UnknownJob
from taskfleet.protocol import FailureKind, ItemFailure

JobFn = Callable[[Any], Any]
F = TypeVar("F", bound=Callable[..., Any])
ENTRY_POINT_GROUP = "taskfleet.jobs"
RESULT_TYPES_ATTR = "taskfleet_result_types"
"""The attribute :func:`result_types` sets on a job function: a tuple of "module:qualname"."""
_MODULE_FUNCTION = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)


def squares(n: int) -> int:
    """The smoke-test job: n*n."""
    return n * n


_BUILTIN: dict[str, JobFn] = {"squares": squares}


def _integers_only(items: Sequence[Any], offset: int) -> None:
    """squares takes integers, of any size: not bools, floats (2.5, nan, inf), strings."""
    for pos, item in enumerate(items):
        if type(item) is int or (isinstance(item, int) and not isinstance(item, bool)):
            continue  # (the first test is the fast path: 100 million items take seconds)
        raise BadJobArguments(
            f"squares: item {offset + pos + 1} ({safe_repr(item, defaults.ERROR_VALUE_CHARS)})"
            f" is a {type(item).__name__}, not an integer",
            "give squares whole numbers, one per line in the items file",
        )


_VALIDATORS: dict[str, Callable[[Sequence[Any], int], None]] = {"squares": _integers_only}


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))


def available() -> list[str]:
    return sorted(_BUILTIN) + entry_point_names()


def _unknown(name: str, why: str) -> UnknownJob:
    return UnknownJob(
        f"unknown job {name!r}{why}",
        f"use one of: {', '.join(available())}, or package.module:function;"
        " your own job package must be in the images (make deploy JOBS=<folder>, docs/jobs.md)",
    )


@functools.lru_cache(maxsize=64)
def resolve(name: str) -> JobFn:
    """Return the function behind a job name; raise UnknownJob."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                fn = ep.load()
            except Exception as exc:  # a broken plugin must not crash the master
                raise _unknown(name, f" (entry point failed to load: {exc})") from None
            if not callable(fn):
                raise _unknown(name, " (entry point is not callable)")
            return fn  # type: ignore[no-any-return]
    if not _MODULE_FUNCTION.match(name):
        raise _unknown(name, "")
    module_name, func_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _unknown(name, f" (cannot import {module_name}: {exc})") from None
    except (Exception, SystemExit) as exc:  # a module that fails (or exits) while importing
        raise _unknown(
            name, f" (importing {module_name} failed: {type(exc).__name__}: {_message(exc)})"
        ) from None
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise _unknown(name, f" ({module_name} has no function {func_name})")
    return fn  # type: ignore[no-any-return]


def result_types(*types: type | str) -> Callable[[F], F]:
    """Declare the classes (or ``"module:qualname"`` globals) a job's results may hold.

    Beyond plain data, a client decodes only what the job declares. A class
    must be importable on the client; declare only classes whose construction
    from pickled state runs no code of the sender's choosing (data classes,
    ``decimal.Decimal``, ``datetime.datetime``, ``fractions.Fraction``). Raises
    ValueError for a malformed name.
    """
    names = tuple(safepickle.global_name(t) for t in types)

    def declare(fn: F) -> F:
        setattr(fn, RESULT_TYPES_ATTR, names)
        return fn

    return declare


def declared_result_types(name: str) -> list[str]:
    """What the job ``name`` declares with :func:`result_types` ([] for plain data only).

    Raises UnknownJob; BadJobArguments when the declaration is malformed.
    """
    declared = getattr(resolve(name), RESULT_TYPES_ATTR, ())
    try:
        return sorted({safepickle.global_name(t) for t in declared})
    except (TypeError, ValueError) as exc:
        raise BadJobArguments(
            f"job {name!r} declares malformed result types ({exc})",
            'declare classes or "module:qualname" strings with taskfleet.jobs.result_types',
        ) from None


def installed_packages() -> dict[str, str]:
    """The job packages installed here: distribution name → version of every distribution
    that adds entry points to the ``taskfleet.jobs`` group (a worker reports them at hello)."""
    found: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            found[ep.dist.name] = ep.dist.version
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=64)
def code_version(name: str) -> str:
    """Which code a job name runs here, ``"<distribution> <version>"``: the entry point's
    distribution, the one that owns a ``module:function``'s top-level package, taskfleet's
    own for a built-in job; "" when no installed distribution owns it (the standard
    library, a module on the path). The master records it with each job at submit.
    """
    if name in _BUILTIN:
        return f"taskfleet {__version__}"
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
    top = name.split(":", 1)[0].split(".", 1)[0]
    owners = metadata.packages_distributions().get(top, [])
    if len(owners) != 1:  # none, or a namespace shared by several: no single version
        return ""
    return f"{owners[0]} {metadata.version(owners[0])}"


def validate(name: str, items: Sequence[Any] | None, offset: int = 0) -> None:
    """Check a submission: the name resolves and the items suit the job.

    ``items`` may be one batch of a longer list, starting at position ``offset``
    (error messages count items from 1 over the whole list). Raises UnknownJob or
    BadJobArguments naming the item and its position.
    """
    resolve(name)
    check = _VALIDATORS.get(name)
    if check is not None and items is not None:
        check(items, offset)


# -- running a chunk (in a pool process) ---------------------------------------------------
#
# A chunk's results travel as one pickled list (the "blob") from the pool
# process to the client; the worker and the master never unpickle it. A failed
# item's place in that list holds an ItemError, so results stay aligned with
# their items. A chunk that had to be run in pieces (a pool process died in it)
# is a pickled ``(SEGMENTS, [blob, blob, ...])`` instead: the worker joins the
# pieces without unpickling them.

SEGMENTS = "taskfleet-segments"
"""Marks a blob made of several pickled lists (see :func:`join_blobs`)."""

PICKLING = -2
"""Progress value while a pool process pickles its results (no item is running)."""


def _truncate(text: str, limit: int, *, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    if tail:  # a traceback's last lines name the failing line
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


def safe_repr(obj: Any, limit: int = defaults.ERROR_ITEM_CHARS) -> str:
    """repr(obj) cut to ``limit`` characters; never raises (a huge int, a broken __repr__).

    An integer too long to show whole is named by its size: converting all of it to
    text could take seconds (and Python refuses past 4,300 digits).
    """
    if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 3 * limit:
        log = math.log10(abs(obj))
        digits = math.floor(log) + 1
        if log - math.floor(log) < 1e-9 and abs(obj) < 10 ** (digits - 1):
            digits -= 1  # just below a power of ten, where log10 rounds up
        sign = "negative " if obj < 0 else ""
        return _truncate(f"<{sign}int of {digits:,} digits>", limit)
    try:
        text = repr(obj)
    except Exception as exc:  # any failure of a user's __repr__
        text = f"<{type(obj).__qualname__} object (repr failed: {type(exc).__name__})>"
    return _truncate(text, limit)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception as inner:  # a user's __str__ may raise anything
        text = f"<str() of the exception failed: {type(inner).__name__}>"
    return _truncate(text.strip(), defaults.ERROR_MESSAGE_CHARS)


def describe(
    exc: BaseException,
    position: int,
    item: Any,
    kind: FailureKind = FailureKind.EXCEPTION,
    *,
    with_traceback: bool = True,
) -> ItemFailure:
    """Format a job function's exception where it happened: only strings leave the process.

    The first traceback frame (this module's loop) is left out: the user's
    function is where the traceback starts.
    """
    text = ""
    if with_traceback:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except Exception:  # formatting must not fail the chunk
            text = f"{_type_name(exc)}: {_message(exc)}\n"
        text = _truncate(text, defaults.ERROR_TRACEBACK_CHARS, tail=True)
    return ItemFailure(position, kind.value, _type_name(exc), _message(exc), safe_repr(item), text)


def placeholder(failure: ItemFailure, worker: str = "", host: str = "") -> ItemError:
    """The ItemError that stands in a failed item's place in the results (no traceback:
    ``Job.errors()`` has those); ``index`` is the position in the chunk until the
    client adds the chunk's offset."""
    return ItemError(
        index=failure.position,
        item=failure.item,
        kind=failure.kind,
        type=failure.type,
        message=failure.message,
        worker=worker,
        host=host,
    )


def chunk_data(payload: tuple[Any, ...]) -> Sequence[Any]:
    """The items of a lease's payload: a range (never expanded) or the list itself.

    A ``("pickled", bytes)`` payload is the list as the master journaled it; the
    master unpickled those items from a client that holds the authkey (the trust
    boundary), and pickled them again; they are decoded as plain data all the same.
    """
    if payload[0] == "range":
        return range(*payload[1:])
    if payload[0] == "pickled":
        return safepickle.loads(payload[1], safepickle.PLAIN)  # type: ignore[no-any-return]
    return payload[1]  # type: ignore[no-any-return]


def pickle_items(items: Sequence[Any]) -> bytes:
    """One chunk's items as the master stores them (see :func:`chunk_data`)."""
    return pickle.dumps(list(items), protocol=pickle.HIGHEST_PROTOCOL)


class ChunkRun:
    """The outcome of running part of a chunk: results, how many failed, the first failures."""

    __slots__ = ("failed", "failures", "host", "results", "worker")

    def __init__(self, worker: str, host: str) -> None:
        self.results: list[Any] = []
        self.failed = 0
        self.failures: list[ItemFailure] = []
        self.worker = worker
        self.host = host

    def fail(self, failure: ItemFailure) -> None:
        self.failed += 1
        if len(self.failures) < defaults.MAX_CHUNK_ERRORS:
            self.failures.append(failure)
        self.results.append(placeholder(failure, self.worker, self.host))

    def detailed(self) -> bool:
        """Whether the next failure still gets a traceback."""
        return len(self.failures) < defaults.MAX_CHUNK_ERRORS

    def blob(self, data: Sequence[Any], lo: int, name: str = "") -> bytes:
        """Pickle the results; a result that cannot be pickled becomes that item's failure,
        and so does (on the first chunk of job ``name`` in this process) a result of a
        class the job does not declare (see :func:`_check_declared`)."""
        try:
            blob = pickle.dumps(self.results, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # find the culprits item by item
            self._mark(data, lo, _unpicklable)
            blob = pickle.dumps(self.results, protocol=pickle.HIGHEST_PROTOCOL)
        if not name or name in _checked:
            return blob
        allowed = _allowlist(name)
        try:
            safepickle.loads(blob, allowed)
        except safepickle.UnsafePickle:
            self._mark(data, lo, functools.partial(_undeclared, name, allowed))
            return pickle.dumps(self.results, protocol=pickle.HIGHEST_PROTOCOL)
        _checked.add(name)  # only once it passed: a retry of a refused chunk is checked again
        return blob

    def _mark(
        self, data: Sequence[Any], lo: int, why: Callable[[Any], tuple[BaseException, str] | None]
    ) -> None:
        """Replace each result ``why`` finds fault with (the exception and the message to
        show) by its item's failure, of kind ``unpicklable``."""
        for k, result in enumerate(self.results):
            if isinstance(result, ItemError):
                continue
            fault = why(result)
            if fault is None:
                continue
            exc, message = fault
            failure = describe(
                exc, lo + k, data[lo + k], FailureKind.UNPICKLABLE, with_traceback=False
            )
            failure = failure._replace(message=_truncate(message, defaults.ERROR_MESSAGE_CHARS))
            self.failed += 1
            if len(self.failures) < defaults.MAX_CHUNK_ERRORS:
                self.failures.append(failure)
            self.results[k] = placeholder(failure, self.worker, self.host)


def _unpicklable(result: Any) -> tuple[BaseException, str] | None:
    try:
        pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # any pickling failure
        return exc, f"its result cannot be pickled: {_message(exc)}"
    return None


def _undeclared(
    name: str, allowed: frozenset[safepickle.Global], result: Any
) -> tuple[BaseException, str] | None:
    try:
        safepickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), allowed)
    except safepickle.UnsafePickle as exc:
        return exc, (
            f"its result holds a {exc.name}, which the job does not declare — declare it"
            f" with @taskfleet.jobs.result_types({exc.name.rpartition(':')[2]}) on the job"
            " function"
        )
    return None


# Job names whose results this process has checked once (ChunkRun.blob): checking
# every chunk would cost ~20 % of a trivial job like squares; a later chunk with an
# undeclared class is still refused by the client, in one line.
_checked: set[str] = set()


@functools.lru_cache(maxsize=64)
def _allowlist(name: str) -> frozenset[safepickle.Global]:
    """What job ``name``'s results may hold (plain data and ItemError when it cannot load)."""
    try:
        return safepickle.results_allowlist(declared_result_types(name))
    except (UnknownJob, BadJobArguments):  # its chunks fail with that message anyway
        return safepickle.RESULTS


def run_segment(
    name: str,
    payload: tuple[Any, ...],
    lo: int,
    hi: int,
    *,
    stop_on_error: bool,
    progress: Any = None,
    slot: int = 0,
    worker: str = "",
    host: str = "",
) -> tuple[bytes, int, list[ItemFailure]]:
    """Run items ``[lo, hi)`` of a chunk (in a pool process); return (blob, failed, failures).

    The fast path maps the function over the items and pays nothing per item;
    an exception is recorded for its item and the map goes on after it (or
    stops, with ``stop_on_error``: a job that fails on its first error needs
    no more). With ``progress`` (a shared ``q`` array; isolation mode) the
    position and start time of each item are written to
    ``progress[2*slot]`` and ``progress[2*slot+1]`` first, so the parent can
    cut an item that hangs and name the item a dead process was running.
    """
    out = ChunkRun(worker, host)
    data = chunk_data(payload)
    try:
        fn = resolve(name)
    except Exception as exc:  # e.g. the job's package is missing on this worker
        for k in range(lo, lo + 1 if stop_on_error else hi):
            out.fail(describe(exc, k, data[k], with_traceback=out.detailed()))
        return pickle.dumps(out.results, protocol=pickle.HIGHEST_PROTOCOL), out.failed, out.failures
    if progress is None:
        _run_fast(fn, data, lo, hi, out, stop_on_error)
    else:
        _run_isolated(fn, data, lo, hi, out, stop_on_error, progress, slot)
        progress[2 * slot] = PICKLING
    return out.blob(data, lo, name), out.failed, out.failures


def _run_fast(
    fn: JobFn, data: Sequence[Any], lo: int, hi: int, out: ChunkRun, stop_on_error: bool
) -> None:
    results = out.results
    pos = lo
    while pos < hi:
        try:
            # list.extend keeps what map produced before an exception.
            results.extend(map(fn, data[pos:hi]))
            return
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: the
            # item failed, the process must go on
            k = lo + len(results)
            out.fail(describe(exc, k, data[k], with_traceback=out.detailed()))
            if stop_on_error:
                return
            pos = k + 1


def _run_isolated(
    fn: JobFn,
    data: Sequence[Any],
    lo: int,
    hi: int,
    out: ChunkRun,
    stop_on_error: bool,
    progress: Any,
    slot: int,
) -> None:
    results = out.results
    clock = time.monotonic_ns
    for k in range(lo, hi):
        item = data[k]
        progress[2 * slot + 1] = clock()
        progress[2 * slot] = k
        try:
            result = fn(item)
        except BaseException as exc:  # see _run_fast
            out.fail(describe(exc, k, item, with_traceback=out.detailed()))
            if stop_on_error:
                return
            continue
        results.append(result)


def join_blobs(parts: Sequence[bytes]) -> bytes:
    """One blob from the pickled lists of a chunk's consecutive pieces, none unpickled."""
    if len(parts) == 1:
        return parts[0]
    return pickle.dumps((SEGMENTS, list(parts)), protocol=pickle.HIGHEST_PROTOCOL)


def decode_results(
    blob: bytes, allowed: frozenset[safepickle.Global] = safepickle.RESULTS
) -> list[Any]:
    """A chunk's result list from its blob (where a client reads results), admitting only
    plain data, ItemError and the ``allowed`` globals (a job's declared result types).

    Raises safepickle.UnsafePickle (nothing of the blob was run), ImportError for a
    declared class that is not importable here, pickle.UnpicklingError for damage.
    """
    obj = safepickle.loads(blob, allowed)
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == SEGMENTS:
        out: list[Any] = []
        for part in obj[1]:
            out.extend(safepickle.loads(part, allowed))
        return out
    return obj  # type: ignore[no-any-return]
