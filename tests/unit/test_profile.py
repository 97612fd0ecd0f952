"""Connection profiles: the file make deploy writes, and which setting wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskfleet import profile
from taskfleet.cli import main
from taskfleet.errors import UsageError
from taskfleet.tls import TLSConfig


def write(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_relative_key_paths_are_relative_to_the_profile_folder(tmp_path: Path) -> None:
    p = write(tmp_path / "client.json", {"master": "10.0.0.10:7451", "authkey_file": "authkey"})
    loaded = profile.load(p)
    assert loaded.master == "10.0.0.10:7451"
    assert loaded.authkey_file == str(tmp_path / "authkey")


def test_explicit_options_beat_the_profile_which_beats_the_environment(tmp_path: Path) -> None:
    p = write(tmp_path / "a.json", {"master": "10.0.0.1:7451", "authkey_file": "/k/a"})
    env_p = write(tmp_path / "b.json", {"master": "10.0.0.2:7451", "authkey_file": "/k/b"})
    env = {"TASKFLEET_MASTER": "10.0.0.3:7451", "TASKFLEET_PROFILE": env_p}
    assert profile.resolve("10.0.0.9:1", None, p, env) == profile.Target(("10.0.0.9", 1), "/k/a")
    assert profile.resolve(None, None, p, env) == profile.Target(("10.0.0.1", 7451), "/k/a")
    # no explicit profile: the environment's address, the env profile's key
    assert profile.resolve(None, None, None, env) == profile.Target(("10.0.0.3", 7451), "/k/b")
    only_profile = {"TASKFLEET_PROFILE": env_p}
    assert profile.resolve(None, None, None, only_profile) == profile.Target(
        ("10.0.0.2", 7451), "/k/b"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes:"),
        ("[1, 2]", ": should be a JSON object"),
        ('{"master": 7451}', ": master: should be a HOST:PORT string"),
        ('{"master": "nohost"}', ": master: malformed master 'nohost'"),
        ('{"master": "h:1", "authkey_file": ""}', ": authkey_file: should be a path"),
    ],
)
def test_a_malformed_profile_is_one_line_naming_the_file(
    tmp_path: Path, content: str, problem: str
) -> None:
    p = tmp_path / "client.json"
    p.write_text(content)
    with pytest.raises(profile.ProfileError) as err:
        profile.load(str(p))
    text = str(err.value)
    assert text.startswith(f"profile {p}") and problem in text
    assert text.endswith(
        " — point --profile at the client.json that make deploy wrote (inventory/<env>/secrets/)"
    )
    assert "\n" not in text


def test_a_missing_profile_says_where_profiles_come_from(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"profile .*/nope.json does not exist — point --profile"):
        profile.resolve(profile=str(tmp_path / "nope.json"), env={})


def test_cli_reads_the_profile_and_a_flag_overrides_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TASKFLEET_MASTER", "TASKFLEET_AUTHKEY_FILE", "TASKFLEET_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    key = tmp_path / "authkey"
    key.write_text("x" * 40)
    key.chmod(0o644)  # world-readable: refused, which proves the profile's key was read
    p = write(tmp_path / "client.json", {"master": "127.0.0.1:1", "authkey_file": "authkey"})
    assert main(["status", "--profile", p]) == 2
    assert capsys.readouterr().err.strip() == (
        f"taskfleet: error: authkey file {key} is accessible by every user (mode 0644)"
        f" — chmod 600 {key}"
    )
    monkeypatch.setenv("TASKFLEET_PROFILE", p)
    assert main(["status", "--master", "bad"]) == 2
    assert "malformed --master 'bad'" in capsys.readouterr().err


TLS = {"ca": "tls/ca.crt", "cert": "tls/client.crt", "key": "tls/client.key"}


def test_the_profile_names_the_tls_files_relative_to_its_folder(tmp_path: Path) -> None:
    p = write(
        tmp_path / "client.json", {"master": "10.0.0.1:7451", "authkey_file": "k", "tls": TLS}
    )
    target = profile.resolve(profile=p, env={})
    assert target.tls == TLSConfig(
        str(tmp_path / "tls/ca.crt"),
        str(tmp_path / "tls/client.crt"),
        str(tmp_path / "tls/client.key"),
    )
    # an option wins for its own file only
    target = profile.resolve(profile=p, env={}, tls_cert="/other.crt")
    assert target.tls is not None
    assert (target.tls.ca, target.tls.cert) == (str(tmp_path / "tls/ca.crt"), "/other.crt")
    # the environment fills in what the options leave out
    env = {"TASKFLEET_TLS_CA": "/e/ca", "TASKFLEET_TLS_CERT": "/e/c", "TASKFLEET_TLS_KEY": "/e/k"}
    target = profile.resolve("h:1", "/k", None, env, tls_key="/o/k")
    assert target.tls == TLSConfig("/e/ca", "/e/c", "/o/k")
    assert profile.resolve("h:1", "/k", None, {}).tls is None  # plaintext


def test_some_tls_files_without_the_others_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        profile.resolve("h:1", "/k", None, {}, tls_cert="/c", tls_key="/k")
    assert str(err.value) == (
        "--tls-cert, --tls-key given without --tls-ca — pass all three of --tls-ca,"
        " --tls-cert and --tls-key (or none, for a plaintext cluster)"
    )
    with pytest.raises(UsageError, match=r"^--tls-ca given without --tls-cert and --tls-key"):
        profile.resolve_tls(None, None, None, {"TASKFLEET_TLS_CA": "/ca"})
    assert profile.resolve_tls(None, None, None, {}) is None


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ("tls/", ': tls: should be an object {"ca": …, "cert": …, "key": …}'),
        ({"ca": "a", "cert": "b"}, ": tls.key: should be a path"),
        ({"ca": "", "cert": "b", "key": "c"}, ": tls.ca: should be a path"),
    ],
)
def test_a_malformed_tls_section_names_the_field(tmp_path: Path, tls: object, problem: str) -> None:
    p = write(tmp_path / "client.json", {"master": "h:1", "tls": tls})
    with pytest.raises(profile.ProfileError) as err:
        profile.load(p)
    assert str(err.value).startswith(f"profile {p}{problem} — point --profile")
