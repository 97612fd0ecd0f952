"""The master's board service, called directly (no network): what it refuses before
anything is journaled, and how an upload of items goes."""

from __future__ import annotations

import logging
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet import defaults
from taskfleet.board import Board
from taskfleet.errors import BadJobArguments, JobNotFound
from taskfleet.journal import Journal
from taskfleet.master import BoardService, _pickled_chunks


@pytest.fixture
def service(tmp_path: Path) -> Iterator[BoardService]:
    s = BoardService(
        Board(10.0), Journal(str(tmp_path / "j.db")), logging.getLogger("test"), "here:1"
    )
    yield s
    s.close()


def refused(call: object, *args: object) -> str:
    with pytest.raises(BadJobArguments) as err:
        call(*args)  # type: ignore[operator]
    return str(err.value)


def test_range_bounds_the_journal_cannot_store_are_refused(service: BoardService) -> None:
    assert refused(service.submit, "j1", "squares", 10, 0, 2**63) == (
        "the range's stop 9223372036854775808 does not fit the journal"
        " — keep range bounds within ±9,223,372,036,854,775,807 (64-bit integers)"
    )
    assert refused(service.submit, "j1", "squares", True, 0, 10).startswith("bad chunk size True")
    assert refused(service.submit, "j1", "squares", 10, 0, 10.5).startswith("bad range (0, 10.5,")
    assert service.journal.jobs() == [], "nothing journaled"


def test_a_submit_call_takes_a_short_list_only(service: BoardService) -> None:
    most = defaults.UPLOAD_BATCH_ITEMS
    assert refused(service.submit, "j1", "squares", 10, 0, 0, list(range(most + 1))) == (
        f"{most + 1:,} items in one submit call; at most {most:,} fit in one"
        " — send longer lists with open/append/seal (taskfleet.Client does)"
    )
    assert refused(service.submit, "j1", "squares", 10, 0, 0, "123").startswith(
        "items must be a list, not str"
    )
    assert service.journal.jobs() == []


def test_a_chunk_whose_items_are_too_large_to_store_is_refused() -> None:
    with pytest.raises(BadJobArguments) as err:
        _pickled_chunks(["x", "y" * defaults.MAX_CHUNK_BYTES], 1, 7)
    assert str(err.value) == (
        "chunk 8's items take 64 MB pickled; a chunk may take at most 64 MB"
        " — use a smaller --chunk-size (or smaller items)"
    )


def test_upload_batches_out_of_order_or_miscounted_are_refused(service: BoardService) -> None:
    service.open("u1", "squares", 2, None)
    assert refused(service.append, "u1", 1, [1, 2]) == (
        "batch 1 of job u1 arrives before batch 0 — send the batches in order, from 0"
    )
    assert service.append("u1", 0, [1, 2, 3, 4])["n_items"] == 4, "the upload goes on"
    assert refused(service.seal, "u1", 5) == (
        "job u1: the master received 4 items, the client sent 5 — submit the job again"
    )
    assert refused(service.append, "u1", 1, []) == (
        "batch 1 of job u1 holds no items — send a list of items"
    )
    with pytest.raises(JobNotFound):  # a refused batch drops the upload
        service.seal("u1", 4)
    service.open("u2", "squares", 2, None)
    assert refused(service.seal, "u2", 0) == (
        "no items to process — put one item per line in the items file"
    )
    assert service.journal.jobs() == []


def test_cancelling_an_upload_drops_it_with_what_it_stored(service: BoardService) -> None:
    service.open("u1", "squares", 2, None)
    service.append("u1", 0, [1, 2])
    view = service.cancel("u1")
    assert (view["state"], view["items_total"]) == ("cancelled", 2)
    assert service.journal.jobs() == [] and service.journal.chunk_items("u1", [0]) == {}


def test_a_chunk_whose_stored_items_are_gone_fails_its_job_with_the_reason(
    service: BoardService, tmp_path: Path
) -> None:
    service.submit("j1", "squares", 2, 0, 0, [1, 2, 3])
    with sqlite3.connect(tmp_path / "j.db") as conn:
        conn.execute("DELETE FROM chunk_items WHERE chunk = 1")
    conn.close()
    leases = service.lease("w1", 5)
    assert leases == [], "no chunk of a job that fails goes out"
    view = service.job("j1")[1]
    assert view["state"] == "failed"
    assert view["error"] == "the journal has no items for its chunk 1"
    assert service.journal.jobs()[0].error == "the journal has no items for its chunk 1"


def test_leases_carry_a_chunks_items_as_stored(service: BoardService) -> None:
    service.submit("j1", "squares", 2, 0, 0, [1, 2, 3])
    leases = service.lease("w1", 5)
    assert [(c, p[0], pickle.loads(p[1])) for _, c, _, p, *_ in leases] == [
        (0, "pickled", [1, 2]),
        (1, "pickled", [3]),
    ]
