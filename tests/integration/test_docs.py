"""The examples in docs/api.md and the README's Python section, run against a real master
and two workers on loopback, in the order they are written (one shared namespace)."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Cluster


def pycon_blocks(path: Path) -> str:
    """The ```pycon blocks of a Markdown file, joined in order."""
    blocks = re.findall(r"^```pycon\n(.*?)^```$", path.read_text(), flags=re.M | re.S)
    assert blocks, f"no pycon examples in {path.name}"
    return "\n".join(blocks)


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_the_documented_examples_run_as_written(
    cluster: Cluster, doc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.master()
    cluster.worker("w1", "--host-label", "hostA")
    cluster.worker("w2", "--host-label", "hostB")
    monkeypatch.setenv("TASKFLEET_MASTER", cluster.address)
    monkeypatch.setenv("TASKFLEET_AUTHKEY_FILE", str(cluster.key))
    monkeypatch.delenv("TASKFLEET_PROFILE", raising=False)
    text = pycon_blocks(REPO / doc)
    test = doctest.DocTestParser().get_doctest(text, {}, doc, doc, 0)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.REPORT_NDIFF
    )
    report: list[str] = []
    runner.run(test, out=report.append)
    assert test.examples, "examples were found"
    assert runner.failures == 0, "".join(report)
