"""Job control with real processes: failures that explain themselves, retries, skip,
item timeouts, crashes, cancel, re-attach, worker deaths, retention, bounded readers."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import taskfleet
from taskfleet import defaults
from taskfleet.errors import ItemError
from taskfleet.journal import Journal
from tests.integration.conftest import Cluster

T = "tests.integration.testjobs"
EXPLODE, HANG, DIE = f"{T}:explode", f"{T}:hang", f"{T}:die"
SLOW = f"{T}:slow_square"


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def job_json(cluster: Cluster, job_id: str) -> dict[str, Any]:
    r = cluster.client("job", job_id, "--json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def connect(cluster: Cluster) -> taskfleet.Client:
    return taskfleet.connect(cluster.address, str(cluster.key))


def run_api_script(cluster: Cluster, script: str, timeout: float) -> dict[str, Any]:
    """Run ``script`` in another Python process (finding the master through the
    environment, as users do); it prints one JSON object."""
    env = dict(
        cluster.env, TASKFLEET_MASTER=cluster.address, TASKFLEET_AUTHKEY_FILE=str(cluster.key)
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


# -- failures that explain themselves ------------------------------------------------------


def test_a_raising_job_fails_naming_item_worker_and_host_and_prints_no_results(
    cluster: Cluster,
) -> None:
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    r = cluster.client("submit", EXPLODE, "--range", "20", "--chunk-size", "5", "--json")
    assert r.returncode == 1
    (summary,) = json_lines(r.stdout)  # no result lines: the job failed
    job_id = summary["job_id"]
    assert (summary["state"], summary["results"], summary["failed"]) == ("failed", 0, 1)
    assert r.stderr.splitlines()[-1] == (
        f"taskfleet: error: job {job_id} failed: ValueError: seven is not allowed"
        f" (item 7: 7; worker w1 on hostA, attempt 3)"
        f" — see the traceback with: taskfleet job {job_id}"
    )
    assert "Traceback" not in r.stderr and "items/s" not in r.stderr  # no terminal, no progress

    view = job_json(cluster, job_id)
    assert view["state"] == "failed" and view["items_failed"] == 1
    attempts = [(e["attempt"], e["final"], e["worker"], e["host"]) for e in view["errors"]]
    assert attempts == [
        (1, False, "w1", "hostA"),
        (2, False, "w1", "hostA"),
        (3, True, "w1", "hostA"),
    ]
    first = view["errors"][0]
    assert (first["index"], first["item"], first["kind"], first["type"]) == (
        7,
        "7",
        "exception",
        "ValueError",
    )
    assert first["traceback"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError("seven is not allowed")' in first["traceback"]
    text = cluster.client("job", job_id).stdout
    assert "item 7 (7) — exception, chunk 1, attempt 3, worker w1 on hostA" in text
    assert '    |     raise ValueError("seven is not allowed")' in text

    with connect(cluster) as client:
        job = client.job(job_id)
        try:
            job.result()
        except taskfleet.JobFailed as exc:
            assert exc.error is not None and exc.error.index == 7 and exc.error.final
            assert "raise ValueError" in exc.error.traceback
        else:
            raise AssertionError("result() of a failed job must raise JobFailed")


def test_partial_prints_the_results_that_came_before_the_failure(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1")
    r = cluster.client(
        "submit", EXPLODE, "--range", "20", "--chunk-size", "5", "--retries", "0", "--partial"
    )
    assert r.returncode == 1
    assert r.stdout.splitlines() == [f"{x}\t{x}" for x in range(5)]
    assert "failed: ValueError: seven is not allowed" in r.stderr.splitlines()[-1]


def test_skip_mode_completes_with_each_failed_item_in_its_place(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    r = cluster.client(
        "submit", EXPLODE, "--range", "20", "--chunk-size", "5", "--on-error", "skip", "--json"
    )
    assert r.returncode == 3, r.stderr
    *chunks, summary = json_lines(r.stdout)
    job_id = summary["job_id"]
    assert (summary["state"], summary["results"], summary["failed"]) == ("done", 19, 1)
    assert chunks[1]["results"] == [5, 6, None, 8, 9]
    assert chunks[1]["errors"] == [
        {
            "index": 7,
            "item": "7",
            "kind": "exception",
            "type": "ValueError",
            "message": "seven is not allowed",
        }
    ]
    assert r.stderr.splitlines()[-1] == (
        f"taskfleet: error: job {job_id}: 1 of 20 items failed"
        f" — taskfleet job {job_id} lists them with their tracebacks"
    )
    with connect(cluster) as client:
        job = client.job(job_id)
        results = job.result()
        assert results[:7] == list(range(7)) and results[8:] == list(range(8, 20))
        failed = results[7]
        assert isinstance(failed, ItemError)
        assert (failed.index, failed.type, failed.worker, failed.host) == (
            7,
            "ValueError",
            "w1",
            "hostA",
        )
        assert job.progress() == taskfleet.Progress(20, 20, 1)
        finals = [e for e in job.errors() if e.final]
        assert [(e.index, e.attempt) for e in finals] == [(7, 3)]


def test_a_hanging_item_is_cut_by_the_item_timeout_and_the_worker_recovers(
    cluster: Cluster,
) -> None:
    cluster.master()
    worker = cluster.worker("w1")
    pool_before = wait_until("the pool process", lambda: children(worker.pid))
    t0 = time.monotonic()
    r = cluster.client(
        "submit",
        HANG,
        "--range",
        "20",
        "--chunk-size",
        "5",
        "--item-timeout",
        "1",
        "--on-error",
        "skip",
        "--retries",
        "0",
        "--json",
    )
    assert r.returncode == 3, r.stderr
    assert time.monotonic() - t0 < 30
    summary = json_lines(r.stdout)[-1]
    assert (summary["results"], summary["failed"]) == (19, 1)
    (error,) = job_json(cluster, summary["job_id"])["errors"]
    assert (error["kind"], error["index"]) == ("timeout", 7)
    assert "item timeout (1s)" in error["message"]
    assert worker.popen.poll() is None, "the worker survived"
    pool_after = children(worker.pid)
    assert len(pool_after) == 1 and pool_after != pool_before, "the hung process was replaced"
    assert cluster.client("smoke", "--count", "2000").returncode == 0


def test_os_exit_in_a_job_is_attributed_to_its_item_and_no_worker_goes_down(
    cluster: Cluster,
) -> None:
    cluster.master()
    workers = [cluster.worker(n, "--host-label", n.replace("w", "host")) for n in ("w1", "w2")]
    r = cluster.client("submit", DIE, "--range", "20", "--chunk-size", "5", "--json")
    assert r.returncode == 1
    job_id = json_lines(r.stdout)[-1]["job_id"]
    view = job_json(cluster, job_id)
    assert view["state"] == "failed"
    assert view["error"].startswith(
        "the pool process died (exited with code 3) while running this item (item 7: 7; worker w"
    )
    assert {(e["kind"], e["index"]) for e in view["errors"]} == {("crash", 7)}
    assert len({e["worker"] for e in view["errors"]}) == 2, "the retry went to the other worker"
    assert all(w.popen.poll() is None for w in workers), "a poisoned item takes no worker down"
    r = cluster.client("smoke", "--count", "4000", "--expect-workers", "2")
    assert r.returncode == 0, r.stderr


def test_failures_survive_a_master_restart(cluster: Cluster, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    master = cluster.master(journal=journal)
    cluster.worker("w1")
    r = cluster.client("submit", EXPLODE, "--range", "20", "--chunk-size", "5", "--json")
    job_id = json_lines(r.stdout)[-1]["job_id"]
    before = job_json(cluster, job_id)
    master.signal(signal.SIGKILL)
    master.popen.wait(timeout=10)
    cluster.master(journal=journal, name="master2")
    after = job_json(cluster, job_id)
    assert after["state"] == "failed" and after["error"] == before["error"]
    assert after["errors"] == before["errors"] and len(after["errors"]) == 3


def test_odd_exceptions_and_unpicklable_results_are_clear_item_errors(cluster: Cluster) -> None:
    cluster.master()
    worker = cluster.worker("w1")
    for job, kind, type_, message in [
        (f"{T}:odd_exception", "exception", f"{T}.TwoArgError", "code 42: the answer"),
        (
            f"{T}:unpicklable",
            "unpicklable",
            "TypeError",
            "its result cannot be pickled: cannot pickle '_thread.lock' object",
        ),
    ]:
        r = cluster.client(
            "submit", job, "--range", "10", "--on-error", "skip", "--retries", "0", "--json"
        )
        assert r.returncode == 3, r.stderr
        (error,) = job_json(cluster, json_lines(r.stdout)[-1]["job_id"])["errors"]
        assert (error["kind"], error["index"], error["type"], error["message"]) == (
            kind,
            7,
            type_,
            message,
        )
    assert worker.popen.poll() is None


def test_a_failed_chunk_runs_again_on_another_worker(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1")
    cluster.worker("w2")
    with connect(cluster) as client:
        job = client.submit(f"{T}:fails_on_w1", range(200), chunk_size=10)
        assert job.wait(timeout=60) == "done"
        assert job.result() == [x * x for x in range(200)]
        errors = job.errors()
        assert errors, "w1 took some chunks and failed them"
        assert {(e.worker, e.attempt, e.final) for e in errors} == {("w1", 1, False)}
        by_chunk = {c.index: c.worker for c in job.chunks()}
        assert all(by_chunk[e.chunk] == "w2" for e in errors), "retried on w2"


# -- cancel, re-attach ------------------------------------------------------------------------


def test_cancelling_a_running_hundred_million_item_job_frees_the_worker(cluster: Cluster) -> None:
    cluster.master("--lease-timeout", "10")
    worker = cluster.worker("w1")
    # 10 s per chunk: without a stop the worker would be busy for 20 s (two in hand)
    r = cluster.client("submit", SLOW, "--range", "100000000", "--chunk-size", "5000", "--no-wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    cluster.wait_status(lambda st: any(w["leased"] for w in st["workers"]))
    t0 = time.monotonic()
    r = cluster.client("cancel", job_id)
    assert r.returncode == 0, r.stderr
    assert (
        r.stdout.startswith(f"job {job_id} cancelled (")
        and "/100000000 items were done" in r.stdout
    )
    r = cluster.client("submit", "squares", "--range", "1000", "--json")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10, "the cancelled job's chunks were stopped"
    worker.wait_for(r"stopped \d+ chunks the master no longer needs")
    view = job_json(cluster, job_id)
    assert view["state"] == "cancelled" and view["finished"] is not None
    assert view["items_done"] < view["items_total"] == 100_000_000
    assert view["chunks"]["pending"] == view["chunks"]["leased"] == 0
    r = cluster.client("results", job_id)
    assert r.returncode == 1 and f"job {job_id} was cancelled" in r.stderr
    done_id = json_lines(cluster.client("submit", "squares", "--range", "10", "--json").stdout)[-1]
    r = cluster.client("cancel", done_id["job_id"])
    assert r.returncode == 1
    assert r.stderr == (
        f"taskfleet: error: job {done_id['job_id']} already finished (done) — nothing to cancel\n"
    )


def test_a_job_is_reattached_from_another_process_and_read_after_it_finished(
    cluster: Cluster,
) -> None:
    cluster.master()
    cluster.worker("w1")
    r = cluster.client("submit", SLOW, "--range", "3000", "--chunk-size", "100", "--no-wait")
    job_id = r.stdout.strip()
    script = (
        "import json, taskfleet\n"
        "with taskfleet.connect() as client:\n"  # TASKFLEET_MASTER / _AUTHKEY_FILE
        f"    job = client.job({job_id!r})\n"
        "    first = job.state\n"
        "    results = job.result(timeout=120)\n"
        "    print(json.dumps({'first': first, 'ok': results == [x * x for x in range(3000)],\n"
        "                      'state': job.state, 'progress': job.progress(),\n"
        "                      'listed': [j.id for j in client.jobs()]}))\n"
    )
    seen = run_api_script(cluster, script, timeout=150)
    assert seen["first"] in ("pending", "running") and seen["ok"] and seen["state"] == "done"
    assert seen["progress"] == [3000, 3000, 0] and seen["listed"] == [job_id]
    r = cluster.client("results", job_id)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{x}\t{x * x}" for x in range(3000)]


def test_the_progress_line_goes_to_a_terminal_and_never_into_stdout(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        cluster.argv(
            *cluster.client_args("submit", SLOW, "--range", "1500", "--chunk-size", "100", "--json")
        ),
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        env=cluster.env,
    )
    os.close(follower)
    terminal = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        try:
            chunk = os.read(leader, 4096) if ready else b""
        except OSError:  # the terminal closed with the process
            chunk = b""
        if not chunk:
            break
        terminal += chunk
    stdout, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0
    assert all(line.startswith("{") for line in stdout.splitlines())
    assert json_lines(stdout)[-1]["results"] == 1500
    text = terminal.decode()
    assert "items/s, ETA" in text and "/1500 items (" in text


# -- the worker's processes never outlive it ---------------------------------------------------


def test_kill9_of_a_worker_leaves_no_pool_process_running(cluster: Cluster) -> None:
    cluster.master()
    worker = cluster.worker("w1", "--processes", "2")
    r = cluster.client("submit", HANG, "--range", "20", "--chunk-size", "5", "--no-wait")
    assert r.returncode == 0
    cluster.wait_status(lambda st: any(w["leased"] for w in st["workers"]))
    kids = wait_until(
        "two pool processes", lambda: (k := children(worker.pid)) and len(k) == 2 and k
    )
    worker.signal(signal.SIGKILL)
    worker.popen.wait(timeout=10)
    wait_until("the pool processes to die with their worker", lambda: not any(map(alive, kids)), 5)


def test_a_stopped_worker_with_a_hung_chunk_exits_in_time_and_leaves_no_child(
    cluster: Cluster,
) -> None:
    master = cluster.master()
    worker = cluster.worker("w1")
    cluster.client("submit", HANG, "--range", "20", "--chunk-size", "5", "--no-wait")
    cluster.wait_status(lambda st: any(w["leased"] for w in st["workers"]))
    kids = children(worker.pid)
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    assert kids and not any(map(alive, kids))
    master.wait_for(r"worker w1 left \(drained; [12] chunks given back\)")


# -- retention ---------------------------------------------------------------------------------


def test_finished_jobs_beyond_keep_jobs_are_pruned_with_their_results(
    cluster: Cluster, tmp_path: Path
) -> None:
    master = cluster.master("--keep-jobs", "2", journal=tmp_path / "j.db")
    cluster.worker("w1")
    ids = []
    for _ in range(4):
        r = cluster.client("submit", "squares", "--range", "100", "--json")
        ids.append(json_lines(r.stdout)[-1]["job_id"])
    listed = wait_until(
        "two jobs left",
        lambda: (j := json.loads(cluster.client("jobs", "--json").stdout))["total"] == 2 and j,
    )
    assert [j["id"] for j in listed["jobs"]] == [ids[3], ids[2]]
    master.wait_for(rf"job {ids[0]} pruned \(more than 2 finished jobs\)")
    r = cluster.client("results", ids[0])
    assert r.returncode == 1
    assert r.stderr.startswith(f"taskfleet: error: no job '{ids[0]}' on this master — check the id")


def test_a_job_older_than_keep_for_is_pruned_and_its_space_given_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    journal = tmp_path / "j.db"
    cluster.master("--keep-for", "2s", journal=journal)
    cluster.worker("w1")

    def pages() -> int:
        with sqlite3.connect(journal) as conn:
            return int(conn.execute("PRAGMA page_count").fetchone()[0])

    empty = pages()
    r = cluster.client("submit", "squares", "--range", "400000", "--chunk-size", "1000", "--json")
    assert r.returncode == 0
    full = pages()
    assert full > empty + 300, (empty, full)  # more than a megabyte of results
    wait_until(
        "the job pruned", lambda: json.loads(cluster.client("jobs", "--json").stdout)["total"] == 0
    )
    wait_until("the space given back", lambda: pages() < empty + 50, timeout=30)


def test_status_and_jobs_stay_fast_with_ten_thousand_finished_jobs(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "j.db"
    Journal(str(path)).close()
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO jobs (id, job, chunk_size, start, stop, created, state, finished)"
            " VALUES (?, 'squares', 10, 0, 10, ?, 'done', ?)",
            [(f"old{k:05}", now - 20_000 + k, now - 20_000 + k) for k in range(10_000)],
        )
    conn.close()
    cluster.master("--keep-jobs", "0", "--keep-for", "0", journal=path)
    with connect(cluster) as client:
        client.submit("squares", range(10))  # pending: no worker
        t0 = time.monotonic()
        status = client.status()
        t_status = time.monotonic() - t0
        t0 = time.monotonic()
        listed = client.jobs(50)
        t_jobs = time.monotonic() - t0
    assert len(status["jobs"]) == defaults.STATUS_FINISHED_JOBS + 1
    assert status["jobs_not_listed"] == 10_000 - defaults.STATUS_FINISHED_JOBS
    assert status["jobs_by_state"]["done"] == 10_000 and status["jobs_by_state"]["pending"] == 1
    assert status["jobs"][-1]["state"] == "pending"
    assert [j.id for j in listed[1:4]] == ["old09999", "old09998", "old09997"]
    assert len(listed) == 50
    # Both answer from memory in milliseconds; the bound only catches a scan gone wrong.
    assert t_status < 1.0 and t_jobs < 1.0, (t_status, t_jobs)
    r = cluster.client("status", "--json")
    doc = json.loads(r.stdout)
    assert len(doc["jobs"]) == 21
    # The verdict: exit 1, the one problem is the pending job no worker can run.
    assert r.returncode == 1 and len(doc["problems"]) == 1
    assert doc["problems"][0].endswith("cannot progress: no worker is connected")


# -- readers ---------------------------------------------------------------------------------


def test_map_over_a_hundred_million_items_keeps_memory_bounded_when_one_chunk_is_slow(
    cluster: Cluster,
) -> None:
    """Chunk 0 takes 3 s while the chunks behind it finish: the ordered reader waits for
    it without holding the others, then streams; leaving the loop cancels the job."""
    cluster.master()
    cluster.worker("w1", "--processes", "2")
    script = (
        "import json, resource, taskfleet\n"
        "rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with taskfleet.connect() as client:\n"
        "    before, n, ordered = rss(), 0, True\n"
        f"    for i, r in enumerate(client.map({T + ':slow_first'!r}, range(10**8),"
        " chunk_size=10_000)):\n"
        "        ordered = ordered and r == i * i\n"
        "        n += 1\n"
        "        if n == 2_000_000:\n"
        "            break\n"
        "    grew = rss() - before\n"
        "    job = client.jobs(1)[0]\n"
        "    print(json.dumps({'n': n, 'ordered': ordered, 'grew_kb': grew,"
        " 'state': job.state}))\n"
    )
    seen = run_api_script(cluster, script, timeout=180)
    assert seen["n"] == 2_000_000 and seen["ordered"]
    assert seen["grew_kb"] < 40_000, f"the reader grew by {seen['grew_kb']} KB"
    assert seen["state"] == "cancelled", "leaving the loop cancels the job"


def test_a_range_with_a_step_is_sent_as_a_range(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1")
    with connect(cluster) as client:
        items = range(10**12, 10**12 - 30, -3)
        job = client.submit("squares", items, chunk_size=4)
        assert job.spec.listed is None and job.spec.step == -3
        assert job.result(timeout=60) == [x * x for x in items]
        assert sorted(client.map("squares", iter([3, 1, 2]), ordered=False)) == [1, 4, 9]


def test_the_api_refuses_bad_options_before_sending_anything(cluster: Cluster) -> None:
    cluster.master()
    with connect(cluster) as client:
        for kwargs, message in [
            ({"on_error": "ignore"}, "bad on_error 'ignore'"),
            ({"retries": -1}, "bad retries -1"),
            ({"item_timeout": "soon"}, "bad item_timeout 'soon'"),
        ]:
            try:
                client.submit("squares", range(5), **kwargs)  # type: ignore[arg-type]
            except taskfleet.BadJobArguments as exc:
                assert str(exc).startswith(message)
            else:
                raise AssertionError(f"{kwargs} was accepted")
        assert client.jobs() == []
        try:
            client.job("nosuchjob")
        except taskfleet.JobNotFound as exc:
            assert str(exc).startswith("no job 'nosuchjob' on this master")
        else:
            raise AssertionError("a missing job was found")
