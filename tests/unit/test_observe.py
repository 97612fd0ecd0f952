"""The sampler behind the HTTP server: totals that only grow, rates, ETAs and history."""

from __future__ import annotations

import logging
from typing import Any

from taskfleet.observe import Observer


class FakeMaster:
    """A status source and a clock driven by the test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.jobs: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, int] = {}

    def job(self, job_id: str, done: int, total: int = 10_000, dups: int = 0) -> None:
        self.jobs[job_id] = {
            "id": job_id,
            "items_done": done,
            "items_total": total,
            "duplicates": dups,
            "state": "running" if done < total else "done",
        }

    def status(self) -> Any:
        return {
            "master": {},
            "workers": [
                {"name": n, "host": "h", "items_done": d, "last_heartbeat_age_s": 0}
                for n, d in self.workers.items()
            ],
            "lost_workers": [],
            "jobs": list(self.jobs.values()),
        }


def observer(m: FakeMaster) -> Observer:
    return Observer(
        m.status,
        logging.getLogger("test"),
        clock=lambda: m.now,
        wall=lambda: 1_000_000 + m.now,
        rate_window=5,
    )


def test_jobs_resumed_from_the_journal_are_not_counted_as_done_since_the_start() -> None:
    m = FakeMaster()
    m.job("old", 5000)
    obs = observer(m)
    assert obs.sample().items_done_total == 0
    m.now += 1
    m.job("old", 5600)
    assert obs.sample().items_done_total == 600


def test_a_job_that_appears_and_finishes_between_two_samples_is_counted_whole() -> None:
    m = FakeMaster()
    obs = observer(m)
    obs.sample()
    m.now += 1
    m.job("quick", 300, total=300, dups=2)
    snap = obs.sample()
    assert (snap.items_done_total, snap.duplicates_total) == (300, 2)


def test_totals_never_go_down_when_a_job_is_pruned_or_goes_back() -> None:
    m = FakeMaster()
    obs = observer(m)
    obs.sample()
    m.job("a", 1000)
    m.now += 1
    assert obs.sample().items_done_total == 1000
    m.job("a", 900)  # a journal write failed: a chunk runs again
    m.now += 1
    assert obs.sample().items_done_total == 1000
    del m.jobs["a"]  # retention pruned it
    m.now += 1
    assert obs.sample().items_done_total == 1000


def test_rates_eta_and_history_follow_the_counts() -> None:
    m = FakeMaster()
    m.workers = {"w1": 0, "w2": 0}
    m.job("a", 0)
    obs = observer(m)
    obs.sample()
    for _ in range(4):
        m.now += 1
        m.workers["w1"] += 300
        m.workers["w2"] += 100
        m.job("a", m.jobs["a"]["items_done"] + 400)
        snap = obs.sample()
    assert snap.worker_rates == {"w1": 300.0, "w2": 100.0}
    assert snap.job_rates == {"a": 400.0}
    assert snap.eta_s(m.jobs["a"]) == (10_000 - 1600) / 400
    assert [v for _, v in snap.history] == [400.0] * 4
    assert snap.history[-1][0] == 1_000_000 + m.now


def test_a_stalled_job_has_no_eta_and_a_gone_worker_no_rate() -> None:
    m = FakeMaster()
    m.workers = {"w1": 0}
    m.job("a", 100)
    obs = observer(m)
    for _ in range(7):
        m.now += 1
        obs.sample()
    del m.workers["w1"]
    snap = obs.sample()
    assert snap.job_rates == {"a": 0.0} and snap.eta_s(m.jobs["a"]) is None
    assert snap.worker_rates == {}
