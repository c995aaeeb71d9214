"""The AmneziaVPN app's own share format: ``vpn://`` links, sans-IO.

Read in amnezia-client at commit 82d96a9 (2024-10-24),
``client/ui/controllers/importController.cpp`` and ``exportController.cpp``,
``client/protocols/protocols_defs.h``:

* A link is ``vpn://`` + base64url without padding of ``qCompress(json,
  8)``; qCompress is the uncompressed length as a 4-byte big-endian integer
  followed by a zlib stream.  The app's import strips ``vpn://``, decodes,
  uncompresses, and takes text containing ``containers`` as its own JSON.
* For a WireGuard/AWG ``.conf`` the app builds this JSON itself
  (``extractWireGuardConfig``): ``containers`` holds one object
  ``{"container": "amnezia-awg", "awg": {"last_config": TEXT,
  "isThirdPartyConfig": true, "port": "PORT", "transport_proto": "udp"}}``,
  beside ``defaultContainer`` ``"amnezia-awg"``, ``description``,
  ``hostName`` and ``dns1``/``dns2`` from the config's DNS.  TEXT is itself
  JSON: ``config`` (the ``.conf``), ``hostName``, ``port`` (a number),
  ``client_priv_key``, ``client_ip``, ``psk_key``, ``server_pub_key``,
  ``mtu``, ``persistent_keep_alive``, ``allowed_ips`` (a list), and the AWG
  keys ``Jc``, ``Jmin``, ``Jmax``, ``S1``, ``S2``, ``H1``..``H4`` as strings.
  The app connects with those keys (``localsocketcontroller.cpp``), not with
  the ``.conf`` text.

:func:`app_link` makes that JSON from a config ``resist vpn add`` printed,
so the app imports it as the AmneziaWG server it is (named, not as an
anonymous third-party file), and adds ``S3``, ``S4`` and ``I1``..``I5`` when
set for the apps that read them.  The app version read above knows only
``Jc``..``H4`` and single header values: for it, make the server with
``init --amnezia-legacy``.  :func:`read_app_link` is the app's import, for
tests and for checking a link by hand.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any, Final

from resistance.errors import ConfigError
from resistance.vpn.clientconf import ClientConfig, parse

SCHEME: Final = "vpn://"
CONTAINER: Final = "amnezia-awg"
MAX_LINK: Final = 256 * 1024


def _q_compress(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + zlib.compress(data, 8)


def _q_uncompress(data: bytes) -> bytes:
    if len(data) < 4:
        raise ConfigError("AmneziaVPN link: too short")
    (size,) = struct.unpack_from(">I", data)
    if size > MAX_LINK * 64:
        raise ConfigError("AmneziaVPN link: claims an implausible size")
    try:
        out = zlib.decompress(data[4:])
    except zlib.error as exc:
        raise ConfigError(f"AmneziaVPN link: not zlib data ({exc})") from None
    if len(out) != size:
        raise ConfigError("AmneziaVPN link: its length prefix does not match")
    return out


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def app_config(text: str, *, description: str) -> dict[str, Any]:
    """The app's JSON for the AmneziaWG ``.conf`` ``text`` (see the module docstring)."""
    config: ClientConfig = parse(text)
    if config.amnezia is None:
        raise ConfigError("AmneziaVPN link: the config has no AmneziaWG keys")
    host, port = _host_port(config.endpoint)
    last: dict[str, Any] = {
        "config": text,
        "hostName": host,
        "port": port,
        "client_priv_key": config.private_key,
        "client_ip": config.address,
        "server_pub_key": config.server_public_key,
    }
    if config.preshared_key is not None:
        last["psk_key"] = config.preshared_key
    if config.persistent_keepalive is not None:
        last["persistent_keep_alive"] = str(config.persistent_keepalive)
    last["allowed_ips"] = list(config.allowed_ips)
    last.update(config.amnezia.interface_keys())
    last["mtu"] = str(config.mtu) if config.mtu is not None else "1280"  # the app's AWG default
    doc: dict[str, Any] = {
        "containers": [
            {
                "container": CONTAINER,
                "awg": {
                    "last_config": json.dumps(last, indent=4),
                    "isThirdPartyConfig": True,
                    "port": str(port),
                    "transport_proto": "udp",
                },
            }
        ],
        "defaultContainer": CONTAINER,
        "description": description,
        "hostName": host,
    }
    if config.dns:
        doc["dns1"] = config.dns[0]
        doc["dns2"] = config.dns[1] if len(config.dns) > 1 else config.dns[0]
    return doc


def app_link(text: str, *, description: str) -> str:
    """The ``vpn://`` link the AmneziaVPN apps import, for the AmneziaWG ``.conf`` ``text``."""
    doc = json.dumps(app_config(text, description=description), indent=4).encode()
    encoded = base64.urlsafe_b64encode(_q_compress(doc)).rstrip(b"=")
    return SCHEME + encoded.decode("ascii")


def read_app_link(link: str) -> dict[str, Any]:
    """The JSON in a ``vpn://`` link, read as the app's import reads it."""
    if len(link) > MAX_LINK:
        raise ConfigError("AmneziaVPN link: too long")
    data = link.strip().removeprefix(SCHEME)
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except ValueError:
        raise ConfigError("AmneziaVPN link: not base64url") from None
    try:
        doc = json.loads(_q_uncompress(raw))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError("AmneziaVPN link: not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("containers"), list):
        raise ConfigError("AmneziaVPN link: no containers")
    return doc
