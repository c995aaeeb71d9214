"""Benchmark: the funder's commands on a round file over 100,000 proxies and 30 days.

``make`` writes a draft and an approved /2 round file (chunks of 1,000 proxies, the
registry's size; 20,000 operators; signed by a fresh key) and a UTXO file that pays
them. ``measure`` runs ``resist grants`` commands on those files in child processes,
each with the code under test and, when ``--base`` names another ``src``, with that
code too (alternated, ``--repeat`` times), and prints each child's peak RSS and CPU
seconds (user + system, from ``wait4``).

    .venv/bin/python bench/grants_files.py make /tmp/g100k --proxies 100000 --days 30
    .venv/bin/python bench/grants_files.py measure /tmp/g100k --base /tmp/main/src
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bdkpython as bdk
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.grants import files, rounds, signing
from resistance.grants.model import CHUNK_PROXIES, GrantSettings, RoundInputs, chunk_text
from resistance.lab.funder import CHANGE_DESCRIPTOR, DESCRIPTOR, funding_tx, wallet_address

START = dt.date(2026, 11, 1)


def regtest_address(name: str) -> str:
    """A valid P2WPKH address nobody holds a key for."""
    script = bdk.Script(b"\x00\x14" + hashlib.sha256(name.encode()).digest()[:20])
    return str(bdk.Address.from_script(script, bdk.Network.REGTEST))


def make(where: Path, proxies: int, days: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    operators = max(1, proxies // 5)
    payout = [regtest_address(f"op-{o}") for o in range(operators)]
    chunks = []
    for first in range(0, proxies, CHUNK_PROXIES):
        entries = []
        for p in range(first, min(first + CHUNK_PROXIES, proxies)):
            op = p % operators if p % 10 else p % 50
            quality = rnd.choice((24, 24, 24, 23, 22, 18, 12))
            entries.append({
                "proxy_id": f"proxy-{p:06d}", "operator_id": f"op-{op:05d}",
                "network": f"10.{(p // 4) // 256 % 256}.{(p // 4) % 256}.0/24",
                "payout_address": payout[op], "country": "RU", "day": list(range(days)),
                "control_attempts": [24] * days, "control_successes": [24] * days,
                "target_attempts": [24] * days,
                "target_successes": [quality if rnd.random() > 0.05 else quality // 2
                                     for _ in range(days)],
                "throughput_kbps": [rnd.randrange(500, 20_000) for _ in range(days)],
            })  # fmt: skip
        chunks.append(chunk_text(START, entries))
    settings = GrantSettings(
        round_id="2026-11-RU", network="regtest", target_country="RU", period_start=START,
        period_end=START + dt.timedelta(days=days - 1), budget_sat=1_000_000_000,
        fee_reserve_sat=5_000_000, min_payout_sat=10_000,
    )  # fmt: skip
    key = Ed25519PrivateKey.generate()
    inputs = signing.sign_inputs(settings, RoundInputs((), chunks=tuple(chunks)), [key])
    draft = rounds.compute_round(settings, inputs)
    where.mkdir(parents=True, exist_ok=True)
    files.save_round(where / "draft.json", draft)
    approved = rounds.approve(draft)
    files.save_round(where / "approved.json", approved)
    paid = sum(a.amount_sat for a in approved.result.payouts())
    value = paid + 20_000_000
    hex_tx = funding_tx([(wallet_address(0), value)], b"bench")
    txid = str(bdk.Transaction(bytes.fromhex(hex_tx)).compute_txid())
    utxos = [{"txid": txid, "vout": 0, "value": value, "prev_tx_hex": hex_tx,
              "derivation_index": 0}]  # fmt: skip
    (where / "utxos.json").write_text(json.dumps(utxos))
    print(
        f"{where}: draft.json {(where / 'draft.json').stat().st_size / 1e6:.1f} MB, "
        f"{len(chunks)} chunks, {len(approved.result.payouts())} payouts of {operators} operators"
    )


def commands(where: Path, out: Path) -> dict[str, list[str]]:
    approved = str(where / "approved.json")
    return {
        "verify": ["verify", approved],
        "approve": ["approve", str(where / "draft.json"), "--out", str(out)],
        "report csv": ["report", approved, "--format", "csv", "--out", str(out)],
        "report json": ["report", approved, "--format", "json", "--out", str(out)],
        "electrum-list": ["electrum-list", approved, "--out", str(out)],
        "bip21": ["bip21", approved, "--out", str(out)],
        "psbt": ["psbt", approved, "--descriptor", DESCRIPTOR, "--change-descriptor",
                 CHANGE_DESCRIPTOR, "--utxos", str(where / "utxos.json"), "--fee-rate", "2",
                 "--network", "regtest", "--out", str(out)],
    }  # fmt: skip


def run(args: list[str], src: str | None) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS MB) of ``resist grants ARGS`` in a child."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "resistance", "grants", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    assert child.stderr is not None
    err = child.stderr.read().decode()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 and (args[0], child.returncode) != ("verify", 1):
        # verify says 1 without --trust: the signer is not trusted (it still reads it all)
        raise SystemExit(f"grants {args[0]} failed: {err.strip()[-300:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def measure(where: Path, base: str | None, repeat: int, only: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="grants-files-") as tmp:
        out = Path(tmp) / "out"
        table: dict[str, dict[str, list[tuple[float, float, int]]]] = {}
        for name, args in commands(where, out).items():
            if only and name not in only:
                continue
            for _ in range(repeat):
                for label, src in (("before", base), ("after", None)):
                    if label == "before" and base is None:
                        continue
                    table.setdefault(name, {}).setdefault(label, []).append(run(args, src))
                    out.unlink(missing_ok=True)
            print(name, json.dumps(table[name]), flush=True)
    print("\n| command | before: CPU s, peak RSS MB | after: CPU s, peak RSS MB | RSS ratio |")
    print("|---|---|---|---|")
    for name, runs in table.items():
        cells = []
        for label in ("before", "after"):
            got = runs.get(label, [])
            cells.append(", ".join(f"{c:.1f} s {m} MB" for _, c, m in got) or "-")
        ratio = (
            f"{min(m for *_, m in runs['after']) / min(m for *_, m in runs['before']):.2f}"
            if "before" in runs
            else "-"
        )
        print(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    m = sub.add_parser("make")
    m.add_argument("where", type=Path)
    m.add_argument("--proxies", type=int, default=100_000)
    m.add_argument("--days", type=int, default=30)
    r = sub.add_parser("measure")
    r.add_argument("where", type=Path)
    r.add_argument("--base", help="another src to run 'before' from (PYTHONPATH)")
    r.add_argument("--repeat", type=int, default=2)
    r.add_argument("--only", action="append", default=[], help="a command's name (repeatable)")
    a = parser.parse_args()
    if a.step == "make":
        make(a.where, a.proxies, a.days)
    else:
        measure(a.where, a.base, a.repeat, a.only)


if __name__ == "__main__":
    main()
