"""Day-two operations on a deployed cluster: status, logs, scale, restart, smoke, down.

Each operation takes an ``Inventory``, works on its hosts over SSH (``ssh``)
with the commands from ``commands``, prints tables (or JSON) and returns the
process exit status: 0 only when every host succeeded. A failing host never
stops the others; each operation ends with a per-host summary.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from fabric import Connection
from rich.console import Console
from rich.table import Table

from taskfleet.ops import verdict
from taskfleet.ops.commands import (
    JOURNAL_DIR,
    MASTER_CONTAINER,
    STOP_TIMEOUT,
    HostCommands,
    sh,
    worker_index,
    worker_name,
)
from taskfleet.ops.containers import (
    Container,
    master_address,
    master_tls,
    parse_containers,
    workers_of,
)
from taskfleet.ops.errors import HostError, OpsError, print_error
from taskfleet.ops.inventory import Host, Inventory, make_setting
from taskfleet.ops.ssh import HostResult, PrefixWriter, connect, explain, run, run_on_hosts, run_one

#: How long scale/restart wait for containers to be healthy and seen by the master.
READY_TIMEOUT = 180.0
POLL_INTERVAL = 1.0
#: Finished jobs shown in the status table (the JSON has the master's 20 latest).
SHOWN_DONE = 5

out = Console(highlight=False, soft_wrap=True)


def list_containers(conn: Connection, host: Host) -> list[Container]:
    return parse_containers(run(conn, HostCommands(host).inspect_managed()))


def _make(inv: Inventory, args: str) -> str:
    """``make <args>`` for the inventory these operations run on (INVENTORY= when needed)."""
    return f"make {args}{make_setting(inv.source)}"


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise OpsError(f"expected a JSON line from taskfleet, got: {text.strip()[-200:]!r}")


def query_master(
    conn: Connection, inv: Inventory, address: str, timeout: float = 30, tls: Sequence[str] = ()
) -> dict[str, Any]:
    """The master's own view with its verdict (``taskfleet status --json`` run inside its
    container: exit 0 healthy or 1 degraded, both with the document).

    Raises HostError with the CLI's own line when the master cannot be reached.
    """
    command = sh(HostCommands(inv.master).master_status(address, tls))
    result = conn.run(command, hide=True, in_stream=False, timeout=timeout, warn=True)
    if result.exited not in (0, 1):
        lines = [ln for ln in (result.stderr or result.stdout or "").splitlines() if ln.strip()]
        raise HostError(lines[-1] if lines else f"`{command}` failed (exit {result.exited})")
    return _last_json(result.stdout)


def fresh_workers(status: Mapping[str, Any], max_age: float, host: str | None = None) -> int:
    """Workers the master heard from within ``max_age`` seconds (on ``host`` if given)."""
    return sum(
        1
        for w in status.get("workers", [])
        if (host is None or w.get("host") == host)
        and float(w.get("last_heartbeat_age_s", 1e9)) <= max_age
    )


# --- output ------------------------------------------------------------------------------


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def summary(
    title: str, results: Sequence[HostResult[Any]], detail: Callable[[Any], str] = lambda v: ""
) -> int:
    """Print the per-host summary; return 0 if every host succeeded, else 1."""
    table = Table(title=title, title_justify="left")
    for column in ("HOST", "RESULT", "TIME", "DETAIL"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.host,
            "[green]ok[/]" if r.ok else "[red]FAILED[/]",
            f"{r.seconds:.1f}s",
            detail(r.value) if r.ok else (r.error or ""),
        )
    out.print(table)
    failed = [r.host for r in results if not r.ok]
    if failed:
        print_error(
            f"{len(failed)} of {len(results)} host(s) failed: {', '.join(failed)} — "
            "see DETAIL above"
        )
        return 1
    return 0


def _roles(inv: Inventory, host: Host) -> list[str]:
    roles = []
    if host.name == inv.master.name:
        roles.append("master")
    if any(w.name == host.name for w in inv.workers):
        roles.append("workers")
    return roles


# --- status ------------------------------------------------------------------------------


def collect_status(inv: Inventory) -> dict[str, Any]:
    """Everything ``status`` shows, as the JSON document ``status --json`` prints."""

    def one(conn: Connection, host: Host) -> dict[str, Any]:
        containers = list_containers(conn, host)
        view: dict[str, Any] = {"containers": containers}
        if host.name == inv.master.name:
            view["master_address"] = master_address(inv, containers)
            try:
                view["master"] = query_master(
                    conn, inv, view["master_address"], tls=master_tls(containers)
                )
            except Exception as exc:  # reported as the master's view error
                view["master_error"] = explain(host, exc)
        return view

    results = run_on_hosts(inv.all, one)
    doc: dict[str, Any] = {
        "inventory": inv.source,
        "hosts": [],
        "master": None,
        "master_address": None,
        "master_error": None,
    }
    for host, r in zip(inv.all, results, strict=True):
        entry: dict[str, Any] = {
            "host": host.name,
            "address": host.address,
            "roles": _roles(inv, host),
            "ok": r.ok,
            "error": r.error,
            "containers": [],
            "workers_running": 0,
        }
        if r.ok and r.value is not None:
            containers = r.value["containers"]
            entry["containers"] = [
                {k: v for k, v in asdict(c).items() if k != "args"} for c in containers
            ]
            entry["workers_running"] = sum(1 for c in workers_of(containers) if c.running)
            if "master_address" in r.value:
                doc["master_address"] = r.value["master_address"]
                doc["master"] = r.value.get("master")
                doc["master_error"] = r.value.get("master_error")
        doc["hosts"].append(entry)
    if doc["master"] is None and doc["master_error"] is None:
        doc["master_error"] = "the master host failed (see above)"
    doc["problems"] = verdict.problems(doc)
    doc["healthy"] = not doc["problems"]
    doc["ok"] = doc["healthy"]  # the name before the verdict existed; same meaning
    return doc


def _state(c: Mapping[str, Any]) -> str:
    state = str(c["state"])
    if state == "exited" and c.get("exit_code") is not None:
        return f"[red]exited ({c['exit_code']})[/]"
    return state if state == "running" else f"[red]{state}[/]"


def containers_table(title: str, containers: Sequence[Mapping[str, Any]]) -> Table:
    """One host's containers for ``make status``."""
    table = Table(title=title, title_justify="left")
    # Container names whole, however narrow the terminal (or a pipe's 80 columns):
    # the other columns wrap first.
    longest = max((len(c["name"]) for c in containers), default=9)
    table.add_column("CONTAINER", no_wrap=True, min_width=longest)
    for column in ("ROLE", "STATE", "HEALTH", "RESTARTS", "IMAGE TAG", "UPTIME"):
        table.add_column(column)
    for c in containers:
        health = c["health"]
        colour = {"healthy": "green", "unhealthy": "red", "starting": "yellow"}.get(health)
        restarts = c.get("restart_count", 0)
        table.add_row(
            c["name"],
            c["role"],
            _state(c),
            f"[{colour}]{health}[/]" if colour else health,
            f"[yellow]{restarts}[/]" if restarts else "0",
            c["tag"],
            human_duration(c["uptime_s"]),
        )
    if not containers:
        table.add_row("(no taskfleet containers)", "", "", "", "", "", "")
    return table


