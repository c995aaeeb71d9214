"""The lab's funder and payees on regtest: a real Electrum wallet signs the round's PSBT.

The funder is an Electrum segwit wallet restored from a fixed, published test
seed (regtest only: these coins exist nowhere).  This project still never
sees a private key: the lab hands Electrum the seed on the command line the
way a funder restores their own wallet, and takes back only the signed
transaction.  The funder's coins are one funding transaction that is never
mined (regtest, offline): enough for a PSBT's ``non_witness_utxo`` and for
Electrum to sign, as on a hardware wallet.

Payees are valid regtest P2WPKH addresses derived from a label; nobody holds
their keys, which is all a payout needs to be checked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from resistance.lab.errors import LabError

# Made once with `electrum make_seed --seed_type segwit`; regtest test funds only.
SEED_WORDS = "assault lab cost stand absent twice jewel snack ski weather anxiety future"
FINGERPRINT = "261c691a"
ACCOUNT_TPUB = (
    "tpubD8YNgfWPjDSQeq8PHS9nDThKgAkCCM6RpPU67CZYmy6MrnzPcMRkCFVAveMF1X5Qgf"
    "FAgwmaxWb1R6jPhyBAXRXzQ9rzjkZ2zUMz9N1stHD"
)
#: Electrum's segwit account is m/0'; its receive and change branches as descriptors.
DESCRIPTOR = f"wpkh([{FINGERPRINT}/0h]{ACCOUNT_TPUB}/0/*)"
CHANGE_DESCRIPTOR = f"wpkh([{FINGERPRINT}/0h]{ACCOUNT_TPUB}/1/*)"
ELECTRUM_SECONDS = 120.0


def payee_address(label: int | str) -> str:
    """A valid regtest P2WPKH address for an operator, deterministic from its label."""
    import bdkpython as bdk

    h = hashlib.sha256(f"lab-operator-{label}".encode()).digest()[:20]
    return str(bdk.Address.from_script(bdk.Script(b"\x00\x14" + h), bdk.Network.REGTEST))


def wallet_address(index: int, change: bool = False) -> str:
    """The funder wallet's receive (or change) address ``index``, as Electrum lists it."""
    import bdkpython as bdk

    d = bdk.Descriptor(CHANGE_DESCRIPTOR if change else DESCRIPTOR, bdk.NetworkKind.TEST)
    return str(d.derive_address(index, bdk.Network.REGTEST))


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def funding_tx(outputs: list[tuple[str, int]], tag: bytes) -> str:
    """A never-mined transaction (hex) paying ``outputs``, spending a made-up outpoint.

    Written by hand because no library here builds a transaction without a
    wallet holding its inputs; it is 15 lines of the plain serialization and
    only ever feeds a PSBT's previous-transaction field in the lab.
    """
    import bdkpython as bdk

    raw = struct.pack("<i", 2) + _varint(1)
    raw += hashlib.sha256(tag).digest() + struct.pack("<I", 0) + _varint(0)
    raw += struct.pack("<I", 0xFFFFFFFF) + _varint(len(outputs))
    for addr, value in outputs:
        spk = bdk.Address(addr, bdk.Network.REGTEST).script_pubkey().to_bytes()
        raw += struct.pack("<q", value) + _varint(len(spk)) + spk
    raw += struct.pack("<I", 0)
    return raw.hex()


def funder_utxos(values: list[int], tag: bytes = b"lab-funding") -> list[dict[str, Any]]:
    """UTXO-file entries (``resist grants psbt --utxos``) for coins on receive addresses 0.."""
    import bdkpython as bdk

    hex_tx = funding_tx([(wallet_address(i), v) for i, v in enumerate(values)], tag)
    txid = str(bdk.Transaction(bytes.fromhex(hex_tx)).compute_txid())
    return [
        {"txid": txid, "vout": i, "value": v, "prev_tx_hex": hex_tx, "derivation_index": i}
        for i, v in enumerate(values)
    ]


class Electrum:
    """Debian's electrum, headless, offline, on regtest, with its own data directory."""

    def __init__(self, root: Path) -> None:
        found = shutil.which("electrum")
        if found is None:
            raise LabError("electrum is not installed (apt-get install electrum)")
        self.program = found
        self.dir = root
        self.wallet = root / "regtest" / "wallets" / "funder"

    def __call__(self, *args: str, wallet: bool = True) -> str:
        cmd = [self.program, "--offline", "--regtest", "-D", str(self.dir)]
        if wallet:
            cmd += ["-w", str(self.wallet)]
        try:
            done = subprocess.run(
                [*cmd, *args], capture_output=True, text=True, timeout=ELECTRUM_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"electrum {args[0]} took longer than {ELECTRUM_SECONDS:g} s") from None
        if done.returncode != 0:
            raise LabError(f"electrum {args[0]}: {done.stderr.strip()[-200:]}")
        return done.stdout.strip()

    def restore(self) -> None:
        if not self.wallet.exists():
            self.wallet.parent.mkdir(parents=True, exist_ok=True)
            self("restore", SEED_WORDS)
        addresses = json.loads(self("listaddresses"))
        if addresses[:1] != [wallet_address(0)]:
            raise LabError("the electrum wallet does not match the lab funder's descriptor")

    def sign(self, psbt_base64: str) -> str:
        """The finalized transaction (hex); an error if Electrum signed nothing."""
        signed = self("signtransaction", psbt_base64)
        if signed.startswith("cHNidP"):  # Electrum hands the PSBT back when it cannot sign
            raise LabError("electrum returned the PSBT unsigned")
        return signed
