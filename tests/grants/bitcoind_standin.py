"""A stand-in for Bitcoin Core's JSON-RPC on 127.0.0.1, answering with real data.

It knows a watch-only wallet on the test descriptors: UTXOs of funding
transactions made here (``helpers.funding_tx``), listed as Core lists them
(amounts as JSON numbers in BTC, ``desc`` with the key origin), their full
transactions, and ``walletcreatefundedpsbt`` done by BDK on that wallet, with
change at a random position as Core puts it. ``mode`` makes it misbehave the
ways a check must catch. Basic auth, wallet paths, Core's error shapes (HTTP
401 with no body, HTTP 500 with an error object) are as Core does them.
"""

from __future__ import annotations

import base64
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bdkpython as bdk

from resistance.grants import payout

from .helpers import ACCOUNT_TPUB, CHANGE_DESCRIPTOR, DESCRIPTOR, FINGERPRINT, address, funding_tx
from .helpers import wallet_address as wallet_addr

USER, PASSWORD, WALLET = "rpcuser", "rpc pass:word", "funder"


def pubkey(index: int, change: bool) -> str:
    from embit import bip32

    key = bip32.HDKey.from_string(ACCOUNT_TPUB).derive([1 if change else 0, index])
    return str(key.key.sec().hex())


def btc(sat: int) -> str:
    return f"{sat // 100_000_000}.{sat % 100_000_000:08d}"


