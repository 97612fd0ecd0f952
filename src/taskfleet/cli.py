"""``taskfleet`` — the command line (see docs/interfaces.md for the contract).

Every failure is one line on stderr, ``taskfleet: error: <what> — <fix>``,
and a non-zero exit; exit 0 only on success.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from taskfleet import __version__, authkey, defaults, health, log, profile
from taskfleet.address import parse_hostport, parse_port
from taskfleet.errors import TaskfleetError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one TaskfleetError line instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see '{self.prog} --help'")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


# -- shared option helpers ----------------------------------------------------------


def _add_master_opts(p: argparse.ArgumentParser) -> None:
    """Where the master is and how to authenticate: options, a profile, or the environment."""
    p.add_argument(
        "--master",
        metavar="HOST:PORT",
        help=f"the master's address (env {profile.ENV_MASTER})",
    )
    p.add_argument(
        "--authkey-file",
        metavar="PATH",
        help=f"file holding the cluster's authkey (env {profile.ENV_AUTHKEY})",
    )
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="connection profile written by make deploy (inventory/<env>/secrets/client.json;"
        f" env {profile.ENV_PROFILE}); --master/--authkey-file override it",
    )


def _add_authkey_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--authkey-file",
        metavar="PATH",
        default=os.environ.get(profile.ENV_AUTHKEY),
        help=f"file holding the cluster's authkey (env {profile.ENV_AUTHKEY})",
    )


def _add_client_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=defaults.CONNECT_TIMEOUT,
        metavar="S",
        help=f"give up when the master does not answer within S seconds"
        f" (default {defaults.CONNECT_TIMEOUT:g})",
    )


def _target(args: argparse.Namespace) -> profile.Target:
    return profile.resolve(args.master, args.authkey_file, args.profile)


def _key(args: argparse.Namespace) -> bytes:
    return authkey.load(args.authkey_file or "")


def _client(args: argparse.Namespace) -> Any:
    from taskfleet.client import Client

    target = _target(args)
    return Client(
        target.master, authkey.load(target.authkey_file), connect_timeout=args.connect_timeout
    )


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


# -- commands -------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    authkey.keygen(args.path, force=args.force)
    print(
        f"wrote a new authkey to {args.path} (mode 0600); copy it to every host of the cluster",
        file=sys.stderr,
    )
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    from taskfleet.master import Master

    port = parse_port(args.port)
    example = f"10.0.0.1:{defaults.HTTP_PORT}"
    http = parse_hostport(args.http, "--http", example) if args.http else None
    key = _key(args)
    log.setup()
    master = Master(
        args.bind, port, key, args.journal, args.lease_timeout, log.get("master"), http=http
    )
    master.start()
    master.serve_forever()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from taskfleet.worker import Worker

    target = _target(args)
    key = authkey.load(target.authkey_file)
    host = args.host_label or socket.gethostname()
    name = args.name or f"{host}-{os.getpid()}"
    processes = args.processes or len(os.sched_getaffinity(0)) or 1
    log.setup()
    worker = Worker(
        target.master, key, name, host, processes, args.heartbeat_file, log.get("worker")
    )
    try:
        code = worker.run()
    except TaskfleetError as exc:
        print(f"taskfleet: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    _hard_exit(code)


def _hard_exit(code: int) -> NoReturn:
    """Leave without interpreter teardown: no atexit hook may wait on a dead
    master or a stuck pool. The pool's named semaphores are unlinked first
    (finalizers with priority >= 0 only do that; none of them blocks)."""
    try:
        from multiprocessing import util

        util._run_finalizers(0)  # type: ignore[attr-defined]
    except Exception:  # noqa: S110 - best effort: the resource tracker cleans up anyway
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _read_items(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(
            f"cannot read items file {path}: {reason}",
            "give a readable text file with one item per line",
        ) from None
    items: list[Any] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            items.append(json.loads(text))
        except ValueError:
            items.append(text)  # a bare word is a string item
    if not items:
        raise UsageError(f"items file {path} holds no items", "put one item per line")
    return items


def cmd_submit(args: argparse.Namespace) -> int:
    items = _read_items(args.items_file) if args.items_file else None
    client = _client(args)
    t0 = time.monotonic()
    spec = client.submit(args.job, n=args.range, items=items, chunk_size=args.chunk_size)
    if args.no_wait:
        if args.json:
            _emit(
                {"job_id": spec.id, "job": spec.job, "items": spec.n_items, "chunks": spec.n_chunks}
            )
        else:
            print(spec.id)
        return 0
    print(
        f"job {spec.id}: {spec.job} over {spec.n_items} items in {spec.n_chunks} chunks",
        file=sys.stderr,
    )
    out = sys.stdout
    count = 0
    try:
        for chunk in client.results(spec, timeout=args.timeout):
            count += len(chunk.results)
            if args.json:
                out.write(
                    json.dumps(
                        {"chunk": chunk.index, "items": list(chunk.items), "results": chunk.results}
                    )
                    + "\n"
                )
            else:
                out.writelines(
                    f"{item}\t{result}\n"
                    for item, result in zip(chunk.items, chunk.results, strict=False)
                )
    except TimeoutError as exc:
        raise TaskfleetError(
            f"job {spec.id} not finished: {exc}",
            "it keeps running on the master; follow it with taskfleet status",
        ) from None
    seconds = time.monotonic() - t0
    summary = {
        "job_id": spec.id,
        "job": spec.job,
        "state": "done",
        "items": spec.n_items,
        "results": count,
        "duplicates": client.duplicates,
        "seconds": round(seconds, 3),
        "items_per_s": round(count / seconds, 1) if seconds > 0 else None,
    }
    if args.json:
        _emit(summary)
    else:
        out.flush()
        print(f"job {spec.id} done: {count} results in {seconds:.2f}s", file=sys.stderr)
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    from taskfleet import smoke

    hosts = [h.strip() for h in (args.expect_hosts or "").split(",") if h.strip()]
    report = smoke.run(
        _client(args),
        args.count,
        expect_workers=args.expect_workers or 0,
        expect_hosts=hosts,
        chunk_size=args.chunk_size,
        timeout=args.timeout,
    )
    if args.json:
        _emit(report.as_json())
    else:
        print(
            f"smoke: {report.verified}/{report.count} squares verified in {report.seconds:.2f}s "
            f"({report.items_per_s} items/s) by {len(report.workers)} workers"
            f" on {len(report.hosts)} hosts"
        )
        for host, items in report.hosts.items():
            print(f"  {host}: {items} items")
    if not report.ok:
        print(
            f"taskfleet: error: smoke failed: {'; '.join(report.errors)} — check taskfleet status"
            " and the workers' logs",
            file=sys.stderr,
        )
        return 1
    return 0


#: ``status`` exit codes: the verdict.
STATUS_HEALTHY, STATUS_DEGRADED, STATUS_UNREACHABLE = 0, 1, 2


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the master's view and its health verdict; exit 0 healthy, 1 degraded, 2 when
    the master cannot be reached (or answers nothing usable)."""
    client = _client(args)  # bad input (address, key file) stays a usage error
    try:
        st = client.status()
    except TaskfleetError as exc:
        if args.json:
            _emit(
                {"healthy": False, "problems": [f"master unreachable: {exc.what}"], "master": None}
            )
        exc.exit_code = STATUS_UNREACHABLE
        raise
    doc = health.verdict(st, args.expect_workers or 0)
    code = STATUS_HEALTHY if doc["healthy"] else STATUS_DEGRADED
    if args.json:
        _emit(doc)
        return code
    m = st["master"]
    journal, proc = m.get("journal"), m.get("process")
    extra = ""
    if journal and proc:
        extra = f", memory {_mib(proc['rss_bytes'])}, journal {_mib(journal['bytes'])}"
    if m.get("http"):
        extra += f", dashboard http://{m['http']}/"
    print(f"master {m['address']} up {m['uptime_s']:.0f}s{extra}")
    print(f"workers ({len(st['workers'])}):")
    for w in st["workers"]:
        print(
            f"  {w['name']:<28} host {w['host']:<16}"
            f" heartbeat {w['last_heartbeat_age_s']:5.1f}s ago "
            f"chunks {w['chunks_done']:>7} items {w['items_done']:>10} leased {w['leased']}"
        )
    print(f"jobs ({len(st['jobs'])}):")
    for j in st["jobs"]:
        c = j["chunks"]
        print(
            f"  {j['id']} {j['job']:<12} {j['state']:<8}"
            f" items {j['items_done']}/{j['items_total']} "
            f"chunks pending {c['pending']} leased {c['leased']} done {c['done']}"
        )
    if doc["healthy"]:
        print("healthy")
    else:
        print(f"degraded: {len(doc['problems'])} problem(s)")
        for problem in doc["problems"]:
            print(f"  problem: {problem}")
    return code


