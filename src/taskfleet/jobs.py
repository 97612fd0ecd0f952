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
it before sending them (an undeclared class fails the chunk with a message).

Note: ``module:function`` runs any importable function on the workers; that is
no more power than the authkey already grants.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import re
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, TypeVar

from taskfleet import safepickle
from taskfleet.errors import BadJobArguments, UnknownJob

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


def _numbers_only(items: Sequence[Any]) -> None:
    for pos, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise BadJobArguments(
                f"squares: item {pos + 1} ({item!r}) is not a number",
                "give squares integers, one per line in the items file",
            )


_VALIDATORS: dict[str, Callable[[Sequence[Any]], None]] = {"squares": _numbers_only}


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))


def available() -> list[str]:
    return sorted(_BUILTIN) + entry_point_names()


def _unknown(name: str, why: str) -> UnknownJob:
    return UnknownJob(
        f"unknown job {name!r}{why}",
        f"use one of: {', '.join(available())}, or package.module:function",
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


def validate(name: str, items: Sequence[Any] | None) -> None:
    """Check a submission: the name resolves and the items suit the job."""
    resolve(name)
    check = _VALIDATORS.get(name)
    if check is not None and items is not None:
        check(items)


def run_chunk(name: str, payload: tuple[Any, ...]) -> bytes:
    """Run one chunk in a pool process; return the pickled result list.

    Results stay pickled from here to the client: the master stores the bytes
    in its journal and never unpickles them. The first chunk of each job in
    each pool process is decoded here with the client's allowlist, so a job
    that returns an undeclared class fails at once with BadJobArguments and a
    message, instead of on the client (which refuses it whenever it comes);
    checking every chunk would cost ~20 % of a trivial job like squares.
    """
    fn = resolve(name)
    data: Sequence[Any] = range(payload[1], payload[2]) if payload[0] == "range" else payload[1]
    blob = pickle.dumps(list(map(fn, data)), protocol=pickle.HIGHEST_PROTOCOL)
    if name in _checked:
        return blob
    try:
        safepickle.loads(blob, _allowlist(name))
    except safepickle.UnsafePickle as exc:
        raise BadJobArguments(
            f"job {name!r} returned a {exc.name}, which it does not declare",
            f"declare it: @taskfleet.jobs.result_types({exc.name.split(':')[-1]}) on the job"
            " function (docs/security.md, results)",
        ) from None
    _checked.add(name)
    return blob


# Job names whose results this process has checked once (see run_chunk).
_checked: set[str] = set()


@functools.lru_cache(maxsize=64)
def _allowlist(name: str) -> frozenset[safepickle.Global]:
    return safepickle.results_allowlist(declared_result_types(name))
