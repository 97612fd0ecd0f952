"""Connection profiles: where the master is and which key opens it, in one file.

``make deploy`` writes ``inventory/<env>/secrets/client.json`` (mode 0600) for
the control node::

    {"master": "10.0.0.10:7451", "authkey_file": "authkey",
     "tls": {"ca": "tls/ca.crt", "cert": "tls/client.crt", "key": "tls/client.key"}}

``tls`` is optional (a plaintext cluster has none); when present it names all
three files. Relative paths are relative to the profile's own folder, so the folder can
move as a whole. The CLI's ``--profile PATH`` (env ``TASKFLEET_PROFILE``) and
``taskfleet.connect(profile=PATH)`` read it.

Where each setting comes from, first match wins:

1. the explicit option (``--master``, ``--authkey-file``, ``--tls-ca``,
   ``--tls-cert``, ``--tls-key``; ``connect(master=…)``);
2. the profile named explicitly (``--profile``; ``connect(profile=…)``);
3. the environment (``TASKFLEET_MASTER``, ``TASKFLEET_AUTHKEY_FILE``,
   ``TASKFLEET_TLS_CA``, ``TASKFLEET_TLS_CERT``, ``TASKFLEET_TLS_KEY``);
4. the profile named by ``TASKFLEET_PROFILE``.

Each setting is picked on its own; the three TLS files must then be all
there or all absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskfleet.address import parse_hostport
from taskfleet.errors import UsageError
from taskfleet.tls import TLSConfig

ENV_MASTER = "TASKFLEET_MASTER"
ENV_AUTHKEY = "TASKFLEET_AUTHKEY_FILE"
ENV_PROFILE = "TASKFLEET_PROFILE"
ENV_TLS = {
    "tls_ca": "TASKFLEET_TLS_CA",
    "tls_cert": "TASKFLEET_TLS_CERT",
    "tls_key": "TASKFLEET_TLS_KEY",
}
_TLS_OPTION = {"tls_ca": "--tls-ca", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}

MAX_PROFILE_BYTES = 64 * 1024
_FIX = "point --profile at the client.json that make deploy wrote (inventory/<env>/secrets/)"


class ProfileError(UsageError):
    """A profile file that is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Profile:
    """A parsed profile; paths are absolute."""

    path: str
    master: str | None = None
    authkey_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def load(path: str) -> Profile:
    """Read and check a profile file; raise ProfileError naming the file and the fix."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(f"profile {path} does not exist", _FIX) from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}", _FIX) from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile {path} is larger than {MAX_PROFILE_BYTES} bytes", _FIX)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid JSON ({exc})", _FIX) from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path}: should be a JSON object", _FIX)
    return _parse(path, data)


def _parse(path: str, data: Mapping[str, Any]) -> Profile:
    base = os.path.dirname(os.path.abspath(path))
    master = data.get("master")
    if master is not None:
        if not isinstance(master, str):
            raise ProfileError(f"profile {path}: master: should be a HOST:PORT string", _FIX)
        try:
            parse_hostport(master, "master")
        except UsageError as exc:
            raise ProfileError(f"profile {path}: master: {exc.what}", _FIX) from None
    key = data.get("authkey_file")
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ProfileError(f"profile {path}: authkey_file: should be a path", _FIX)
        key = os.path.join(base, key)
    tls = data.get("tls")
    files: dict[str, str] = {}
    if tls is not None:
        if not isinstance(tls, dict):
            raise ProfileError(
                f'profile {path}: tls: should be an object {{"ca": …, "cert": …, "key": …}}', _FIX
            )
        for name in ("ca", "cert", "key"):
            value = tls.get(name)
            if not isinstance(value, str) or not value:
                raise ProfileError(f"profile {path}: tls.{name}: should be a path", _FIX)
            files[f"tls_{name}"] = os.path.join(base, value)
    return Profile(os.path.abspath(path), master, key, **files)


@dataclass(frozen=True)
class Target:
    """Where to connect and with which key file, after the precedence above."""

    master: tuple[str, int]
    authkey_file: str
    tls: TLSConfig | None = None


def resolve(
    master: str | None = None,
    authkey_file: str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Target:
    """Combine options, profiles and the environment (module docstring); raise UsageError."""
    env = os.environ if env is None else env
    explicit = load(profile) if profile else None
    env_profile_path = env.get(ENV_PROFILE)
    from_env = load(env_profile_path) if env_profile_path and not explicit else None

    def pick(option: str | None, field: str, env_name: str) -> str | None:
        if option:
            return option
        if explicit is not None and getattr(explicit, field):
            return str(getattr(explicit, field))
        if env.get(env_name):
            return env[env_name]
        if from_env is not None and getattr(from_env, field):
            return str(getattr(from_env, field))
        return None

    address = pick(master, "master", ENV_MASTER)
    if not address:
        raise UsageError(
            "no master address given",
            f"pass --master HOST:PORT or --profile PATH, or set {ENV_MASTER}",
        )
    key = pick(authkey_file, "authkey_file", ENV_AUTHKEY)
    if not key:
        raise UsageError(
            "no authkey file given",
            f"pass --authkey-file PATH or --profile PATH, or set {ENV_AUTHKEY}"
            " (make one with taskfleet keygen PATH)",
        )
    options = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
    tls = _tls_config({f: pick(value, f, ENV_TLS[f]) for f, value in options.items()})
    return Target(parse_hostport(address), key, tls)


def _tls_config(files: Mapping[str, str | None]) -> TLSConfig | None:
    """All three TLS files → a TLSConfig; none → None; some → UsageError naming the rest."""
    given = [field for field in _TLS_OPTION if files.get(field)]
    if not given:
        return None
    if len(given) < len(_TLS_OPTION):
        missing = [option for field, option in _TLS_OPTION.items() if field not in given]
        raise UsageError(
            f"{', '.join(_TLS_OPTION[f] for f in given)} given without {' and '.join(missing)}",
            "pass all three of --tls-ca, --tls-cert and --tls-key (or none, for a plaintext"
            " cluster)",
        )
    return TLSConfig(files["tls_ca"] or "", files["tls_cert"] or "", files["tls_key"] or "")


def resolve_tls(
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> TLSConfig | None:
    """The master's TLS files: each option, else its environment variable; all or none."""
    env = os.environ if env is None else env
    options = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
    return _tls_config(
        {field: value or env.get(ENV_TLS[field]) for field, value in options.items()}
    )
