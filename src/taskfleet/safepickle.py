"""Decoding what comes off the wire without running a peer's code.

``pickle.loads`` imports and calls whatever a pickle names (``__reduce__`` →
``os.system``): whoever can put bytes on the wire, or a peer that holds the
authkey, runs code in the receiver. Every side of taskfleet therefore decodes
with a restricted unpickler whose ``find_class`` admits only an allowlist of
globals (Python's "Restricting Globals" recipe). Plain data — None, bool, int,
float, str, bytes, tuple, list, dict, set, frozenset — needs no global at all
and decodes at full C speed; the allowlist only ever sees the rare others.

The allowlists:

``WIRE``
    Every message of the manager protocol, on every side: plain data (with
    ``complex`` and ``bytearray``, which need a global in pickle protocol 4)
    plus the :class:`taskfleet.errors.TaskfleetError` classes a master sends in
    ``#ERROR`` replies (and :class:`taskfleet.errors.ItemError`, the record a
    failed item leaves). The master decodes requests with it, workers decode
    leases with it, clients decode replies with it. Job items travel in these
    messages, so items are plain data (``docs/interfaces.md``).

``results_allowlist(declared)``
    A chunk's result blob, decoded by the client (the master stores blobs
    unread): plain data and ItemError (``RESULTS``) plus the globals the job declares with
    :func:`taskfleet.jobs.result_types`. The master resolves the job name at
    submit and tells the client what the job declares; a worker checks its own
    results against the same list before sending them, so an undeclared type
    fails its item on the worker with a message instead of on the client.

A global is named ``"module:qualname"`` (``"decimal:Decimal"``).
"""

from __future__ import annotations

import functools
import io
import pickle
from collections.abc import Iterable
from typing import Any, Final

from taskfleet import errors

Global = tuple[str, str]
"""(module, qualified name) as pickle's ``find_class`` receives them."""

# Plain data that pickle protocol 4 (the manager protocol's default before
# Python 3.14) encodes with a global; calling these with any argument runs no
# code of the peer's choosing.
PLAIN: Final[frozenset[Global]] = frozenset(
    {
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


def _error_classes() -> frozenset[Global]:
    found = set()
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, errors.TaskfleetError):
            found.add((value.__module__, value.__qualname__))
    return frozenset(found)


ITEM_ERROR: Final[Global] = (errors.ItemError.__module__, errors.ItemError.__qualname__)
"""A failed item's record (a frozen data class of strings and numbers): it stands in
the item's place among a job's results and rides on JobFailed."""

WIRE: Final[frozenset[Global]] = PLAIN | _error_classes() | {ITEM_ERROR}

RESULTS: Final[frozenset[Global]] = PLAIN | {ITEM_ERROR}
"""A result blob of a job that declares nothing: plain data and failed items' records."""


class UnsafePickle(pickle.UnpicklingError):
    """A pickle names a global outside the allowlist; nothing of it was run.

    ``name`` is the refused global as ``module:qualname``.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"refused to load {name} (not on the allowlist)")
        self.name = name


def parse_global(text: str) -> Global:
    """``"module:qualname"`` → (module, qualname); raise ValueError when malformed."""
    module, sep, qualname = text.partition(":")
    if not sep or not module or not qualname or ":" in qualname:
        raise ValueError(f"{text!r} is not module:qualname")
    return module, qualname


def global_name(value: type | str) -> str:
    """A class → ``"module:qualname"``; a string is checked and returned as is."""
    if isinstance(value, str):
        parse_global(value)
        return value
    return f"{value.__module__}:{value.__qualname__}"


class _Restricted(pickle.Unpickler):
    allowed: frozenset[Global] = frozenset()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise UnsafePickle(f"{module}:{name}")


@functools.lru_cache(maxsize=64)
def _unpickler(allowed: frozenset[Global]) -> type[_Restricted]:
    return type("_Unpickler", (_Restricted,), {"allowed": allowed})


def loads(data: bytes | bytearray | memoryview, allowed: frozenset[Global] = WIRE) -> Any:
    """Decode ``data``, admitting only plain data and the ``allowed`` globals.

    Raises UnsafePickle for any other global (before anything is called) and
    pickle.UnpicklingError/EOFError/ValueError for damaged data.
    """
    return _unpickler(allowed)(io.BytesIO(data)).load()


def results_allowlist(declared: Iterable[str]) -> frozenset[Global]:
    """The allowlist for a job's result blobs: :data:`RESULTS` plus what the job declares."""
    return RESULTS | frozenset(parse_global(name) for name in declared)