def status(inv: Inventory, as_json: bool = False) -> int:
    """Print per-host container tables, the master's view and the verdict.

    Returns 0 healthy, 1 degraded (each problem printed, one line), 2 when the
    master's view could not be had (see ``taskfleet.ops.verdict``).
    """
    doc = collect_status(inv)
    code = verdict.exit_code(doc)
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
        return code
    for h in doc["hosts"]:
        title = (
            f"{h['host']} ({h['address']}, {'+'.join(h['roles'])}) — "
            f"{h['workers_running']} worker(s) running"
        )
        if not h["ok"]:
            out.print(f"[bold]{title.split(' — ')[0]}[/]: [red]{h['error']}[/]")
            continue
        out.print(containers_table(title, h["containers"]))
    master = doc["master"]
    if master is None:
        out.print(f"[bold]master's view[/]: [red]{doc['master_error']}[/]")
    else:
        workers = master.get("workers", [])
        per_host: dict[str, int] = {}
        for w in workers:
            per_host[w.get("host", "?")] = per_host.get(w.get("host", "?"), 0) + 1
        hosts_txt = ", ".join(f"{k}: {v}" for k, v in sorted(per_host.items())) or "none"
        info = master.get("master", {})
        out.print(
            f"[bold]master's view[/] ({info.get('address', doc.get('master_address'))}, "
            f"up {human_duration(info.get('uptime_s'))}): "
            f"{len(workers)} worker(s) connected ({hosts_txt})"
        )
        jobs = Table(title="jobs", title_justify="left")
        for column in ("JOB", "NAME", "STATE", "PENDING", "LEASED", "DONE", "ITEMS"):
            jobs.add_column(column)
        all_jobs = master.get("jobs", [])
        # Every pending or running job, but only the latest finished ones.
        active = ("pending", "running")
        done = [j for j in all_jobs if j.get("state") not in active]
        shown = [j for j in all_jobs if j.get("state") in active or j in done[-SHOWN_DONE:]]
        for j in shown:
            chunks = j.get("chunks", {})
            jobs.add_row(
                str(j.get("id", "?")),
                str(j.get("job", "?")),
                str(j.get("state", "?")),
                str(chunks.get("pending", 0)),
                str(chunks.get("leased", 0)),
                str(chunks.get("done", 0)),
                f"{j.get('items_done', 0)}/{j.get('items_total', '?')}",
            )
        if all_jobs:
            out.print(jobs)
            hidden = len(all_jobs) - len(shown) + int(master.get("jobs_not_listed", 0))
            if hidden:
                out.print(
                    f"({hidden} older finished job(s) not shown; "
                    "taskfleet jobs on the master lists them)"
                )
        else:
            out.print("no jobs")
    if doc["healthy"]:
        out.print("[bold green]healthy[/]")
        return code
    out.print(f"[bold yellow]degraded: {len(doc['problems'])} problem(s)[/]")
    for problem in doc["problems"]:
        out.print(f"  problem: {problem}", markup=False)
    print_error(
        f"the cluster is not healthy ({len(doc['problems'])} problem(s) above)"
        f" — `{_make(inv, 'logs')}` shows what the containers say"
    )
    return code


