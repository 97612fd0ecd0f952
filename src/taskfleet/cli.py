"""``taskfleet`` — the command line (see docs/interfaces.md for the contract).

Every failure is one line on stderr, ``taskfleet: error: <what> — <fix>``,
and a non-zero exit; exit 0 only on success. :func:`error_line` makes that
line, and bounds it (``defaults.MAX_ERROR_LINE``), whatever the error says.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TextIO

from taskfleet import __version__, authkey, defaults, health, log, profile
from taskfleet.address import parse_hostport, parse_port
from taskfleet.errors import (
    ItemError,
    ItemsFailed,
    JobCancelled,
    JobFailed,
    TaskfleetError,
    UsageError,
)
from taskfleet.protocol import JobState, JobView, OnError

if TYPE_CHECKING:
    from taskfleet.client import Client, Job


def error_line(error: BaseException | str) -> str:
    """``taskfleet: error: <what> — <fix>`` on one line of at most ``MAX_ERROR_LINE``
    characters: whitespace runs (newlines too) become one space, and a long *what* is
    cut in the middle (…) — its start says what failed, its end usually why — so that
    the *what to do* stays whole."""
    prefix = "taskfleet: error: "
    what, fix = (error.what, error.fix) if isinstance(error, TaskfleetError) else (str(error), "")
    what, fix = " ".join(str(what).split()), " ".join(str(fix).split())
    most = defaults.MAX_ERROR_LINE - len(prefix)
    if fix:
        fix = fix if len(fix) <= most // 2 else fix[: most // 2 - 1] + "…"
        room = most - len(fix) - 3  # " — "
        return f"{prefix}{_cut(what, room)} — {fix}"
    return prefix + _cut(what, most)


def _cut(text: str, most: int) -> str:
    """``text``, or its first and last parts around "…" in ``most`` characters."""
    if len(text) <= most:
        return text
    tail = (most - 1) * 2 // 5
    return text[: most - 1 - tail] + "…" + text[len(text) - tail :]


def _print_error(error: BaseException | str) -> None:
    sys.stdout.flush()
    print(error_line(error), file=sys.stderr)


def _unlimited_int_text() -> None:
    """Let this process read and print integers of any length (items files, results).

    Python refuses to convert integers beyond 4,300 digits to and from text, a guard
    for servers parsing untrusted input; a client printing its own cluster's results
    needs none (items files still limit integers to ``defaults.MAX_INT_DIGITS``).
    """
    sys.set_int_max_str_digits(0)


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one TaskfleetError line instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see '{self.prog} --help'")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``; raise ValueError."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (use e.g. 90s, 30m, 12h, 7d; 0 for no limit)"
        ) from None


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
        f" env {profile.ENV_PROFILE}); --master/--authkey-file/--tls-* override it",
    )
    _add_tls_opts(p, "the master")


def _add_tls_opts(p: argparse.ArgumentParser, peers: str) -> None:
    """Mutual TLS: all three files, or none for a plaintext cluster (docs/security.md)."""
    g = p.add_argument_group("TLS (all three, or none for a plaintext cluster)")
    g.add_argument(
        "--tls-ca",
        metavar="PATH",
        help=f"the cluster CA's certificate: {peers} must present a certificate it issued"
        f" (env {profile.ENV_TLS['tls_ca']})",
    )
    g.add_argument(
        "--tls-cert",
        metavar="PATH",
        help=f"this machine's certificate, issued by that CA (env {profile.ENV_TLS['tls_cert']})",
    )
    g.add_argument(
        "--tls-key",
        metavar="PATH",
        help=f"the certificate's private key, mode 0600 or 0400 (env {profile.ENV_TLS['tls_key']})",
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
    return profile.resolve(
        args.master,
        args.authkey_file,
        args.profile,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _key(args: argparse.Namespace) -> bytes:
    return authkey.load(args.authkey_file or "")


def _client(args: argparse.Namespace) -> Client:
    from taskfleet.client import Client

    target = _target(args)
    key = authkey.load(target.authkey_file)
    if target.tls is not None:
        target.tls.check()  # a bad file is one line now, not a failed connection later
    return Client(target.master, key, connect_timeout=args.connect_timeout, tls=target.tls)


def _emit(obj: Mapping[str, Any]) -> None:
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
    tls = profile.resolve_tls(args.tls_ca, args.tls_cert, args.tls_key)
    if tls is not None:
        tls.check()
    log.setup()
    master = Master(
        args.bind,
        port,
        key,
        args.journal,
        args.lease_timeout,
        log.get("master"),
        keep_jobs=args.keep_jobs,
        keep_for=args.keep_for,
        tls=tls,
        http=http,
    )
    master.start()
    master.serve_forever()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from taskfleet.worker import Worker

    target = _target(args)
    key = authkey.load(target.authkey_file)
    if target.tls is not None:
        target.tls.check()
    host = args.host_label or socket.gethostname()
    name = args.name or f"{host}-{os.getpid()}"
    processes = args.processes or len(os.sched_getaffinity(0)) or 1
    log.setup()
    worker = Worker(
        target.master,
        key,
        name,
        host,
        processes,
        args.heartbeat_file,
        log.get("worker"),
        tls=target.tls,
    )
    try:
        code = worker.run()
    except TaskfleetError as exc:
        _print_error(exc)
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


def _read_items(path: str) -> Iterator[Any]:
    """The items of an items file, read line by line as they are sent (never the whole
    file at once). The file is opened now, so a missing one fails before any connection.

    One item per line: a JSON value, or else the line as a string (a bare word);
    blank lines are skipped. Raises UsageError (the file, the line, the fix).
    """
    try:
        fh = open(path, "rb")  # closed by the generator below
    except OSError as exc:
        raise UsageError(
            f"cannot read items file {path}: {exc.strerror}",
            "give a readable text file with one item per line",
        ) from None
    return _parse_items(path, fh)


# A block of lines that are all plain integers (JSON's form, up to 18 digits: no leading
# zeros, no sign but "-"): converted in one C-level pass instead of line by line.
_PLAIN_INTS = re.compile(rb"(?:-?(?:0|[1-9][0-9]{0,17})\n)*")
_BLOCK = 1 << 16  # larger blocks are no faster, and fragment the heap (measured)


def _parse_items(path: str, fh: BinaryIO) -> Iterator[Any]:
    count = lineno = 0
    with fh:
        rest = b""
        while True:
            data = fh.read(_BLOCK)
            block = rest + data
            if data:  # whole lines only; the rest waits for the next block
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
            elif block and not block.endswith(b"\n"):
                block += b"\n"
            if not block:
                if not data:
                    break
                continue
            lines = block.count(b"\n")
            if _PLAIN_INTS.fullmatch(block):
                items: list[Any] = list(map(int, block.split()))
            else:
                items = [
                    _item(path, lineno + k, text)
                    for k, text in enumerate(_lines(path, lineno, block), 1)
                    if text
                ]
            lineno += lines
            count += len(items)
            yield from items
            if not data:
                break
    if not count:
        raise UsageError(f"items file {path} holds no items", "put one item per line")


def _lines(path: str, before: int, block: bytes) -> Iterator[str]:
    """The stripped text of each line of ``block`` (line ``before + 1`` first)."""
    for k, raw in enumerate(block.split(b"\n")[:-1], before + 1):
        try:
            yield raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UsageError(
                f"cannot read items file {path}: line {k} is not UTF-8 text",
                "give a text file with one item per line",
            ) from None


def _item(path: str, lineno: int, text: str) -> Any:
    """One line's item. Integers take a fast path (no JSON parser), with JSON's rules:
    no leading zeros (``007`` is the string "007"), at most MAX_INT_DIGITS digits."""
    digits = text[1:] if text[0] == "-" else text
    if digits.isdigit() and digits.isascii() and (digits[0] != "0" or len(digits) == 1):
        if len(digits) > defaults.MAX_INT_DIGITS:
            raise UsageError(
                f"items file {path}, line {lineno}: an integer of {len(digits):,} digits;"
                f" an items file may hold integers of at most {defaults.MAX_INT_DIGITS:,}",
                "split such numbers, or submit them from Python (taskfleet.connect)",
            )
        return int(text)
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string item


class _ProgressLine:
    """``done/total items, items/s, ETA`` on stderr, rewritten in place; only on a terminal."""

    def __init__(self, job_id: str, stream: TextIO, *, enabled: bool = True) -> None:
        self.job_id = job_id
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.t0 = time.monotonic()
        self.shown = False

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        elapsed = max(1e-6, time.monotonic() - self.t0)
        rate = done / elapsed
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and done < total else "-"
        pct = 100.0 * done / max(1, total)
        self.stream.write(
            f"\r\x1b[Kjob {self.job_id}: {done}/{total} items ({pct:.1f}%),"
            f" {rate:,.0f} items/s, ETA {eta}"
        )
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def _wait(client: Client, job: Job, deadline: float | None, progress: _ProgressLine) -> str:
    """Wait until the job finishes, updating the progress line; return its state.

    Raises TimeoutError at ``deadline`` (a ``time.monotonic()`` value): the job is still
    running, or the master did not answer in time.
    """
    step = defaults.PROGRESS_INTERVAL if progress.enabled else defaults.MAX_FETCH_WAIT
    try:
        while True:
            wait = step
            if deadline is not None:
                wait = max(0.0, min(step, deadline - time.monotonic()))
            view = client.board.wait(
                job.id,
                wait,
                timeout=client.call_timeout + wait,
                deadline=None if deadline is None else deadline + defaults.DEADLINE_GRACE,
            )
            if JobState(view["state"]).finished:
                return view["state"]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"still {view['state']}, {view['items_done']}/{view['items_total']} items done"
                )
            progress.update(view["items_done"], view["items_total"])
    finally:
        progress.end()


def _error_json(e: ItemError) -> dict[str, Any]:
    return {"index": e.index, "item": e.item, "kind": e.kind, "type": e.type, "message": e.message}


def _print_results(
    job: Job, as_json: bool, out: TextIO, timeout: float | None, progress: _ProgressLine
) -> tuple[int, int]:
    """Stream the job's results in input order; return (results printed, items failed).

    Text: ``item<TAB>result`` lines (a failed item has no line). JSON: one line per
    chunk, ``null`` in a failed item's place and an ``errors`` list.
    Raises JobFailed/JobCancelled at the first result that will never come.
    """
    count = failed = 0
    total = job.spec.n_items
    try:
        for chunk in job.chunks(ordered=True, timeout=timeout):
            if as_json:
                line: dict[str, Any] = {
                    "chunk": chunk.index,
                    "items": list(chunk.items),
                    "results": chunk.results,
                }
                if chunk.failed:
                    errs = [r for r in chunk.results if isinstance(r, ItemError)]
                    line["results"] = [
                        None if isinstance(r, ItemError) else r for r in chunk.results
                    ]
                    line["errors"] = [_error_json(e) for e in errs]
                out.write(json.dumps(line) + "\n")
                count += len(chunk.results) - chunk.failed
            elif not chunk.failed:  # one write per chunk: millions of lines stay cheap
                lines = [f"{i}\t{r}\n" for i, r in zip(chunk.items, chunk.results, strict=True)]
                out.write("".join(lines))
                count += len(chunk.results)
            else:
                for item, result in zip(chunk.items, chunk.results, strict=False):
                    if isinstance(result, ItemError):
                        continue
                    out.write(f"{item}\t{result}\n")
                    count += 1
            failed += chunk.failed
            progress.update(chunk.index * job.spec.chunk_size + len(chunk.items), total)
    finally:
        progress.end()
    out.flush()
    return count, failed


def _finish(
    job: Job, args: argparse.Namespace, t0: float, count: int, failed: int, view: JobView
) -> int:
    """The summary line (--json) and the exit code: 0 every item succeeded, 3 some items
    failed (on_error=skip), 1 the job failed or was cancelled."""
    seconds = time.monotonic() - t0
    state = view["state"]
    failed = max(failed, view.get("items_failed", 0))
    if args.json:
        _emit(
            {
                "job_id": job.id,
                "job": job.name,
                "state": state,
                "items": view["items_total"],
                "results": count,
                "failed": failed,
                # chunks the stream received twice (by design none: results are read
                # by chunk index); the master's own count is in `taskfleet job`
                "duplicates": job.duplicates,
                "seconds": round(seconds, 3),
                "items_per_s": round(count / seconds, 1) if seconds > 0 else None,
            }
        )
    if state == JobState.FAILED:
        raise job.failure(view)
    if state == JobState.CANCELLED:
        raise JobCancelled(
            f"job {job.id} was cancelled ({view['items_done']}/{view['items_total']} items done)",
            "submit it again to run it",
        )
    if failed:
        raise ItemsFailed(
            f"job {job.id}: {failed} of {view['items_total']} items failed",
            f"taskfleet job {job.id} lists them with their tracebacks",
        )
    if not args.json:
        print(f"job {job.id} done: {count} results in {seconds:.2f}s", file=sys.stderr)
    return 0


def _not_finished(job: Job, timeout: float, exc: TimeoutError) -> TaskfleetError:
    return TaskfleetError(
        f"job {job.id} not finished within --timeout {timeout:g}s ({exc})",
        f"it keeps running on the master; follow it with taskfleet job {job.id}",
    )


def cmd_submit(args: argparse.Namespace) -> int:
    _unlimited_int_text()
    items: Any = _read_items(args.items_file) if args.items_file else range(args.range)
    client = _client(args)
    t0 = time.monotonic()
    deadline = None if args.timeout is None else t0 + args.timeout
    try:
        job = client.submit(
            args.job,
            items,
            chunk_size=args.chunk_size,
            retries=args.retries,
            on_error=args.on_error,
            item_timeout=args.item_timeout,
            timeout=args.timeout,
        )
    except TimeoutError as exc:
        raise TaskfleetError(
            f"the job was not submitted within --timeout {args.timeout:g}s ({exc})",
            "check the master (taskfleet status), then submit again",
        ) from None
    spec = job.spec
    if args.no_wait:
        if args.json:
            _emit(
                {"job_id": job.id, "job": spec.job, "items": spec.n_items, "chunks": spec.n_chunks}
            )
        else:
            print(job.id)
        return 0
    code = f" ({spec.code_version})" if spec.code_version else ""
    print(
        f"job {job.id}: {spec.job}{code} over {spec.n_items} items in {spec.n_chunks} chunks",
        file=sys.stderr,
    )
    progress = _ProgressLine(job.id, sys.stderr)
    count = failed = 0
    try:
        if args.partial:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                count, failed = _print_results(job, args.json, sys.stdout, left, progress)
            except (JobFailed, JobCancelled):
                pass  # the summary and the error line follow
        else:
            # Nothing is printed of a job that then fails: wait, then read the results.
            state = _wait(client, job, deadline, progress)
            if state == JobState.DONE:
                quiet = _ProgressLine(job.id, sys.stderr, enabled=False)
                count, failed = _print_results(job, args.json, sys.stdout, None, quiet)
    except TimeoutError as exc:
        raise _not_finished(job, args.timeout, exc) from None
    return _finish(job, args, t0, count, failed, job.info())


def cmd_results(args: argparse.Namespace) -> int:
    _unlimited_int_text()
    client = _client(args)
    t0 = time.monotonic()
    job = client.job(args.job_id)
    count = failed = 0
    try:
        count, failed = _print_results(
            job, args.json, sys.stdout, args.timeout, _ProgressLine(job.id, sys.stderr)
        )
    except (JobFailed, JobCancelled):
        pass
    except TimeoutError as exc:
        raise _not_finished(job, args.timeout, exc) from None
    return _finish(job, args, t0, count, failed, job.info())


def _age(when: float | None) -> str:
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def cmd_jobs(args: argparse.Namespace) -> int:
    listed = _client(args).board.jobs(args.limit)
    if args.json:
        _emit(listed)
        return 0
    jobs = listed["jobs"]
    print(f"{'ID':<14} {'JOB':<24} {'STATE':<10} {'ITEMS DONE/TOTAL':>21} {'FAILED':>7}  SUBMITTED")
    for j in jobs:
        done = f"{j['items_done']}/{j['items_total']}"
        print(
            f"{j['id']:<14} {j['job'][:24]:<24} {j['state']:<10} {done:>21}"
            f" {j.get('items_failed', 0):>7}  {_age(j.get('created'))}"
        )
    if listed["total"] > len(jobs):
        print(
            f"({len(jobs)} newest of {listed['total']} jobs; --limit N lists more)",
            file=sys.stderr,
        )
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    client = _client(args)
    board = client.board
    _, view = board.job(args.job_id)
    errors = board.errors(args.job_id, defaults.MAX_JOB_ERRORS)
    if args.json:
        _emit({**view, "errors": errors})
        return 0
    c = view["chunks"]
    timeout = view.get("item_timeout")
    print(f"job {view['id']}: {view['job']}")
    print(f"  code       {view.get('code_version') or 'unknown'}")
    print(f"  state      {view['state']}" + (f" — {view['error']}" if view.get("error") else ""))
    print(
        f"  items      {view['items_done']}/{view['items_total']} done,"
        f" {view.get('items_failed', 0)} failed"
        f" (chunks: {c['pending']} pending, {c['leased']} running, {c['done']} done)"
    )
    print(
        f"  options    retries {view.get('retries')}, on error {view.get('on_error')},"
        f" item timeout {f'{timeout:g}s' if timeout else 'none'}"
    )
    print(f"  submitted  {_age(view.get('created'))}")
    print(f"  finished   {_age(view.get('finished'))}")
    print(f"  errors     {len(errors)}")
    for e in errors:
        what = f"{e['type']}: {e['message']}" if e["type"] else e["message"]
        retried = "" if e["final"] else ", retried"
        print(
            f"\n  item {e['index']} ({e['item']}) — {e['kind']}, chunk {e['chunk']},"
            f" attempt {e['attempt']}{retried}, worker {e['worker']} on {e['host']}"
        )
        print(f"    {what}")
        for line in e["traceback"].rstrip().splitlines():
            print(f"    | {line}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).job(args.job_id)
    if not job.cancel():
        raise TaskfleetError(f"job {job.id} already finished ({job.state})", "nothing to cancel")
    view = job.info()
    print(f"job {job.id} cancelled ({view['items_done']}/{view['items_total']} items were done)")
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
        _print_error(
            TaskfleetError(
                f"smoke failed: {'; '.join(report.errors)}",
                "check taskfleet status and the workers' logs",
            )
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
        packages = w.get("job_packages") or {}
        if packages:
            print("    jobs " + ", ".join(f"{n} {v}" for n, v in packages.items()))
    print(f"jobs ({len(st['jobs'])}):")
    for j in st["jobs"]:
        c = j["chunks"]
        print(
            f"  {j['id']} {j['job']:<12} {j['state']:<9}"
            f" items {j['items_done']}/{j['items_total']} "
            f"chunks pending {c['pending']} leased {c['leased']} done {c['done']}"
            + (f" code {j['code_version']}" if j.get("code_version") else "")
        )
    if doc.get("jobs_not_listed"):
        print(f"  … and {doc['jobs_not_listed']} older finished jobs (taskfleet jobs lists them)")
    if doc["healthy"]:
        print("healthy")
    else:
        print(f"degraded: {len(doc['problems'])} problem(s)")
        for problem in doc["problems"]:
            print(f"  problem: {problem}")
    return code


def cmd_journal_check(args: argparse.Namespace) -> int:
    from taskfleet import recovery

    report = recovery.inspect(args.path)
    if args.json:
        _emit(report.as_json())
        return 0 if report.intact else 1
    kinds = {
        "journal": "a taskfleet journal",
        "foreign": "an SQLite database, not a taskfleet journal",
        "unreadable": "an SQLite file that SQLite cannot read",
        "not-sqlite": "not an SQLite database",
        "empty": "an empty file",
    }
    state = "intact" if report.intact else "DAMAGED" if report.kind == "journal" else "unusable"
    wal = f" (and {report.wal_bytes:,} in its -wal file)" if report.wal_bytes else ""
    print(f"{report.path}: {kinds[report.kind]}, {report.bytes:,} bytes{wal} — {state}")
    if report.held_by is not None:
        print(f"  in use by a master ({report.held_by})")
    for problem in report.problems:
        print(f"  problem: {problem}")
    for table, rows in report.tables.items():
        print(f"  {table:<12} {rows.readable:>10,} rows readable, {rows.unreadable:,} not")
    for j in report.jobs:
        items = "?" if j.items is None else f"{j.items:,}"
        chunks = "?" if j.chunks is None else f"{j.chunks:,}"
        stored = f", stored items of {j.stored_chunks:,}" if j.stored_chunks else ""
        print(
            f"  job {j.id} {j.job} {j.state}: {items} items in {chunks} chunks;"
            f" results of {j.results:,}{stored}"
        )
    if not report.intact:
        if report.recoverable:
            print(
                f"what to do: taskfleet journal export {args.path} > recovered.jsonl writes"
                " what can be read; then start the master on a new journal"
            )
        else:
            print("what to do: nothing here can be recovered; start the master on a new journal")
    return 0 if report.intact else 1


def cmd_journal_export(args: argparse.Namespace) -> int:
    from taskfleet import recovery

    _unlimited_int_text()
    if args.output:
        try:
            out: TextIO = open(args.output, "x", encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot create {args.output}: {exc.strerror}",
                "give a new file in a writable directory (an existing one is never replaced)",
            ) from None
    else:
        out = sys.stdout
    try:
        report = recovery.export(args.path, out)
    finally:
        if out is not sys.stdout:
            out.close()
    counts = ", ".join(f"{t} {r.readable:,}" for t, r in report.tables.items())
    lost = sum(r.unreadable for r in report.tables.values())
    note = f"; {lost:,} rows could not be read" if lost else ""
    state = "intact" if report.intact else "damaged"
    print(f"exported from {args.path} ({state}): {counts}{note}", file=sys.stderr)
    return 0


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
    _add_tls_opts(p, "every worker and client")
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
    p.add_argument(
        "--keep-jobs",
        type=_non_negative_int,
        default=defaults.KEEP_JOBS,
        metavar="N",
        help="finished jobs kept with their results; older ones are pruned"
        f" (default {defaults.KEEP_JOBS}; 0: no limit)",
    )
    p.add_argument(
        "--keep-for",
        type=_duration,
        default=defaults.KEEP_FOR,
        metavar="DURATION",
        help="prune a finished job this long after it finished, e.g. 12h, 7d"
        " (default 7d; 0: no limit)",
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
    p.add_argument(
        "--retries",
        type=_non_negative_int,
        default=defaults.RETRIES,
        metavar="N",
        help=f"times a failed chunk runs again, on another worker when one is connected"
        f" (default {defaults.RETRIES})",
    )
    p.add_argument(
        "--on-error",
        choices=[e.value for e in OnError],
        default=defaults.ON_ERROR,
        help="after the retries: fail the job, or skip the failed items and go on"
        f" (default {defaults.ON_ERROR})",
    )
    p.add_argument(
        "--item-timeout",
        type=_positive_float,
        metavar="S",
        help="an item running longer than S seconds fails (its pool process is replaced)",
    )
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument(
        "--partial",
        action="store_true",
        help="print results as they arrive, even of a job that then fails"
        " (default: only once the job is done)",
    )
    p.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="stop waiting after S seconds"
    )
    p.add_argument("--json", action="store_true", help="JSON lines: one per chunk, then a summary")
    p.set_defaults(func=cmd_submit)

    def client_command(name: str, help_: str, func: Any, *, job_id: bool = True) -> Any:
        """A subcommand that talks to the master (about one job: ``JOB_ID`` first)."""
        cp = sub.add_parser(name, help=help_)
        if job_id:
            cp.add_argument("job_id", metavar="JOB_ID")
        _add_master_opts(cp)
        _add_client_opts(cp)
        cp.set_defaults(func=func)
        return cp

    p = client_command("jobs", "the newest jobs first", cmd_jobs, job_id=False)
    p.add_argument(
        "--limit",
        type=_non_negative_int,
        default=defaults.JOBS_LIMIT,
        metavar="N",
        help=f"list at most N jobs (default {defaults.JOBS_LIMIT})",
    )
    p.add_argument("--json", action="store_true", help='one JSON object: {"jobs": […], "total"}')

    p = client_command("job", "one job: state, progress, errors with their tracebacks", cmd_job)
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = client_command(
        "results", "a job's results in input order (also once it finished)", cmd_results
    )
    p.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="stop waiting after S seconds"
    )
    p.add_argument("--json", action="store_true", help="JSON lines: one per chunk, then a summary")

    client_command("cancel", "cancel a pending or running job", cmd_cancel)

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

    p = sub.add_parser("journal", help="what can be recovered from a journal file (read-only)")
    jr = p.add_subparsers(dest="what", metavar="check|export", parser_class=_Parser)
    jr.required = True
    jc = jr.add_parser("check", help="what the file is, and what of it can be read")
    jc.add_argument("path", metavar="PATH")
    jc.add_argument("--json", action="store_true", help="one JSON object")
    jc.set_defaults(func=cmd_journal_check)
    je = jr.add_parser("export", help="everything readable as JSON lines (jobs, items, results)")
    je.add_argument("path", metavar="PATH")
    je.add_argument("--output", metavar="FILE", help="write to a new FILE (default: stdout)")
    je.set_defaults(func=cmd_journal_export)

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
        _print_error(exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. `taskfleet submit … | head`
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
