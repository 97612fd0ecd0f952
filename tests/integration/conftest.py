"""Real processes on 127.0.0.1: a master, workers and CLI calls per test.

Every process runs in its own session (process group) so teardown can kill
it *and its pool children* by its PID, whatever the test did to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfleet.tls import TLSConfig
from tests.tlscerts import CA
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def tls_args(cfg: TLSConfig | None) -> list[str]:
    if cfg is None:
        return []
    return ["--tls-ca", cfg.ca, "--tls-cert", cfg.cert, "--tls-key", cfg.key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    # Test-only job functions live in tests/integration/testjobs.py.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.log = log
        self._fh = open(log, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.pid = self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first match of ``pattern`` in this process's log; fails at once if it exits
        without printing it."""
        rx = re.compile(pattern)

        def seen() -> re.Match[str] | None:
            exited = self.popen.poll() is not None
            m = rx.search(self.text())  # read after poll(): an exit's last lines count
            if m is None and exited:
                pytest.fail(
                    f"{self.argv[3:5]} exited {self.popen.returncode} before /{pattern}/:\n"
                    + self.text()
                )
            return m

        return wait_for(
            f"/{pattern}/ in {self.log.name}", seen, timeout, interval=0.05, detail=self.text
        )

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGCONT)
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            try:  # pool children may outlive their worker
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=10)
        self._fh.close()


class Cluster:
    """Starts taskfleet processes for one test and kills them all afterwards.

    With ``tls``, a cluster CA is made in ``tmp/pki`` and master, workers and
    clients get certificates from it (``master_tls``, ``client_tls``).
    """

    def __init__(self, tmp: Path, tls: bool = False) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.bind = "127.0.0.1"
        self.address = f"127.0.0.1:{self.port}"
        self.key = tmp / "authkey"
        self.env = cli_env()
        self.procs: list[Proc] = []
        self.ca: CA | None = None
        self.master_tls: TLSConfig | None = None
        self.client_tls: TLSConfig | None = None
        if tls:
            self.ca = CA(tmp / "pki")
            self.master_tls = self.ca.config("master")
            self.client_tls = self.ca.config("client")
        r = self.run("keygen", str(self.key))
        assert r.returncode == 0, r.stderr

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "taskfleet.cli", *args]

    def spawn(self, logname: str, *args: str) -> Proc:
        proc = Proc(self.argv(*args), self.tmp / f"{logname}.log", self.env)
        self.procs.append(proc)
        return proc

    def master(self, *extra: str, journal: Path | None = None, name: str = "master") -> Proc:
        args = [
            "master",
            "--bind",
            self.bind,
            "--port",
            str(self.port),
            "--authkey-file",
            str(self.key),
        ]
        if journal is not None:
            args += ["--journal", str(journal)]
        proc = self.spawn(name, *args, *tls_args(self.master_tls), *extra)
        proc.wait_for("listening on")
        return proc

    def worker(
        self, name: str, *extra: str, wait: bool = True, tls: TLSConfig | None = None
    ) -> Proc:
        """A worker; with a TLS cluster it uses ``tls`` or the clients' certificate."""
        proc = self.spawn(
            name,
            "worker",
            "--master",
            self.address,
            "--authkey-file",
            str(self.key),
            "--name",
            name,
            "--processes",
            "1",
            *tls_args(tls or self.client_tls),
            *extra,
        )
        if wait:
            proc.wait_for(f"worker {name} connected")
        return proc

    def client_args(self, command: str, *args: str) -> list[str]:
        return [
            command,
            *args,
            "--master",
            self.address,
            "--authkey-file",
            str(self.key),
            *tls_args(self.client_tls),
        ]

    def background_client(self, command: str, *args: str) -> subprocess.Popen[str]:
        """A CLI client (submit, smoke) left running while the test breaks things."""
        return subprocess.Popen(
            self.argv(*self.client_args(command, *args)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def client(
        self, command: str, *args: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(*self.client_args(command, *args), timeout=timeout)

    def status(self, *extra: str) -> dict[str, Any]:
        """``status --json``: the master's view with the verdict (exit 0 healthy, 1 degraded)."""
        r = self.client("status", "--json", *extra)
        assert r.returncode in (0, 1), r.stderr
        doc = dict(json.loads(r.stdout))
        assert doc["healthy"] is (r.returncode == 0), doc
        return doc

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        """The first ``status --json`` for which ``predicate`` holds; fails after ``timeout``."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            last = self.status()
            return last if predicate(last) else None

        return wait_for("the master's status to match", check, timeout, 0.2, lambda: last)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on mutual TLS (certificates from a CA made for the test)."""
    c = Cluster(tmp_path, tls=True)
    try:
        yield c
    finally:
        c.close()


def parse_submit_json(
    stdout: str,
) -> tuple[dict[int, tuple[list[Any], list[Any]]], dict[str, Any], int]:
    """``submit --json`` lines → ({chunk: (items, results)}, summary, repeated chunks)."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    summary = lines[-1]
    chunks: dict[int, tuple[list[Any], list[Any]]] = {}
    repeats = 0
    for line in lines[:-1]:
        if line["chunk"] in chunks:
            repeats += 1
        chunks[line["chunk"]] = (line["items"], line["results"])
    return chunks, summary, repeats
