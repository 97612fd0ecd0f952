"""Result types: plain data by default, what a job declares besides, nothing else."""

from __future__ import annotations

from decimal import Decimal

from tests.integration.conftest import Cluster


def test_a_job_that_declares_its_result_type_is_decoded_by_the_client(cluster: Cluster) -> None:
    cluster.master()
    cluster.worker("w1")
    r = cluster.client("submit", "tests.integration.testjobs:decimal_half", "--range", "5")
    assert r.returncode == 0, r.stderr
    rows = dict(line.split("\t") for line in r.stdout.splitlines())
    assert {int(k): Decimal(v) for k, v in rows.items()} == {n: Decimal(n) / 2 for n in range(5)}


def test_a_job_returning_an_undeclared_type_fails_on_the_worker_with_the_fix(
    cluster: Cluster,
) -> None:
    cluster.master()
    cluster.worker("w1")
    job = "tests.integration.testjobs:undeclared_decimal"
    r = cluster.client("submit", job, "--range", "5", "--retries", "0")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("taskfleet: error: job ")
        and (
            " failed: taskfleet.safepickle.UnsafePickle: its result holds a decimal:Decimal,"
            " which the job does not declare — declare it with"
            " @taskfleet.jobs.result_types(Decimal) on the job function (item 0: 0; worker w1"
        )
        in line
    ), line
