from __future__ import annotations

import pytest

from taskfleet.address import format_hostport, parse_hostport
from taskfleet.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:7451", ("10.0.0.1", 7451)),
        ("master.lab:1", ("master.lab", 1)),
        ("[::1]:65535", ("::1", 65535)),
        (" 127.0.0.1:80 ", ("127.0.0.1", 80)),
    ],
)
def test_valid_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text", ["", "host", "host:", ":7451", "host:port", "a:b:c", "::1:7451", "h/x:1"]
)
def test_malformed_addresses(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_hostport(text)
    assert (
        str(err.value)
        == f"malformed --master {text!r} — use HOST:PORT, e.g. --master 10.0.0.1:7451"
    )


def test_port_out_of_range() -> None:
    with pytest.raises(UsageError) as err:
        parse_hostport("h:0")
    assert str(err.value) == (
        "malformed --master 'h:0': port 0 is not in 1-65535"
        " — use HOST:PORT, e.g. --master 10.0.0.1:7451"
    )


def test_format_brackets_ipv6() -> None:
    assert format_hostport("::1", 7451) == "[::1]:7451"
    assert format_hostport("10.0.0.1", 7451) == "10.0.0.1:7451"
