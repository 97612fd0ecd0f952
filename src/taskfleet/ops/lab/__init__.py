"""The lab: simulated machines (Docker-in-Docker hosts with sshd) on one computer.

``python -m taskfleet.ops.lab up | down [--purge] | status [--json] | summary``
is behind ``make lab``, ``make lab-down``, ``make lab-status`` and the end of
``make demo``; ``make … LAB=<name>`` works on a lab of that name.

A lab named ``<lab>`` (``LAB``/``TASKFLEET_LAB``, default ``local``) is:

* the bridge network ``taskfleet-<lab>`` on its own /24 (``172.28.10.0/24`` for
  ``local``; derived from the name otherwise, see :mod:`.config`);
* containers ``taskfleet-<lab>-<host>``: ``master`` at .10, ``worker1`` … at
  .11 … (``LAB_WORKERS``, default 3) and ``outsider`` at .99, which is in the
  inventory's ``all`` but in no group (it exists to prove the firewall). Each
  runs images/labhost (sshd, sudo, python3, firewall tools, no Docker engine)
  with the capabilities, cgroup mount and ``/var/lib/docker`` volume that let
  the deploy install and run a Docker engine inside (``--privileged`` is
  refused on these kernels);
* ``taskfleet-<lab>-aptcache`` at .2: apt-cacher-ng, which every host's apt
  uses, with its cache in a volume that outlives ``down`` (``--purge`` removes it);
* control-side files: ``.lab/<lab>/id_ed25519`` (the deploy user's key), one
  ed25519 host key per host generated here and put into the container before
  it starts, and the exact ``.lab/<lab>/known_hosts`` — strict host-key
  checking, never trust on first use;
* the inventory ``inventory/<lab>/hosts.yml`` (``TASKFLEET_LAB_INVENTORY``
  overrides the folder) with the connection variables set per host.

Everything created carries ``io.taskfleet.managed=true`` and
``io.taskfleet.lab=<lab>``; ``down`` removes exactly what carries its lab's label.

Where each part lives: :mod:`.config` (names, subnet, hosts), :mod:`.render`
(the files written), :mod:`.keys` (SSH keys), :mod:`.machines` (images,
network, containers), :mod:`.lifecycle` (up, down, status), :mod:`.demo` (the
demo's summary) and ``__main__`` (the command line). Errors raise
:class:`LabError`; the command line prints them as one line and exits 1.
"""

from __future__ import annotations

from taskfleet.ops.errors import LabError
from taskfleet.ops.lab.config import (
    APT_CACHE_PORT,
    LABEL_HOST,
    LABEL_LAB,
    LABEL_MANAGED,
    LABEL_ROLE,
    HostSpec,
    LabConfig,
)
from taskfleet.ops.lab.lifecycle import LabInfo, down, status, up
from taskfleet.ops.lab.render import render_inventory, render_known_hosts

__all__ = [
    "APT_CACHE_PORT",
    "LABEL_HOST",
    "LABEL_LAB",
    "LABEL_MANAGED",
    "LABEL_ROLE",
    "HostSpec",
    "LabConfig",
    "LabError",
    "LabInfo",
    "down",
    "render_inventory",
    "render_known_hosts",
    "status",
    "up",
]
