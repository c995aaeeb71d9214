"""The AmneziaVPN app's vpn:// links, decoded here as the app's import does it.

The decoding in :func:`app_import` is written from amnezia-client's
ImportController (82d96a9): strip ``vpn://``, base64url without padding,
qUncompress (a 4-byte big-endian length, then zlib), JSON with
``containers``; it shares no code with :mod:`resistance.vpn.applink`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ConfigError
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.applink import app_link, read_app_link
from resistance.vpn.clientconf import ClientConfig, render

CONFIG = ClientConfig(
    private_key="QI8Ix4UO9DUf2y1BwJuZaH2rxdd1Q3HpZM8RDeqoJ0M=",
    address="10.66.0.2/32",
    server_public_key="NP/RhZnkZk056H9k0X5JLzkzbooAmERZsk0BJdQkqiE=",
    endpoint="203.0.113.7:51821",
    preshared_key="ZEq0VBj95O6JXXULs/bhSx7+Vq81m6YP6eS3zD8z3oY=",
    dns=("9.9.9.9", "149.112.112.112"),
    mtu=1404,
    amnezia=AmneziaParams.generate(),
)


def app_import(link: str) -> dict[str, Any]:
    assert link.startswith("vpn://")
    data = link.removeprefix("vpn://")
    assert "=" not in data and "+" not in data and "/" not in data
    compressed = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    text = zlib.decompress(compressed[4:])
    assert int.from_bytes(compressed[:4], "big") == len(text)
    assert b"containers" in text  # what makes the app read it as its own format
    doc: dict[str, Any] = json.loads(text)
    return doc


@pytest.mark.parametrize("legacy", [False, True])
def test_the_link_carries_what_the_app_connects_with(legacy: bool) -> None:
    params = AmneziaParams.generate(legacy=legacy)
    config = dataclasses.replace(CONFIG, amnezia=params)
    text = render(config)
    doc = app_import(app_link(text, description="alice (203.0.113.7:51821)"))
    assert doc["defaultContainer"] == "amnezia-awg"
    assert (doc["hostName"], doc["dns1"], doc["dns2"]) == ("203.0.113.7", *CONFIG.dns)
    assert doc["description"] == "alice (203.0.113.7:51821)"
    (container,) = doc["containers"]
    assert container["container"] == "amnezia-awg"
    awg = container["awg"]
    assert (awg["port"], awg["transport_proto"], awg["isThirdPartyConfig"]) == (
        "51821",
        "udp",
        True,
    )
    last = json.loads(awg["last_config"])
    assert last["config"] == text
    assert (last["hostName"], last["port"]) == ("203.0.113.7", 51821)
    assert last["client_priv_key"] == CONFIG.private_key
    assert last["server_pub_key"] == CONFIG.server_public_key
    assert last["psk_key"] == CONFIG.preshared_key
    assert last["client_ip"] == "10.66.0.2/32"
    assert last["allowed_ips"] == ["0.0.0.0/0", "::/0"]
    assert (last["mtu"], last["persistent_keep_alive"]) == ("1404", "25")
    # the keys the app reads (protocols_defs.h), as strings, equal to the .conf's
    for key in ("Jc", "Jmin", "Jmax", "S1", "S2", "H1", "H2", "H3", "H4"):
        assert isinstance(last[key], str)
        assert f"\n{key} = {last[key]}\n" in text
    assert ("S3" in last) is not legacy
    if legacy:  # what the app version read takes: single header values
        assert all(last[f"H{n}"].isdigit() for n in range(1, 5))
    assert read_app_link(app_link(text, description="x"))["containers"] == [
        {**container, "awg": {**awg, "last_config": awg["last_config"]}}
    ]


def test_plain_wireguard_configs_get_no_link() -> None:
    plain = ClientConfig(
        private_key=CONFIG.private_key,
        address=CONFIG.address,
        server_public_key=CONFIG.server_public_key,
        endpoint=CONFIG.endpoint,
    )
    with pytest.raises(ConfigError, match="no AmneziaWG keys"):
        app_link(render(plain), description="x")


@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300).map(lambda b: "vpn://" + base64.urlsafe_b64encode(b).decode()),
        st.binary(max_size=300).map(
            lambda b: (
                "vpn://"
                + base64.urlsafe_b64encode(len(b).to_bytes(4, "big") + zlib.compress(b)).decode()
            )
        ),
    )
)
def test_any_link_reads_or_is_refused(text: str) -> None:
    try:
        doc = read_app_link(text)
    except ConfigError:
        return
    assert isinstance(doc["containers"], list)
