"""Throughput benchmark: the seed design vs taskfleet vs multiprocessing.Pool.map.

Run with ``make bench`` (or ``python bench/throughput.py [--items N]``). All
figures come from this one run on this machine, on loopback:

  (a) seed    — the classic pattern: a BaseManager serving a task queue and a
                result queue, 2 worker processes doing one get() and one put()
                per item (measured on a smaller count: it is slow);
  (b) taskfleet — master + one worker with 2 pool processes (the deployed
                shape: one worker per host, one process per core), squares
                over range(N) submitted and streamed back by a client;
  (c) Pool.map — multiprocessing.Pool(2).map on the same machine: the
                one-machine ceiling;
  (d) Client.map — the Python API, results in input order, against the
                smoke job (completion order) at the same chunk size on the
                same cluster: ordered reading must keep >= 0.9x of it.

Then: a chunk-size sweep (a Nagle/delayed-ACK cliff would show as a collapse
at sizes whose messages exceed 16 KB), mutual TLS against plaintext (two
clusters side by side, runs interleaved so both see the same machine; target:
TLS >= 0.9x plaintext at the default chunk size), the master's peak RSS while it
serves a 100,000,000-item range job, and streaming: ``taskfleet submit
--items-file`` over a large file of integers (``--stream-mb``, default 200 MB),
with the peak RSS of the client and of the master against the file's size
(every output line checked against its item, every 97th square recomputed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.tlscerts import CA  # noqa: E402  (certificates for the TLS rows)

from taskfleet import authkey, defaults, smoke  # noqa: E402
from taskfleet.client import Client  # noqa: E402
from taskfleet.jobs import squares  # noqa: E402
from taskfleet.tls import TLSConfig  # noqa: E402

SEED_KEY = b"seed-benchmark-key"


# -- (a) the seed design ----------------------------------------------------------------

_task_q: queue.Queue[Any] = queue.Queue()
_result_q: queue.Queue[Any] = queue.Queue()


def _get_task_queue() -> queue.Queue[Any]:
    return _task_q


def _get_result_queue() -> queue.Queue[Any]:
    return _result_q


class SeedManager(BaseManager):
    pass


def _seed_worker(address: tuple[str, int], n_stop: int) -> None:
    class M(BaseManager):
        pass

    M.register("get_task_queue")
    M.register("get_result_queue")
    m = M(address=address, authkey=SEED_KEY)
    m.connect()
    tasks, results = m.get_task_queue(), m.get_result_queue()  # type: ignore[attr-defined]
    while True:
        n = tasks.get()
        if n is None:
            break
        results.put(n * n)


def bench_seed(n: int) -> float:
    """The seed's per-item get/put; server in a child process as in the seed (start())."""
    SeedManager.register("get_task_queue", callable=_get_task_queue)
    SeedManager.register("get_result_queue", callable=_get_result_queue)
    ctx = multiprocessing.get_context("fork")  # the seed's module-level callables need fork
    m = SeedManager(address=("127.0.0.1", 0), authkey=SEED_KEY, ctx=ctx)
    m.start()
    tasks, results = m.get_task_queue(), m.get_result_queue()  # type: ignore[attr-defined]
    workers = [ctx.Process(target=_seed_worker, args=(m.address, n)) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(0.5)  # let the workers connect
    t0 = time.perf_counter()
    for i in range(n):
        tasks.put(i)
    total = 0
    for _ in range(n):
        total += results.get(timeout=60)
    seconds = time.perf_counter() - t0
    assert total == sum(i * i for i in range(n))
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.join(timeout=10)
    m.shutdown()
    return n / seconds


# -- (c) Pool.map --------------------------------------------------------------------------


def bench_pool(n: int) -> float:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(squares, range(1000))  # warm
        t0 = time.perf_counter()
        out = pool.map(squares, range(n))
        seconds = time.perf_counter() - t0
    assert len(out) == n and out[-1] == (n - 1) ** 2
    return n / seconds


# -- (b) taskfleet ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_args(cfg: TLSConfig | None) -> list[str]:
    return [] if cfg is None else ["--tls-ca", cfg.ca, "--tls-cert", cfg.cert, "--tls-key", cfg.key]


class Cluster:
    """A master and one worker as processes, and a client; with ``tls`` (a CA), all
    three hold certificates from it."""

    def __init__(self, tmp: Path, processes: int = 2, tls: CA | None = None) -> None:
        self.tmp = tmp
        self.key = tmp / "authkey"
        if not self.key.exists():
            authkey.keygen(str(self.key))
        self.port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        cli = [sys.executable, "-m", "taskfleet.cli"]
        master_tls = tls.config(f"master-{self.port}") if tls else None
        worker_tls = tls.config(f"worker-{self.port}") if tls else None
        client_tls = tls.config(f"client-{self.port}") if tls else None
        self.logs = [open(tmp / f"{name}-{self.port}.log", "wb") for name in ("master", "worker")]
        self.master = subprocess.Popen(
            [
                *cli,
                "master",
                "--port",
                str(self.port),
                "--authkey-file",
                str(self.key),
                "--journal",
                str(tmp / f"journal-{self.port}.db"),
                *_tls_args(master_tls),
            ],
            stderr=self.logs[0],
            env=env,
            start_new_session=True,
        )
        self.client = Client(
            ("127.0.0.1", self.port),
            authkey.load(str(self.key)),
            connect_timeout=20,
            tls=client_tls,
        )
        self.client.ping()
        self.worker = subprocess.Popen(
            [
                *cli,
                "worker",
                "--master",
                f"127.0.0.1:{self.port}",
                "--authkey-file",
                str(self.key),
                "--processes",
                str(processes),
                "--name",
                "bench",
                *_tls_args(worker_tls),
            ],
            stderr=self.logs[1],
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self.client.status()["workers"]:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the worker did not connect within 30 s")
            time.sleep(0.1)

    def run(self, n: int, chunk: int) -> float:
        t0 = time.perf_counter()
        job = self.client.submit("squares", range(n), chunk_size=chunk)
        count = 0
        last = None
        for r in job.chunks(ordered=False, timeout=600):
            count += len(r.results)
            last = r
        seconds = time.perf_counter() - t0
        assert count == n and last is not None and last.results[-1] == last.items[-1] ** 2
        return n / seconds

    def smoke(self, n: int, chunk: int) -> float:
        """The smoke job's items/s (every result checked, completion order)."""
        report = smoke.run(self.client, n, chunk_size=chunk, timeout=600)
        assert report.ok and report.items_per_s, report.errors
        return float(report.items_per_s)

    def map_ordered(self, n: int, chunk: int) -> float:
        """Client.map over range(n), results in input order, every one checked the way
        the smoke job checks its chunks (and strict: exactly n results)."""
        t0 = time.perf_counter()
        results = self.client.map("squares", range(n), chunk_size=chunk)
        wrong = sum(1 for x, r in zip(range(n), results, strict=True) if r != x * x)
        seconds = time.perf_counter() - t0
        assert wrong == 0
        return n / seconds

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.master.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def close(self) -> None:
        self.client.close()
        for proc in (self.worker, self.master):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in (self.worker, self.master):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for fh in self.logs:
            fh.close()


def bench_tls(tmp: Path, n: int, chunks: tuple[int, ...], rounds: int) -> dict[str, Any]:
    """Plaintext and mutual-TLS clusters side by side; runs interleaved, best of ``rounds``."""
    plain = Cluster(tmp)
    tls = Cluster(tmp, tls=CA(tmp / "pki"))
    try:
        for c in (plain, tls):
            c.run(20_000, 1000)  # warm up (connections, pool)
        rows: dict[str, Any] = {}
        for chunk in chunks:
            best = {"plain": 0.0, "tls": 0.0}
            for _ in range(rounds):
                for name, c in (("plain", plain), ("tls", tls)):
                    best[name] = max(best[name], c.run(n, chunk))
            rows[str(chunk)] = {
                "plain": round(best["plain"]),
                "tls": round(best["tls"]),
                "ratio": round(best["tls"] / best["plain"], 3),
            }
            print(
                f"   chunk {chunk:>6}: plaintext {best['plain']:>12,.0f}  TLS {best['tls']:>12,.0f}"
                f" items/s  TLS/plaintext {best['tls'] / best['plain']:.2f}x",
                flush=True,
            )
        return rows
    finally:
        tls.close()
        plain.close()


def bench_memory(tmp: Path, n: int, seconds: float) -> dict[str, Any]:
    """Peak RSS of a master serving an n-item range job for a few seconds."""
    cluster = Cluster(tmp)
    try:
        before = cluster.peak_rss_mb()
        job = cluster.client.submit("squares", range(n), chunk_size=1000)
        time.sleep(seconds)
        st = job.info()
        return {
            "items": n,
            "rss_idle_mb": round(before, 1),
            "peak_rss_mb": round(cluster.peak_rss_mb(), 1),
            "items_done_in_window": st["items_done"],
            "window_s": seconds,
        }
    finally:
        cluster.close()


def write_items(path: Path, megabytes: int) -> int:
    """An items file of about ``megabytes`` MB: one 9-digit integer per line. Returns the
    number of items."""
    per_block = 100_000
    blocks = max(1, megabytes * 1_000_000 // (10 * per_block))
    with open(path, "w") as fh:
        for b in range(blocks):
            base = 100_000_000 + b * per_block
            fh.write("".join(f"{x}\n" for x in range(base, base + per_block)))
    return blocks * per_block


def bench_streaming(tmp: Path, megabytes: int) -> dict[str, Any]:
    """``taskfleet submit squares --items-file F`` (the real CLI, in its own process) over
    an items file of ``megabytes`` MB: seconds, and the peak RSS of client and master."""
    items = tmp / "stream-items.txt"
    n = write_items(items, megabytes)
    size_mb = items.stat().st_size / 1e6
    cluster = Cluster(tmp)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        argv = [sys.executable, "-m", "taskfleet.cli", "submit", "squares", "--items-file"]
        argv += [str(items), "--master", f"127.0.0.1:{cluster.port}"]
        argv += ["--authkey-file", str(cluster.key), "--connect-timeout", "20"]
        # Through the launcher: started from this process directly, the client's
        # ru_maxrss would be at least this benchmark's own peak (bench/peak_rss.py).
        peak = tmp / "client-peak-kib"
        argv = [sys.executable, str(REPO / "bench" / "peak_rss.py"), str(peak), "--", *argv]
        t0 = time.perf_counter()
        client = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
        )
        assert client.stdout is not None
        # Read the output as it comes (a file would take 2.7x the items file on disk):
        # every line's item in input order, every 97th line's square computed.
        checked = 0
        with open(items) as fi:
            for line_in, line_out in zip(fi, client.stdout, strict=True):
                item, result = line_out.split("\t")
                assert item == line_in[:-1], (line_in, line_out)
                if checked % 97 == 0:
                    assert int(result) == int(item) ** 2, line_out
                checked += 1
        code = client.wait()
        seconds = time.perf_counter() - t0
        if code != 0 or checked != n:
            raise SystemExit(f"bench: the streaming submit failed ({checked} of {n} results)")
        master_mb = cluster.peak_rss_mb()
    finally:
        cluster.close()
    items.unlink()
    client_mb = int(peak.read_text()) / 1024
    return {
        "file_mb": round(size_mb, 1),
        "items": n,
        "seconds": round(seconds, 1),
        "items_per_s": round(n / seconds),
        "client_peak_rss_mb": round(client_mb, 1),
        "master_peak_rss_mb": round(master_mb, 1),
        "client_vs_file": round(client_mb / size_mb, 3),
        "master_vs_file": round(master_mb / size_mb, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # At several million items/s a run of 1,000,000 items lasts ~0.1 s, where timer and
    # scheduling noise decide the ratios: the defaults make each timed run last ~0.5 s or more.
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--seed-items", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="taskfleet chunk size for (b)")
    parser.add_argument("--memory-items", type=int, default=100_000_000)
    parser.add_argument("--tls-items", type=int, default=2_000_000)
    parser.add_argument("--tls-rounds", type=int, default=5)
    parser.add_argument(
        "--stream-mb", type=int, default=200, help="size of the items file streamed (MB)"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON line"
    )
    args = parser.parse_args()
    figures: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}

    print(
        f"== seed design: per-item get/put, {args.seed_items} items, 2 worker processes", flush=True
    )
    seed = bench_seed(args.seed_items)
    print(f"   {seed:,.0f} items/s", flush=True)

    print(f"== multiprocessing.Pool(2).map over {args.items} items", flush=True)
    pool = bench_pool(args.items)
    print(f"   {pool:,.0f} items/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="taskfleet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        cluster = Cluster(tmp)
        try:
            cluster.run(20_000, 1000)  # warm up
            print(
                f"== taskfleet: master + 1 worker x 2 processes,"
                f" {args.items} items, chunk {args.chunk}",
                flush=True,
            )
            runs = [cluster.run(args.items, args.chunk) for _ in range(2)]
            tf = max(runs)
            print(
                f"   {tf:,.0f} items/s (best of {len(runs)}:"
                f" {', '.join(f'{r:,.0f}' for r in runs)})"
            )
            print(
                f"== Client.map ordered vs the smoke job, {args.items} items, chunk {args.chunk}"
                " (best of 3 each, alternating)",
                flush=True,
            )
            smokes, maps = [], []
            for _ in range(3):
                smokes.append(cluster.smoke(args.items, args.chunk))
                maps.append(cluster.map_ordered(args.items, args.chunk))
            smoke_rate, map_rate = max(smokes), max(maps)
            print(
                f"   smoke {smoke_rate:,.0f} items/s, Client.map ordered {map_rate:,.0f} items/s:"
                f" {map_rate / smoke_rate:.2f}x",
                flush=True,
            )
            sweep: dict[int, float] = {}
            print("== chunk-size sweep (taskfleet, same cluster)", flush=True)
            for chunk in (100, 1000, 5000, 10_000, 50_000):
                n = min(args.items, max(200_000, chunk * 40))
                sweep[chunk] = cluster.run(n, chunk)
                print(
                    f"   chunk {chunk:>6}: {sweep[chunk]:>12,.0f} items/s  ({n} items)", flush=True
                )
        finally:
            cluster.close()
        print(
            f"== mutual TLS vs plaintext: {args.tls_items:,} items, interleaved, best of"
            f" {args.tls_rounds}",
            flush=True,
        )
        tls_rows = bench_tls(
            tmp, args.tls_items, (defaults.CHUNK_SIZE, args.chunk), args.tls_rounds
        )
        print(f"== master memory: {args.memory_items:,}-item range job, 5 s of work", flush=True)
        mem = bench_memory(tmp, args.memory_items, 5.0)
        print(
            f"   peak RSS {mem['peak_rss_mb']} MB (idle {mem['rss_idle_mb']} MB), "
            f"{mem['items_done_in_window']:,} items done in the window"
        )
        print(f"== streaming: submit --items-file of about {args.stream_mb} MB", flush=True)
        stream = bench_streaming(tmp, args.stream_mb)
        print(
            f"   {stream['items']:,} items in {stream['seconds']} s; peak RSS client"
            f" {stream['client_peak_rss_mb']} MB, master {stream['master_peak_rss_mb']} MB",
            flush=True,
        )

    figures.update(
        seed_items_per_s=round(seed),
        pool_items_per_s=round(pool),
        taskfleet_items_per_s=round(tf),
        vs_seed=round(tf / seed, 1),
        vs_pool=round(tf / pool, 2),
        sweep={str(k): round(v) for k, v in sweep.items()},
        tls=tls_rows,
        memory=mem,
        smoke_items_per_s=round(smoke_rate),
        map_ordered_items_per_s=round(map_rate),
        map_vs_smoke=round(map_rate / smoke_rate, 2),
        streaming=stream,
    )
    ok_seed, ok_pool, ok_mem = tf >= 100 * seed, tf >= 0.3 * pool, mem["peak_rss_mb"] < 200
    ok_map = map_rate >= 0.9 * smoke_rate
    tls_default = tls_rows[str(defaults.CHUNK_SIZE)]
    ok_tls = tls_default["ratio"] >= 0.9
    ok_stream = stream["client_peak_rss_mb"] < 100 and stream["master_peak_rss_mb"] < 100
    print()
    print("| design (squares, loopback, 2 cores) | items/s | vs seed | vs Pool.map |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| seed: BaseManager queues, get+put per item ({args.seed_items:,} items)"
        f" | {seed:,.0f} | 1x | "
        f"{seed / pool:.4f}x |"
    )
    print(
        f"| taskfleet: master + 1 worker x 2 processes, chunk {args.chunk:,}"
        f" ({args.items:,} items) | "
        f"{tf:,.0f} | {tf / seed:,.0f}x | {tf / pool:.2f}x |"
    )
    print(
        f"| multiprocessing.Pool(2).map ({args.items:,} items) | {pool:,.0f}"
        f" | {pool / seed:,.0f}x | 1x |"
    )
    print()
    print(f"| reader (squares, same cluster, chunk {args.chunk:,}) | items/s | vs smoke |")
    print("| --- | ---: | ---: |")
    print(f"| smoke job (completion order, every result checked) | {smoke_rate:,.0f} | 1x |")
    print(
        f"| Client.map, input order (every result checked) | {map_rate:,.0f}"
        f" | {map_rate / smoke_rate:.2f}x |"
    )
    print()
    print("| chunk size | " + " | ".join(f"{c:,}" for c in sweep) + " |")
    print("| --- | " + " | ".join("---:" for _ in sweep) + " |")
    print("| items/s | " + " | ".join(f"{v:,.0f}" for v in sweep.values()) + " |")
    print()
    print(
        "| mutual TLS vs plaintext (same run, interleaved)"
        " | plaintext items/s | TLS items/s | TLS/plaintext |"
    )
    print("| --- | ---: | ---: | ---: |")
    for chunk, row in tls_rows.items():
        default = " (default)" if chunk == str(defaults.CHUNK_SIZE) else ""
        print(
            f"| chunk {int(chunk):,}{default} | {row['plain']:,} | {row['tls']:,} |"
            f" {row['ratio']:.2f}x |"
        )
    print()
    print(
        f"Master peak RSS serving a {args.memory_items:,}-item range job: {mem['peak_rss_mb']} MB "
        f"(target < 200 MB)."
    )
    print()
    print(
        "| streamed items file (squares, every line checked) | items | seconds | items/s"
        " | client peak RSS | master peak RSS |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {stream['file_mb']:,} MB, one integer per line | {stream['items']:,}"
        f" | {stream['seconds']} | {stream['items_per_s']:,}"
        f" | {stream['client_peak_rss_mb']} MB ({stream['client_vs_file']}x the file)"
        f" | {stream['master_peak_rss_mb']} MB ({stream['master_vs_file']}x the file) |"
    )
    print()
    print(
        f"Targets: >= 100x seed: {'met' if ok_seed else 'MISSED'}; >= 0.3x Pool.map: "
        f"{'met' if ok_pool else 'MISSED'}; RSS < 200 MB: {'met' if ok_mem else 'MISSED'};"
        f" Client.map ordered >= 0.9x smoke: {'met' if ok_map else 'MISSED'};"
        f" TLS >= 0.9x plaintext at the default chunk ({tls_default['ratio']:.2f}x):"
        f" {'met' if ok_tls else 'MISSED'};"
        f" streaming client and master < 100 MB: {'met' if ok_stream else 'MISSED'}."
    )
    if args.json:
        print(json.dumps(figures))
    ok = ok_seed and ok_pool and ok_mem and ok_map and ok_tls and ok_stream
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
