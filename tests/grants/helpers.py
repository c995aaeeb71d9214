"""Builders shared by the grants tests: settings, rollups, addresses, the test wallet."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import bdkpython as bdk

from resistance.grants.model import DailyRollup, GrantSettings

# The test wallet is the lab's funder: Electrum segwit, a published regtest-only seed.
from resistance.lab.funder import (
    ACCOUNT_TPUB,
    CHANGE_DESCRIPTOR,
    DESCRIPTOR,
    FINGERPRINT,
    SEED_WORDS,
    funding_tx,
    wallet_address,
)

__all__ = [
    "ACCOUNT_TPUB",
    "CHANGE_DESCRIPTOR",
    "DESCRIPTOR",
    "FINGERPRINT",
    "SEED_WORDS",
    "funding_tx",
    "wallet_address",
]

START = dt.date(2024, 5, 1)

_NETS = {"regtest": bdk.Network.REGTEST, "bitcoin": bdk.Network.BITCOIN}


def address(n: int | str, network: str = "regtest") -> str:
    """A valid P2WPKH address nobody here holds a key for."""
    h = hashlib.sha256(f"operator-{n}".encode()).digest()[:20]
    return str(bdk.Address.from_script(bdk.Script(b"\x00\x14" + h), _NETS[network]))


def settings(**kw: Any) -> GrantSettings:
    base: dict[str, Any] = {
        "round_id": "2024-05-ru",
        "network": "regtest",
        "target_country": "RU",
        "period_start": START,
        "period_end": START + dt.timedelta(days=29),
        "budget_sat": 10_000_000,
        "fee_reserve_sat": 50_000,
        "min_payout_sat": 10_000,
    }
    base.update(kw)
    return GrantSettings(**base)


def rollup(
    proxy: str,
    operator: str,
    day: int = 0,
    *,
    network: str = "203.0.113.0/24",
    ca: int = 24,
    cs: int = 24,
    ta: int = 24,
    ts: int = 24,
    throughput: int = 0,
    country: str = "RU",
    payout: str | None = None,
) -> DailyRollup:
    return DailyRollup(
        proxy_id=proxy,
        operator_id=operator,
        network=network,
        payout_address=payout or address(operator),
        day=START + dt.timedelta(days=day),
        country=country,
        control_attempts=ca,
        control_successes=cs,
        target_attempts=ta,
        target_successes=ts,
        throughput_kbps=throughput,
    )


def utxos_for(
    values: list[int], *, first_index: int = 0, tag: bytes = b"f"
) -> list[dict[str, Any]]:
    """UTXO-file entries for one funding tx paying ``values`` to receive addresses."""
    outs = [(wallet_address(first_index + i), v) for i, v in enumerate(values)]
    hex_tx = funding_tx(outs, tag)
    txid = str(bdk.Transaction(bytes.fromhex(hex_tx)).compute_txid())
    return [
        {
            "txid": txid,
            "vout": i,
            "value": v,
            "prev_tx_hex": hex_tx,
            "derivation_index": first_index + i,
        }
        for i, v in enumerate(values)
    ]


def sample_inputs(n_ops: int = 4, proxies_per_op: int = 2):  # type: ignore[no-untyped-def]
    from resistance.grants.model import RoundInputs

    rows = [
        rollup(f"p{o}-{k}", f"op{o}", d, network=f"198.51.{o}.0/24", cs=24 - (o + k) % 3)
        for o in range(n_ops)
        for k in range(proxies_per_op)
        for d in range(30)
    ]
    return RoundInputs(tuple(rows))


def approved_round(**kw: Any):  # type: ignore[no-untyped-def]
    from resistance.grants.rounds import approve, compute_round

    n_ops = kw.pop("n_ops", 4)
    return approve(compute_round(settings(**kw), sample_inputs(n_ops)))


def embit_root():  # type: ignore[no-untyped-def]
    """The test wallet's BIP32 root as Electrum derives it from its seed (salt 'electrum')."""
    from embit import bip32, networks

    seed = hashlib.pbkdf2_hmac("sha512", SEED_WORDS.encode(), b"electrum", 2048)
    return bip32.HDKey.from_seed(seed, version=networks.NETWORKS["regtest"]["xprv"])


def embit_sign(psbt_b64: str) -> tuple[int, str]:
    """Sign like a hardware wallet (only inputs whose BIP32 path leads to our key)."""
    from embit import finalizer
    from embit.psbt import PSBT

    psbt = PSBT.from_string(psbt_b64)
    signed = psbt.sign_with(embit_root())
    tx = finalizer.finalize_psbt(psbt)
    return signed, tx.serialize().hex() if tx is not None else ""