class StandIn:
    """The stand-in's wallet and server; ``calls`` records (method, params) received."""

    def __init__(self) -> None:
        # (receive or change, index, value) per output of the first funding transaction
        mine = [
            (False, 0, 3_000_000),
            (False, 1, 4_000_000),
            (False, 2, 5_000_000),
            (True, 1, 1_000_000),
        ]
        outs = [(wallet_addr(i, change=c), v) for c, i, v in mine]
        outs.append((address("someone else's key"), 2_000_000))
        self.tx1 = funding_tx(outs, b"standin-1")
        self.tx2 = funding_tx([(wallet_addr(3), 500_000)], b"standin-2")
        self.txid1, self.txid2 = (
            str(bdk.Transaction(bytes.fromhex(t)).compute_txid()) for t in (self.tx1, self.tx2)
        )
        self.unspent: list[dict[str, Any]] = []
        for vout, (change, index, value) in enumerate(mine):
            mark = "'" if vout % 2 else "h"  # Core has written both
            origin = f"{FINGERPRINT}/0{mark}/{1 if change else 0}/{index}"
            self.unspent.append(self._utxo(self.txid1, vout, value, origin, change, index))
        self.unspent.append(
            self._utxo(self.txid1, 4, 2_000_000, "deadbeef/84h/1h/0h/0/7", False, 7)
        )
        self.unspent.append(self._utxo(self.txid2, 0, 500_000, f"{FINGERPRINT}/0h/0/3", False, 3))
        self.mode = "honest"
        self.calls: list[tuple[str, list[Any]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _utxo(
        self, txid: str, vout: int, value: int, origin: str, change: bool, index: int
    ) -> dict[str, Any]:
        key = pubkey(index, change) if origin.startswith(FINGERPRINT) else "02" + "11" * 32
        return {
            "txid": txid, "vout": vout, "address": "", "scriptPubKey": "",
            "amount": Decimal(btc(value)), "confirmations": 6, "spendable": False,
            "solvable": True, "desc": f"wpkh([{origin}]{key})#qwertyui", "safe": True,
        }  # fmt: skip

    def url(self, *, user: str = USER, password: str = PASSWORD, wallet: str = WALLET) -> str:
        from urllib.parse import quote

        path = f"/wallet/{wallet}" if wallet else ""
        return f"http://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{self.port}{path}"

    def cookie_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/wallet/{WALLET}"

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # --- the RPC methods ------------------------------------------------------------

    def listunspent(self, minconf: int = 1, *_: Any) -> list[dict[str, Any]]:
        return [u for u in self.unspent if u["confirmations"] >= minconf]

    def gettransaction(self, txid: str, *_: Any) -> dict[str, Any]:
        if txid == self.txid2:  # not a wallet transaction to Core: getrawtransaction has it
            raise RpcError(-5, "Invalid or non-wallet transaction id")
        return {"txid": txid, "hex": self.tx1, "confirmations": 6}

    def getrawtransaction(self, txid: str, verbose: bool = False) -> str:
        return {self.txid1: self.tx1, self.txid2: self.tx2}[txid]

    def walletcreatefundedpsbt(
        self, inputs: list[Any], outputs: list[dict[str, Any]], locktime: int,
        options: dict[str, Any], bip32derivs: bool,
    ) -> dict[str, Any]:  # fmt: skip
        assert inputs == [] and locktime == 0 and bip32derivs is True
        wallet = payout._wallet(DESCRIPTOR, CHANGE_DESCRIPTOR, "regtest")
        utxos = [
            payout.FunderUtxo(u["txid"], u["vout"], int(u["amount"] * 100_000_000),
                              self.tx1 if u["txid"] == self.txid1 else self.tx2,
                              int(u["desc"].split("]")[0].rsplit("/", 1)[1]),
                              "/1/" in u["desc"].split("]")[0])
            for u in self.unspent if u["desc"].startswith(f"wpkh([{FINGERPRINT}")
        ]  # fmt: skip
        payout._load_utxos_into(wallet, utxos, "regtest")
        builder = (
            bdk.TxBuilder()
            .fee_rate(bdk.FeeRate.from_sat_per_vb(int(options["fee_rate"])))
            .ordering(bdk.TxOrdering.SHUFFLE)
        )
        recipients = []
        for out in outputs:
            ((addr, amount),) = out.items()
            if not isinstance(amount, str | Decimal):  # a float would lose satoshi
                raise RpcError(-3, "Amount is not a number or string")
            recipients.append((addr, int(Decimal(amount) * 100_000_000)))
        if self.mode == "drop_award":
            recipients = recipients[1:]
        if self.mode == "wrong_amount":
            recipients[0] = (recipients[0][0], recipients[0][1] - 1)
        if self.mode == "extra_output":
            recipients.append((address("thief"), 50_000))
        for addr, sat in recipients:
            spk = bdk.Address(addr, bdk.Network.REGTEST).script_pubkey()
            builder = builder.add_recipient(spk, bdk.Amount.from_sat(sat))
        change_to = options.get("changeAddress")
        if self.mode == "foreign_change":
            change_to = address("thief")
        if change_to:
            builder = builder.drain_to(bdk.Address(change_to, bdk.Network.REGTEST).script_pubkey())
        psbt = builder.finish(wallet)
        text = psbt.serialize()
        if self.mode == "no_derivs":  # as if bip32derivs had been ignored
            from embit.psbt import PSBT

            bare = PSBT.from_string(text)
            for inp in bare.inputs:
                inp.bip32_derivations = {}
            text = bare.to_string()
        return {"psbt": text, "fee": Decimal(btc(psbt.fee())), "changepos": -1}

    # --- HTTP -------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                want = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {want}":
                    self._send(401, b"")
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])),
                                  parse_float=Decimal)  # fmt: skip
                if self.path not in ("/", f"/wallet/{WALLET}"):
                    self._error(body, -18, "Requested wallet does not exist or is not loaded")
                    return
                method, params = body["method"], body.get("params", [])
                standin.calls.append((method, params))
                handler = getattr(standin, method, None)
                if handler is None:
                    self._error(body, -32601, "Method not found", status=404)
                    return
                try:
                    result = handler(*params)
                except RpcError as exc:
                    self._error(body, exc.code, exc.message)
                    return
                self._send(200, dumps({"result": result, "error": None, "id": body["id"]}))

            def _error(self, body: Any, code: int, message: str, status: int = 500) -> None:
                answer = {"result": None, "error": {"code": code, "message": message}}
                self._send(status, dumps({**answer, "id": body.get("id")}))

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def dumps(value: Any) -> bytes:
    """JSON with Decimal amounts written as numbers, the way Core writes them."""
    marks: dict[str, str] = {}

    def mark(obj: Any) -> Any:
        if isinstance(obj, Decimal):
            key = f"@@{len(marks)}@@"
            marks[key] = f"{obj:f}"
            return key
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=mark)
    for key, number in marks.items():
        text = text.replace(f'"{key}"', number)
    return text.encode()
