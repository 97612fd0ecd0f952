"""Job code versions at run time: what each worker has, and what each job runs.

A throwaway distribution (``fakejobs`` 1.2.3, one entry point in
``taskfleet.jobs``) is put on the path of a real master and a real worker:
the worker reports it at hello, ``status --json`` lists it per worker, and
the master records it with every job that runs its code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fakedist import fake_distribution
from tests.integration.conftest import Cluster, parse_submit_json


def test_workers_report_their_job_packages_and_jobs_record_their_code_version(
    cluster: Cluster, tmp_path: Path
) -> None:
    site = fake_distribution(
        tmp_path / "site",
        "fakejobs",
        "1.2.3",
        "fakejobs_mod",
        "def double(n):\n    return 2 * n\n",
        {"double": "fakejobs_mod:double"},
    )
    cluster.env["PYTHONPATH"] = os.pathsep.join([cluster.env["PYTHONPATH"], str(site)])
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    (worker,) = cluster.status()["workers"]
    assert worker["job_packages"] == {"fakejobs": "1.2.3"}

    submit = cluster.client("submit", "double", "--range", "20", "--json")
    assert submit.returncode == 0, submit.stderr
    assert "double (fakejobs 1.2.3) over 20 items" in submit.stderr
    chunks, summary, _ = parse_submit_json(submit.stdout)
    assert [r for _, (items, results) in sorted(chunks.items()) for r in results] == [
        2 * n for n in range(20)
    ]
    job = cluster.client("job", summary["job_id"], "--json")
    assert job.returncode == 0, job.stderr
    assert json.loads(job.stdout)["code_version"] == "fakejobs 1.2.3"
    # By module:function the same code is recognised by the distribution that owns it.
    by_module = cluster.client("submit", "fakejobs_mod:double", "--range", "3", "--no-wait")
    assert by_module.returncode == 0, by_module.stderr
    (listed,) = [j for j in cluster.status()["jobs"] if j["id"] == by_module.stdout.strip()]
    assert listed["code_version"] == "fakejobs 1.2.3"

    text = cluster.client("status")
    assert "    jobs fakejobs 1.2.3" in text.stdout, text.stdout
    assert "code fakejobs 1.2.3" in text.stdout, text.stdout
