"""Funding a payout from Bitcoin Core over JSON-RPC: its UTXOs, or a PSBT it funds.

Two ways, both watch-only (Core never signs here, and no key enters this package):

* ``funder_utxos``: ``listunspent`` gives the funder's UTXOs; the derivation
  index of each comes from the key origin in its ``desc`` field
  (``wpkh([fpr/0h/0/5]02…)`` is receive index 5 of ``wpkh([fpr/0h]tpub…/0/*)``),
  and ``gettransaction`` (or ``getrawtransaction``) gives the full previous
  transaction, which segwit v0 inputs carry as ``non_witness_utxo``. BDK then
  builds the PSBT exactly as from a UTXO file (``payout.build_payout_psbt``).
* ``fund_with_bitcoind``: ``walletcreatefundedpsbt`` with the awards as
  outputs, the fee rate in sat/vB and ``bip32derivs``; Core selects coins and
  adds change (at a random position). The PSBT is then checked
  (``payout.check_funded_psbt``): every award paid exactly once, nothing else
  but change to the funder's change descriptor, fee within the reserve.

Why a hand-written client: a JSON-RPC call to Core is one HTTP POST of
``{"method", "params"}`` with basic auth, about thirty lines over httpx (already
a dependency), and amounts must be parsed as ``Decimal`` from the JSON text
(``parse_float``), which generic RPC libraries do not all do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from resistance.grants.amounts import SAT_PER_BTC
from resistance.grants.errors import PayoutError, UtxoError
from resistance.grants.model import MAX_SAT, GrantRound
from resistance.grants.payout import (
    FunderUtxo,
    PayoutPsbt,
    check_funded_psbt,
    check_payable,
    parse_address,
    sat_to_btc,
)


class BitcoindError(PayoutError):
    """Bitcoin Core cannot be reached, refused the credentials, or answered an RPC error."""


@dataclass(frozen=True, slots=True)
class BitcoindRpc:
    """Where Core listens and how to log in; ``url`` holds no credentials."""

    url: str
    user: str
    password: str
    timeout: float = 30.0

    @classmethod
    def from_url(cls, url: str, *, cookie_file: Path | None = None) -> BitcoindRpc:
        """``http://user:pass@host:port[/wallet/NAME]``, or no credentials and a cookie file."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise BitcoindError(f"--bitcoind is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BitcoindError("--bitcoind must look like http://user:pass@127.0.0.1:8332")
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        if cookie_file is not None:
            if user or password:
                raise BitcoindError("give credentials either in the URL or with --rpc-cookie")
            try:
                text = cookie_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise BitcoindError(f"cannot read {cookie_file}: {exc.strerror}") from None
            user, sep, password = text.partition(":")
            if not sep:
                raise BitcoindError(f"{cookie_file} is not a cookie file (user:password)")
        elif not user:
            raise BitcoindError("give user:pass in the --bitcoind URL, or --rpc-cookie FILE")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{port}" if port else host
        path = parts.path.rstrip("/") or "/"
        if path != "/" and not re.fullmatch(r"/wallet/[^/]+", path):
            raise BitcoindError(f"--bitcoind path must be empty or /wallet/NAME, not {path}")
        return cls(f"{parts.scheme}://{netloc}{path}", user, password)

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; Core's errors become one-line ``BitcoindError``."""
        body = {"jsonrpc": "1.0", "id": "resist", "method": method, "params": list(params)}
        try:
            response = httpx.post(
                self.url, json=body, auth=(self.user, self.password), timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise BitcoindError(f"cannot reach bitcoind at {self.url}: {exc}") from None
        if response.status_code == 401:
            raise BitcoindError(f"bitcoind at {self.url} refused the credentials (HTTP 401)")
        if response.status_code == 403:
            raise BitcoindError(
                f"bitcoind at {self.url} refused this client (HTTP 403, rpcallowip)"
            )
        try:
            answer = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            raise BitcoindError(
                f"bitcoind answered {method} with HTTP {response.status_code} and no JSON"
            ) from None
        if not isinstance(answer, dict):
            raise BitcoindError(f"bitcoind answered {method} with something not a JSON object")
        error = answer.get("error")
        if error:
            if isinstance(error, dict):
                message, code = error.get("message"), error.get("code")
                raise BitcoindError(f"bitcoind: {method}: {message} (code {code})")
            raise BitcoindError(f"bitcoind: {method}: {error}")
        if response.status_code != 200:
            raise BitcoindError(f"bitcoind answered {method} with HTTP {response.status_code}")
        return answer.get("result")


# --- descriptors and key origins --------------------------------------------------------

_DESC_ORIGIN = re.compile(
    r"\[([0-9a-fA-F]{8})((?:/[0-9]+['hH]?)*)\][1-9A-HJ-NP-Za-km-z]{100,120}((?:/[0-9]+)*)/\*"
)
_UTXO_ORIGIN = re.compile(r"\[([0-9a-fA-F]{8})((?:/[0-9]+['hH]?)*)\]")


def _norm_path(path: str) -> str:
    return path.replace("'", "h").replace("H", "h")


def branch_prefix(descriptor: str) -> str:
    """``fpr/0h/0`` for ``wpkh([fpr/0h]tpub…/0/*)``: the origin path of its keys minus the index."""
    m = _DESC_ORIGIN.search(descriptor)
    if m is None:
        raise UtxoError(
            "the descriptor needs a key origin and an extended key ending in /*, "
            "e.g. wpkh([fpr/84h/1h/0h]tpub…/0/*)"
        )
    return m.group(1).lower() + _norm_path(m.group(2)) + m.group(3)


def origin_index(desc: str, prefixes: dict[str, bool]) -> tuple[int, bool] | None:
    """``(index, change)`` from a UTXO's ``desc`` whose key origin is under ``prefixes``."""
    for m in _UTXO_ORIGIN.finditer(desc):
        full = m.group(1).lower() + _norm_path(m.group(2))
        head, _, last = full.rpartition("/")
        if head in prefixes and last.isdigit():
            return int(last), prefixes[head]
    return None


def _sat(value: Any, where: str) -> int:
    if not isinstance(value, Decimal | int) or isinstance(value, bool):
        raise UtxoError(f"{where}: amount is not a number: {value!r}")
    sat = Decimal(value) * SAT_PER_BTC  # exact: Decimal times int
    if sat != sat.to_integral_value() or not 0 < sat <= MAX_SAT:
        raise UtxoError(f"{where}: amount {value} BTC is not a whole number of satoshi in range")
    return int(sat)


# --- the two ways -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BitcoindUtxos:
    utxos: list[FunderUtxo]
    skipped: int  # listed by Core but not from these descriptors


def funder_utxos(
    rpc: BitcoindRpc, *, descriptor: str, change_descriptor: str, minconf: int = 1
) -> BitcoindUtxos:
    """The wallet's UTXOs on these two descriptors, each with its full previous transaction."""
    prefixes = {branch_prefix(descriptor): False, branch_prefix(change_descriptor): True}
    listed = rpc.call("listunspent", minconf)
    if not isinstance(listed, list):
        raise BitcoindError("bitcoind: listunspent did not answer a list")
    prev: dict[str, str] = {}
    out: list[FunderUtxo] = []
    skipped = 0
    for n, u in enumerate(listed):
        where = f"listunspent[{n}]"
        if not isinstance(u, dict):
            raise UtxoError(f"{where}: not an object")
        txid, vout, desc = u.get("txid"), u.get("vout"), u.get("desc")
        if not isinstance(txid, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", txid):
            raise UtxoError(f"{where}: bad txid {txid!r}")
        if type(vout) is not int or vout < 0:
            raise UtxoError(f"{where}: bad vout {vout!r}")
        found = origin_index(desc, prefixes) if isinstance(desc, str) else None
        if found is None:
            skipped += 1
            continue
        index, change = found
        if index >= 2**31:
            raise UtxoError(f"{where}: derivation index {index} is hardened")
        txid = txid.lower()
        if txid not in prev:
            prev[txid] = _previous_tx(rpc, txid)
        out.append(FunderUtxo(txid, vout, _sat(u.get("amount"), where), prev[txid], index, change))
    if not out:
        raise UtxoError(
            f"bitcoind lists no confirmed UTXO (minconf {minconf}) of these descriptors"
            + (f" ({skipped} of other keys skipped)" if skipped else "")
        )
    return BitcoindUtxos(out, skipped)


def _previous_tx(rpc: BitcoindRpc, txid: str) -> str:
    try:
        got = rpc.call("gettransaction", txid, True)
        hex_tx = got.get("hex") if isinstance(got, dict) else None
    except BitcoindError:
        hex_tx = None
    if not isinstance(hex_tx, str):
        hex_tx = rpc.call("getrawtransaction", txid, False)
    if not isinstance(hex_tx, str):
        raise BitcoindError(f"bitcoind gave no transaction hex for {txid}")
    return hex_tx


def _check_distinct_addresses(round_: GrantRound) -> None:
    seen: dict[str, str] = {}
    for a in round_.result.payouts():
        other = seen.setdefault(a.payout_address, a.operator_id)
        if other != a.operator_id:
            raise PayoutError(
                f"operators {other} and {a.operator_id} are paid to the same address "
                f"{a.payout_address}; Bitcoin Core refuses duplicate outputs, so build this "
                "PSBT with --utxos or --bitcoind without --fund-with-bitcoind"
            )


def fund_with_bitcoind(
    rpc: BitcoindRpc,
    round_: GrantRound,
    *,
    change_descriptor: str,
    fee_rate_sat_vb: int,
    change_address: str | None = None,
) -> PayoutPsbt:
    """A PSBT funded by Core's wallet paying every award of an approved round, checked."""
    payouts = check_payable(round_, fee_rate_sat_vb=fee_rate_sat_vb)
    _check_distinct_addresses(round_)
    outputs = [{a.payout_address: sat_to_btc(a.amount_sat)} for a in payouts]
    options: dict[str, Any] = {
        "fee_rate": fee_rate_sat_vb,
        "includeWatching": True,
        "replaceable": True,
    }
    if change_address is not None:
        parse_address(change_address, round_.settings.network)
        options["changeAddress"] = change_address
    funded = rpc.call("walletcreatefundedpsbt", [], outputs, 0, options, True)
    if not isinstance(funded, dict) or not isinstance(funded.get("psbt"), str):
        raise BitcoindError("bitcoind: walletcreatefundedpsbt did not answer a PSBT")
    return check_funded_psbt(
        round_, funded["psbt"], change_descriptor=change_descriptor, fee_rate_sat_vb=fee_rate_sat_vb
    )


def segwit_v0_inputs_without_prev_tx(psbt_base64: str) -> list[int]:
    """Indexes of segwit v0 inputs that lack the full previous transaction (hardware
    wallets refuse those)."""
    import bdkpython as bdk

    psbt = bdk.Psbt(psbt_base64)
    missing = []
    for n, inp in enumerate(psbt.input()):
        spk = inp.witness_utxo.script_pubkey.to_bytes() if inp.witness_utxo else b""
        if spk[:1] == b"\x00" and inp.non_witness_utxo is None:
            missing.append(n)
    return missing