# --- logs --------------------------------------------------------------------------------


def logs(
    inv: Inventory,
    host: str | None = None,
    since: str | None = None,
    follow: bool = False,
    tail: int | None = None,
) -> int:
    """Print master and worker logs, each line prefixed ``<host>/<container> | ``."""
    hosts = [inv.host(host)] if host else list(inv.all)
    lock = threading.Lock()

    def one(conn: Connection, h: Host) -> int:
        names = [c.name for c in list_containers(conn, h)]
        writer = PrefixWriter(f"{h.name}/", sys.stdout, lock)
        # in_stream=False: nothing is ever written to the remote stdin, so a followed
        # script's `read` returns only when this session ends (see HostCommands.logs).
        conn.run(
            HostCommands(h).logs(names, since, follow, tail),
            hide=False,
            in_stream=False,
            out_stream=writer,
            err_stream=writer,
            timeout=None if follow else 300,
            warn=follow,
        )
        writer.close()
        return len(names)

    if not follow:
        results = run_on_hosts(hosts, one)
        failed = [r for r in results if not r.ok]
        for r in failed:
            print_error(f"{r.host}: {r.error}")
        return 1 if failed else 0

    # Following never ends by itself: one thread per host (all at once); Ctrl-C closes
    # every connection, which ends the remote scripts, and lets the threads finish.
    conns = {h.name: connect(h) for h in hosts}
    errors: dict[str, str] = {}
    stopping = threading.Event()

    def follow_one(h: Host) -> None:
        try:
            one(conns[h.name], h)
        except Exception as exc:  # one host's failure must not stop the others
            if not stopping.is_set():
                errors[h.name] = explain(h, exc)
                print_error(f"{h.name}: {errors[h.name]}")

    threads = [threading.Thread(target=follow_one, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        stopping.set()
        return 130
    finally:
        for conn in conns.values():
            conn.close()
        for t in threads:
            t.join(timeout=5)
    return 1 if errors else 0


# --- scale -------------------------------------------------------------------------------


def wait_ready(
    conn: Connection,
    host: Host,
    names: Sequence[str],
    timeout: float = READY_TIMEOUT,
    see_logs: str = "make logs",
) -> list[Container]:
    """Wait until every named container is running (and healthy if it has a healthcheck).

    Raises HostError naming the laggards (and ``see_logs``, where to look) when
    ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = {c.name: c for c in list_containers(conn, host)}
        laggards = [n for n in names if n not in found or not found[n].ready]
        if not laggards:
            return [found[n] for n in names]
        if time.monotonic() > deadline:
            states = ", ".join(
                f"{n}: {found[n].state}/{found[n].health}" if n in found else f"{n}: missing"
                for n in laggards
            )
            raise HostError(f"not ready after {timeout:.0f}s ({states})", f"see `{see_logs}`")
        time.sleep(POLL_INTERVAL)


def scale_host(
    conn: Connection, inv: Inventory, host: Host, count: int, timeout: float = READY_TIMEOUT
) -> dict[str, Any]:
    """Make ``host`` run exactly workers 1..count: drain and remove the ones above
    ``count`` (SIGTERM, ``docker stop -t 30``), create missing ones as clones of the
    lowest-numbered existing worker, start stopped ones, then wait until ready."""
    c = HostCommands(host)
    workers = workers_of(list_containers(conn, host))
    if not workers:
        raise HostError(
            f"no taskfleet-worker container on {host.name} to copy settings from",
            f"run `{_make(inv, 'deploy')}` to create the workers first",
        )
    before = sum(1 for w in workers if w.running)
    by_index = {worker_index(w.name): w for w in workers}
    extra = sorted(
        (w.name for i, w in by_index.items() if i is not None and i > count),
        key=lambda n: worker_index(n) or 0,
        reverse=True,
    )
    missing = [worker_name(i) for i in range(1, count + 1) if i not in by_index]
    stopped = [
        by_index[i].name for i in range(1, count + 1) if i in by_index and not by_index[i].running
    ]

    if extra:
        run(conn, c.stop(extra), timeout=STOP_TIMEOUT + 60)
        run(conn, c.remove(extra))
    if missing:
        template = json.loads(run(conn, c.inspect([workers[0].name])))[0]
        image = json.loads(run(conn, c.inspect_image(template["Config"]["Image"])))[0]
        for name in missing:
            run(conn, c.clone_run(template, image, name))
    if stopped:
        run(conn, c.start(stopped))
    names = [worker_name(i) for i in range(1, count + 1)]
    wait_ready(conn, host, names, timeout, _make(inv, f"logs HOST={host.name}"))
    return {
        "before": before,
        "after": count,
        "created": missing,
        "removed": extra,
        "started": stopped,
    }


def scale(
    inv: Inventory, count: int, host: str | None = None, timeout: float = READY_TIMEOUT
) -> int:
    """Set the number of worker containers on every worker host (or on ``host``)."""
    if count < 1:
        raise OpsError(
            f"scale: N must be at least 1, got {count}", "use `down` to remove every container"
        )
    hosts = [inv.worker(host)] if host else list(inv.workers)
    results = run_on_hosts(hosts, lambda c, h: scale_host(c, inv, h, count, timeout))
    return summary(
        f"scale to {count} worker(s) per host",
        results,
        lambda v: (
            f"{v['before']} → {v['after']} running"
            + (f", created {', '.join(v['created'])}" if v["created"] else "")
            + (f", drained {', '.join(v['removed'])}" if v["removed"] else "")
        ),
    )


# --- restart -----------------------------------------------------------------------------


class _MasterProbe:
    """A long-lived connection to the master host for polling its view during a roll."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        self.conn = connect(inv.master)
        containers = list_containers(self.conn, inv.master)
        self.address = master_address(inv, containers)
        self.tls = master_tls(containers)

    def status(self) -> dict[str, Any] | None:
        try:
            return query_master(self.conn, self.inv, self.address, timeout=15, tls=self.tls)
        except Exception:  # "not answering yet" is an expected state while polling
            return None

    def wait_workers(self, since: float, expected: int, host: str | None, timeout: float) -> None:
        """Until ``expected`` workers (of ``host``) heartbeat after monotonic time ``since``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            view = self.status()
            if view is not None:
                seen = fresh_workers(view, time.monotonic() - since, host)
                if seen >= expected:
                    return
            time.sleep(POLL_INTERVAL)
        where = f" from {host}" if host else ""
        raise HostError(
            f"the master saw {seen} of {expected} restarted worker(s){where} within {timeout:.0f}s",
            f"see `{_make(self.inv, 'logs')}`",
        )

    def close(self) -> None:
        self.conn.close()


def restart(inv: Inventory, timeout: float = READY_TIMEOUT) -> int:
    """Rolling restart: one worker host at a time (its workers drain on SIGTERM, start
    again, and must be healthy and seen by the master), then the master last; its
    journal keeps every job, and the workers reconnect by themselves."""
    try:
        probe = _MasterProbe(inv)
    except Exception as exc:  # turned into the one-line error below
        raise OpsError(
            f"cannot reach the master on {inv.master.name}: {explain(inv.master, exc)}"
        ) from exc
    results: list[HostResult[Any]] = []
    total_workers = 0
    try:
        for host in inv.workers:

            def roll(conn: Connection, h: Host) -> dict[str, Any]:
                names = [w.name for w in workers_of(list_containers(conn, h))]
                if not names:
                    raise HostError(
                        f"no worker containers on {h.name}", f"run `{_make(inv, 'deploy')}`"
                    )
                run(conn, HostCommands(h).restart(names), timeout=STOP_TIMEOUT + 90)
                since = time.monotonic()
                wait_ready(conn, h, names, timeout, _make(inv, f"logs HOST={h.name}"))
                probe.wait_workers(since, len(names), h.name, timeout)
                return {"workers": len(names)}

            result = run_one(host, roll)
            if result.ok and result.value:
                total_workers += result.value["workers"]
            results.append(result)
            out.print(f"{host.name}: " + ("restarted" if result.ok else f"FAILED: {result.error}"))

        def roll_master(conn: Connection, h: Host) -> dict[str, Any]:
            run(conn, HostCommands(h).restart([MASTER_CONTAINER]), timeout=STOP_TIMEOUT + 90)
            since = time.monotonic()
            wait_ready(conn, h, [MASTER_CONTAINER], timeout, _make(inv, f"logs HOST={h.name}"))
            probe.wait_workers(since, total_workers, None, timeout)
            return {"workers": total_workers}

        master_result = run_one(inv.master, roll_master)
        if inv.master.name != "master":
            master_result.host = f"{inv.master.name} (master)"
        results.append(master_result)
    finally:
        probe.close()
    return summary(
        "rolling restart",
        results,
        lambda v: f"{v['workers']} worker(s) back and seen by the master",
    )


# --- smoke -------------------------------------------------------------------------------


def smoke(inv: Inventory, count: int = 10_000, timeout: float = 300, as_json: bool = False) -> int:
    """Run the squares smoke test inside the master container against the live cluster:
    every number squared exactly once, and every worker host took part."""
    if count < 1:
        raise OpsError(f"smoke: --count must be at least 1, got {count}")

    def one(conn: Connection, host: Host) -> dict[str, Any]:
        containers = list_containers(conn, host)
        address = master_address(inv, containers)
        workers = [w.name for w in inv.workers]
        argv = HostCommands(host).smoke(address, count, workers, timeout, master_tls(containers))
        result = conn.run(sh(argv), hide=True, in_stream=False, warn=True, timeout=timeout + 30)
        try:
            report = _last_json(result.stdout)
        except (OpsError, ValueError) as exc:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise HostError(f"smoke failed: {lines[-1] if lines else exc}") from exc
        if not report.get("ok") or result.exited != 0:
            raise HostError(
                f"smoke failed: verified {report.get('verified')}/{report.get('count')}, "
                f"missing {report.get('missing')}, wrong {report.get('wrong')}, "
                f"duplicates {report.get('duplicates')}, hosts {sorted(report.get('hosts', {}))}"
            )
        return report

    result = run_one(inv.master, one)
    if as_json:
        print(
            json.dumps(
                {"ok": result.ok, "error": result.error, "report": result.value}, sort_keys=True
            )
        )
        return 0 if result.ok else 1
    if result.ok and result.value:
        r = result.value
        table = Table(
            title=f"smoke: {r.get('verified')}/{r.get('count')} squares verified in "
            f"{r.get('seconds', 0):.1f}s ({r.get('items_per_s', 0):,.0f} items/s)",
            title_justify="left",
        )
        table.add_column("HOST")
        table.add_column("ITEMS", justify="right")
        for name, items in sorted((r.get("hosts") or {}).items()):
            table.add_row(name, str(items))
        out.print(table)
    return summary("smoke", [result], lambda v: "every square right, every worker host took part")


# --- down --------------------------------------------------------------------------------


def down_host(conn: Connection, host: Host, purge: bool) -> dict[str, Any]:
    """Stop (SIGTERM, drain) and remove every taskfleet container on ``host``; with
    ``purge`` also the journal volume(s) and the host's authkey file."""
    c = HostCommands(host)
    containers = list_containers(conn, host)
    names = [container.name for container in containers]
    journal_volumes: list[str] = []
    if purge and names:
        for item in json.loads(run(conn, c.inspect(names))):
            for mount in item.get("Mounts") or []:
                if mount.get("Type") == "volume" and mount.get("Destination") == JOURNAL_DIR:
                    journal_volumes.append(str(mount["Name"]))
    if names:
        running = [container.name for container in containers if container.running]
        if running:
            run(conn, c.stop(running), timeout=STOP_TIMEOUT + 60)
        run(conn, c.remove(names))
    volumes: list[str] = []
    if purge:
        labelled = run(conn, c.list_managed_volumes()).split()
        volumes = sorted(set(labelled) | set(journal_volumes))
        if volumes:
            run(conn, c.remove_volumes(volumes))
        run(conn, c.remove_authkey())
    return {"containers": names, "volumes": volumes}


def down(inv: Inventory, purge: bool = False) -> int:
    """Remove taskfleet containers on every host (``purge``: also journals and authkeys)."""
    results = run_on_hosts(inv.all, lambda c, h: down_host(c, h, purge))
    code = summary(
        "down" + (" --purge" if purge else ""),
        results,
        lambda v: (
            f"removed {len(v['containers'])} container(s)"
            + (f", {len(v['volumes'])} volume(s), the authkey" if purge else "")
        ),
    )
    if purge and code == 0:
        out.print(
            f"note: the control node's authkey (under {inv.source}/secrets/) was kept; "
            "delete it to get a new key on the next deploy"
        )
    return code
