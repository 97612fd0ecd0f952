"""Jobs are called by name, never by pickled code.

A job is a function of one item. Names resolve, in order, to a built-in job
(``squares``), an entry point in the ``taskfleet.jobs`` group, or
``package.module:function``. The master resolves the name at submit time so a
bad name or bad items are refused there, not later in a worker.

Note: ``module:function`` runs any importable function on the workers; that is
no more power than the authkey already grants (the wire is pickle).
"""

from __future__ import annotations

import functools
import importlib
import pickle
import re
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from taskfleet.errors import BadJobArguments, UnknownJob

JobFn = Callable[[Any], Any]
ENTRY_POINT_GROUP = "taskfleet.jobs"
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


def validate(name: str, items: Sequence[Any] | None) -> None:
    """Check a submission: the name resolves and the items suit the job."""
    resolve(name)
    check = _VALIDATORS.get(name)
    if check is not None and items is not None:
        check(items)


def run_chunk(name: str, payload: tuple[Any, ...]) -> bytes:
    """Run one chunk in a pool process; return the pickled result list.

    Results stay pickled from here to the client: the master stores the bytes
    in its journal and never unpickles them.
    """
    fn = resolve(name)
    data: Sequence[Any] = range(payload[1], payload[2]) if payload[0] == "range" else payload[1]
    return pickle.dumps(list(map(fn, data)), protocol=pickle.HIGHEST_PROTOCOL)
