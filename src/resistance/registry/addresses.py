"""Bitcoin payout addresses: decoded by bdkpython, checked for network and type.

Accepted: P2PKH, P2SH, P2WPKH, P2WSH and P2TR, for the registry's network
only.  Refused: anything bdkpython cannot decode (bad checksum, bech32 where
bech32m is required and the reverse, mixed case, bad padding or program
length), an address of another network, and witness versions or lengths that
are valid BIP350 but not a standard payout type.  Testnet, signet and
regtest share their base58 prefixes, so a base58 testnet address is also a
regtest address (that is Bitcoin's encoding, not a shortcut here).
"""

from __future__ import annotations

from dataclasses import dataclass

import bdkpython as bdk

from resistance.errors import ResistanceError

_NETWORKS = {
    "bitcoin": bdk.Network.BITCOIN,
    "testnet": bdk.Network.TESTNET,
    "signet": bdk.Network.SIGNET,
    "regtest": bdk.Network.REGTEST,
}
MAX_LENGTH = 90
STANDARD = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr")


class AddressError(ResistanceError):
    """An address that cannot receive a payout here; the message says why."""


@dataclass(frozen=True, slots=True)
class DecodedAddress:
    address: str  # normalized: bech32 in lower case
    kind: str  # one of STANDARD, or "witness_vN" for other segwit programs
    script_pubkey: bytes


def _kind(data: bdk.AddressData) -> str:
    if isinstance(data, bdk.AddressData.P2PKH):
        return "p2pkh"
    if isinstance(data, bdk.AddressData.P2SH):
        return "p2sh"
    if isinstance(data, bdk.AddressData.SEGWIT):
        version = data.witness_program.version
        size = len(data.witness_program.program)
        if version == 0:
            return "p2wpkh" if size == 20 else "p2wsh"
        if version == 1 and size == 32:
            return "p2tr"
        return f"witness_v{version}"
    return "unknown"


def _parse(text: str, network: str) -> bdk.Address | None:
    try:
        return bdk.Address(text, _NETWORKS[network])
    except Exception:  # bdk raises one class per cause, carrying only its name
        return None


def decode_address(text: str, network: str) -> DecodedAddress:
    """Decode ``text`` for ``network``; raises :class:`AddressError` saying why not."""
    if network not in _NETWORKS:
        raise AddressError(f"unknown network {network!r}")
    if not text or len(text) > MAX_LENGTH or not text.isascii() or not text.isprintable():
        raise AddressError(f"not a Bitcoin address: expected 1-{MAX_LENGTH} printable ASCII")
    if text != text.strip():
        raise AddressError("not a Bitcoin address: remove the surrounding spaces")
    if text.lower() != text and text.upper() != text and "1" in text and _is_bech32ish(text):
        raise AddressError("bech32 addresses must not mix upper and lower case")
    parsed = _parse(text, network)
    if parsed is None:
        others = [n for n in _NETWORKS if n != network and _parse(text, n) is not None]
        if others:
            raise AddressError(f"this is a {others[0]} address; this registry pays on {network}")
        raise AddressError("not a valid Bitcoin address (checksum, encoding or length is wrong)")
    kind = _kind(parsed.to_address_data())
    return DecodedAddress(str(parsed), kind, bytes(parsed.script_pubkey().to_bytes()))


def _is_bech32ish(text: str) -> bool:
    hrp = text.lower().rpartition("1")[0]
    return hrp in ("bc", "tb", "bcrt")


def payout_address(text: str, network: str) -> DecodedAddress:
    """A decoded address of a standard type, fit to receive a payout."""
    decoded = decode_address(text, network)
    if decoded.kind not in STANDARD:
        raise AddressError(
            f"{decoded.kind} is not a standard payout type (use P2PKH, P2SH, P2WPKH, P2WSH or P2TR)"
        )
    return decoded
