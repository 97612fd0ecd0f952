"""Authkey files: generated safely, refused with the fix when unsafe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from taskfleet import authkey
from taskfleet.errors import AuthkeyError


def test_keygen_writes_32_random_bytes_hex_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "key"
    authkey.keygen(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = authkey.load(str(path))
    assert len(key) == 64 and bytes.fromhex(key.decode())
    other = tmp_path / "other"
    authkey.keygen(str(other))
    assert authkey.load(str(other)) != key


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "key"
    authkey.keygen(str(path))
    before = path.read_bytes()
    with pytest.raises(AuthkeyError) as err:
        authkey.keygen(str(path))
    assert str(err.value) == (
        f"{path} already exists"
        f" — keep it (every host must share one key) or pass --force to replace it"
    )
    assert path.read_bytes() == before
    authkey.keygen(str(path), force=True)
    assert path.read_bytes() != before


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "k"
    with pytest.raises(AuthkeyError) as err:
        authkey.load(str(p))
    assert str(err.value) == (
        f"authkey file {p} does not exist"
        f" — create it with taskfleet keygen {p} and copy it to every host"
    )


def test_short_key(tmp_path: Path) -> None:
    p = tmp_path / "k"
    p.write_bytes(b"tooshort\n")
    p.chmod(0o600)
    with pytest.raises(AuthkeyError) as err:
        authkey.load(str(p))
    assert str(err.value) == (
        f"authkey file {p} holds 8 bytes, fewer than 32"
        f" — generate a strong key with taskfleet keygen {p} --force"
    )


def test_world_readable_key(tmp_path: Path) -> None:
    p = tmp_path / "k"
    authkey.keygen(str(p))
    p.chmod(0o644)
    with pytest.raises(AuthkeyError) as err:
        authkey.load(str(p))
    assert (
        str(err.value)
        == f"authkey file {p} is accessible by every user (mode 0644) — chmod 600 {p}"
    )


def test_read_only_owner_key_as_in_containers(tmp_path: Path) -> None:
    p = tmp_path / "k"
    authkey.keygen(str(p))
    os.chmod(p, 0o400)
    assert len(authkey.load(str(p))) == 64