def cmd_healthcheck(args: argparse.Namespace) -> int:
    if args.what == "worker":
        path = args.heartbeat_file
        if not path:
            raise UsageError("no heartbeat file given", "pass --heartbeat-file PATH")
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            raise TaskfleetError(
                f"heartbeat file {path} does not exist",
                "the worker has not reached the master yet; see its log",
            ) from None
        if age > args.max_age:
            raise TaskfleetError(
                f"heartbeat file {path} is {age:.0f}s old (limit {args.max_age:g}s)",
                "the worker cannot reach the master; see its log",
            )
        return 0
    info = _client(args).ping()
    print(f"ok: master {info['address']} answers (taskfleet {info['version']})")
    return 0


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taskfleet", description="A deployable distributed task queue.")
    parser.add_argument("--version", action="version", version=f"taskfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("keygen", help="write a new random authkey file (mode 0600)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("master", help="serve the board (jobs, leases, results)")
    p.add_argument(
        "--bind",
        default=defaults.MASTER_BIND,
        metavar="HOST",
        help=f"address to listen on: one of this machine's, or 0.0.0.0"
        f" (default {defaults.MASTER_BIND})",
    )
    p.add_argument(
        "--port",
        default=str(defaults.MASTER_PORT),
        metavar="PORT",
        help=f"default {defaults.MASTER_PORT}",
    )
    _add_authkey_opt(p)
    p.add_argument(
        "--journal", metavar="PATH", help="SQLite journal; jobs resume from it after a restart"
    )
    p.add_argument(
        "--lease-timeout",
        type=_positive_float,
        default=defaults.LEASE_TIMEOUT,
        metavar="S",
        help=f"a worker silent this long loses its leases (default {defaults.LEASE_TIMEOUT:g})",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve read-only HTTP there: the dashboard, /metrics, /healthz, /api/status"
        f" (default: off; deployments use the bind address and port {defaults.HTTP_PORT})",
    )
    p.set_defaults(func=cmd_master)

    p = sub.add_parser("worker", help="run chunks leased from the master")
    _add_master_opts(p)
    p.add_argument(
        "--processes", type=_positive_int, metavar="N", help="pool size (default: one per core)"
    )
    p.add_argument("--name", metavar="NAME", help="worker name (default HOST-LABEL-PID)")
    p.add_argument(
        "--host-label", metavar="LABEL", help="the machine this worker reports (default: hostname)"
    )
    p.add_argument(
        "--heartbeat-file", metavar="PATH", help="touched after every successful heartbeat"
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a job and (by default) print its results")
    p.add_argument(
        "job",
        metavar="JOB",
        help="squares, package.module:function, or a taskfleet.jobs entry point",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--range", type=_positive_int, metavar="N", help="items 0..N-1")
    src.add_argument("--items-file", metavar="F", help="one item per line (JSON values or words)")
    _add_master_opts(p)
    _add_client_opts(p)
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=defaults.CHUNK_SIZE,
        metavar="C",
        help=f"items per chunk (default {defaults.CHUNK_SIZE})",
    )
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="stop waiting after S seconds"
    )
    p.add_argument("--json", action="store_true", help="JSON lines: one per chunk, then a summary")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("smoke", help="squares over range(N), every result checked")
    _add_master_opts(p)
    _add_client_opts(p)
    p.add_argument("--count", type=_positive_int, required=True, metavar="N")
    p.add_argument(
        "--expect-workers",
        type=_positive_int,
        metavar="K",
        help="at least K workers must return results",
    )
    p.add_argument(
        "--expect-hosts", metavar="H1,H2,...", help="each of these hosts must return results"
    )
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        metavar="C",
        help="default: sized so every worker takes part",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=defaults.SMOKE_TIMEOUT,
        metavar="S",
        help=f"default {defaults.SMOKE_TIMEOUT:g}",
    )
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    p.set_defaults(func=cmd_smoke)

    p = sub.add_parser(
        "status",
        help="workers, jobs and the health verdict (exit 0 healthy, 1 degraded, 2 unreachable)",
    )
    _add_master_opts(p)
    _add_client_opts(p)
    p.add_argument(
        "--expect-workers",
        type=_positive_int,
        metavar="K",
        help="fewer than K connected workers is a problem",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object, with 'healthy' and 'problems'"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("healthcheck", help="exit 0 when the master answers / the worker heartbeats")
    hc = p.add_subparsers(dest="what", metavar="master|worker", parser_class=_Parser)
    hc.required = True
    hm = hc.add_parser("master", help="authenticated ping")
    _add_master_opts(hm)
    hm.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=defaults.HEALTHCHECK_CONNECT_TIMEOUT,
        metavar="S",
    )
    hw = hc.add_parser("worker", help="heartbeat file is fresh")
    hw.add_argument("--heartbeat-file", metavar="PATH")
    hw.add_argument(
        "--max-age",
        type=_positive_float,
        default=defaults.HEARTBEAT_MAX_AGE,
        metavar="S",
        help=f"default {defaults.HEARTBEAT_MAX_AGE:g}",
    )
    p.set_defaults(func=cmd_healthcheck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = int(args.func(args))
    except TaskfleetError as exc:
        sys.stdout.flush()
        print(f"taskfleet: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. `taskfleet submit … | head`
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
