"""Payout address validation against the BIP173 and BIP350 test vectors, and networks."""

from __future__ import annotations

import pytest

from resistance.registry.addresses import AddressError, decode_address, payout_address

NETWORKS = ("bitcoin", "testnet", "signet", "regtest")

# BIP350 "Test vectors for v0-v16 native segregated witness addresses": valid, with scriptPubKey.
VALID_SEGWIT = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "bitcoin",
     "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "testnet",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y", "bitcoin",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "bitcoin", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "bitcoin", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy", "testnet",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c", "testnet",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "bitcoin",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
]  # fmt: skip

# BIP350 invalid addresses, then BIP173's invalid ones, then BIP173's v1+ "valid" ones that
# BIP350 made invalid (bech32 used where bech32m is required).
INVALID = [
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",  # invalid HRP
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # bech32 for v1
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",  # bech32 for v2
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",  # bech32 for v16
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # bech32m for v0
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",  # bech32m for v0
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",  # 'o' in data
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",  # witness version 17
    "bc1pw5dgrnzv",  # program of 1 byte
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # 41 bytes
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # v0 program of 16 bytes
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",  # mixed case
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # >4 bits padding
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",  # non-zero padding
    "bc1gmk9yu",  # empty data
    "tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty",  # BIP173: invalid HRP
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",  # BIP173: bad checksum
    "BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2",  # BIP173: witness version 19
    "bc1rw5uspcuh",  # BIP173: program too short
    "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",  # too long
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",  # BIP173: mixed case
    "bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du",  # BIP173: >4 bits padding
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv",  # BIP173: non-zero pad
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",  # v1 bech32
    "BC1SW50QA3JX3S",  # v16 in bech32
    "bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj",  # v2 in bech32
]

# Base58 addresses (Bitcoin wiki examples) and regtest bech32 forms of BIP350 programs.
OTHER_VALID = [
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "bitcoin", "p2pkh"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "bitcoin", "p2sh"),
    ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "testnet", "p2pkh"),
    ("2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc", "testnet", "p2sh"),
    ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "regtest", "p2pkh"),
    ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest", "p2wpkh"),
    ("bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6", "regtest", "p2tr"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "signet", "p2wsh"),
]


@pytest.mark.parametrize(("address", "network", "script"), VALID_SEGWIT)
def test_bip350_valid(address: str, network: str, script: str) -> None:
    decoded = decode_address(address, network)
    assert decoded.script_pubkey.hex() == script
    assert decoded.address == address.lower()


@pytest.mark.parametrize("address", INVALID)
@pytest.mark.parametrize("network", NETWORKS)
def test_invalid_vectors_refused(address: str, network: str) -> None:
    with pytest.raises(AddressError):
        decode_address(address, network)


@pytest.mark.parametrize(("address", "network", "kind"), OTHER_VALID)
def test_standard_types(address: str, network: str, kind: str) -> None:
    assert payout_address(address, network).kind == kind


def test_every_standard_type_is_accepted() -> None:
    kinds = {decode_address(a, n).kind for a, n, _ in VALID_SEGWIT}
    kinds |= {k for _, _, k in OTHER_VALID}
    assert {"p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr"} <= kinds


@pytest.mark.parametrize(
    "address",
    ["BC1SW50QGDZ25J", "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs"],
)
def test_future_witness_versions_are_not_payout_types(address: str) -> None:
    with pytest.raises(AddressError, match="not a standard payout type"):
        payout_address(address, "bitcoin")


@pytest.mark.parametrize(
    ("address", "network", "says"),
    [
        ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "regtest", "bitcoin"),
        ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "regtest", "bitcoin"),
        ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "bitcoin", "regtest"),
        ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "bitcoin", "testnet"),
        ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "regtest", "testnet"),
    ],
)
def test_wrong_network_refused_with_reason(address: str, network: str, says: str) -> None:
    with pytest.raises(AddressError, match=f"this is a {says} address"):
        payout_address(address, network)


@pytest.mark.parametrize(
    "text", ["", " bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "x" * 91, "bc1é", "\x00"]
)
def test_garbage_refused(text: str) -> None:
    with pytest.raises(AddressError):
        payout_address(text, "bitcoin")
