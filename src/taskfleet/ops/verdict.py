"""The deployed cluster's health verdict for ``make status``: a pure function of its document.

``problems(doc)`` reads what ``operations.collect_status`` gathered — each
host's taskfleet containers (state, health, restarts) and the master's own
view with its verdict (``taskfleet status --json``, see ``taskfleet.health``)
— and returns one line per problem:

* a host that cannot be reached or read;
* no master container, or a container that is not running (exited, restarting,
  created, paused, dead), unhealthy, or restarted by Docker in the last
  ``RECENT_RESTART_S`` seconds (a crash loop looks "running" between crashes);
* a worker host without worker containers;
* fewer workers than expected on a worker host: the master sees fewer of that
  host's workers than the deploy (or ``make scale``) created there — the
  containers are the deploy's expected count;
* the master's own problems (``taskfleet.health`` over its view), except a
  silent worker of a host that is no longer in the inventory (the host was
  removed, its workers could not say goodbye); and a master whose view cannot
  be had.

No I/O: the unit tests feed it documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taskfleet import health

#: A container restarted by Docker this recently (its uptime) is a problem.
RECENT_RESTART_S = 600.0

#: ``make status`` exit codes, as ``taskfleet status``: healthy, degraded, no master's view.
HEALTHY, DEGRADED, UNREACHABLE = 0, 1, 2


def _container_problems(host: str, c: Mapping[str, Any]) -> list[str]:
    where = f"{host}/{c.get('name', '?')}"
    state = str(c.get("state", "?"))
    restarts = int(c.get("restart_count") or 0)
    if state != "running":
        code = c.get("exit_code")
        detail = f" (exit code {code})" if state == "exited" and code is not None else ""
        if restarts:
            detail += f", {restarts} restart(s)"
        return [f"{where} is {state}{detail}"]
    problems = []
    if c.get("health") == "unhealthy":
        problems.append(f"{where} is unhealthy (its healthcheck fails)")
    uptime = c.get("uptime_s")
    if restarts and uptime is not None and float(uptime) < RECENT_RESTART_S:
        problems.append(
            f"{where} was restarted by Docker {restarts} time(s), the last {float(uptime):.0f}s ago"
        )
    return problems


def _seen_per_host(master: Mapping[str, Any]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for w in master.get("workers") or []:
        host = str(w.get("host", ""))
        seen[host] = seen.get(host, 0) + 1
    return seen


def problems(doc: Mapping[str, Any]) -> list[str]:
    """Every problem of the deployed cluster ``doc`` describes ([] = healthy)."""
    found: list[str] = []
    hosts: Sequence[Mapping[str, Any]] = doc.get("hosts") or []
    master = doc.get("master")
    seen = _seen_per_host(master) if isinstance(master, Mapping) else None
    for h in hosts:
        name = str(h.get("host", "?"))
        if not h.get("ok"):
            found.append(f"{name}: {h.get('error') or 'could not be read'}")
            continue
        containers: Sequence[Mapping[str, Any]] = h.get("containers") or []
        roles = h.get("roles") or []
        if "master" in roles and not any(c.get("role") == "master" for c in containers):
            found.append(f"{name}: no taskfleet-master container")
        for c in containers:
            found += _container_problems(name, c)
        if "workers" in roles:
            workers = [c for c in containers if c.get("role") == "worker"]
            if not workers:
                found.append(f"{name}: no worker containers")
            elif seen is not None and seen.get(name, 0) < len(workers):
                found.append(
                    f"fewer workers than expected on {name}: the master sees"
                    f" {seen.get(name, 0)} of its {len(workers)} worker container(s)"
                )
    if isinstance(master, Mapping):
        known = {str(h.get("host")) for h in hosts}
        lost = [w for w in master.get("lost_workers") or [] if w.get("host") in known]
        found += health.assess({**master, "lost_workers": lost})
    else:
        found.append(f"no view from the master: {doc.get('master_error') or 'unknown error'}")
    return found


def exit_code(doc: Mapping[str, Any]) -> int:
    """0 healthy, 1 degraded, 2 when the master's view could not be had."""
    if not isinstance(doc.get("master"), Mapping):
        return UNREACHABLE
    return HEALTHY if not doc.get("problems") else DEGRADED
