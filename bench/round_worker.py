"""Benchmark: a grant round's worker job (``rounds.compute_job``) alone, on a kept database.

Runs the job in this process on a database a ``bench/publish_scale.py --keep`` run left
(or any registry database), with a fixed signing key and settings, and prints its CPU
seconds, peak RSS and a SHA-256 of everything it produced (the stored settings, signed
inputs, result and summary, every chunk's text, the per-proxy rows): run it with two
versions of the code (``PYTHONPATH=OTHER/src``) and the digests say whether the rounds
they compute are byte for byte the same.

    .venv/bin/python bench/round_worker.py --database NAME [--days 30] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import json
import resource
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from resistance.grants.model import GrantSettings, canonical_json, settings_to_json
from resistance.registry import rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--end", help="the period's last day (default: yesterday)")
    parser.add_argument("--probation", type=int, default=0)
    parser.add_argument("--profile", help="write a cProfile of the job to this file")
    args = parser.parse_args()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{args.database}"
    end = dt.date.fromisoformat(args.end) if args.end else dt.date.today() - dt.timedelta(days=1)
    settings = GrantSettings(
        round_id="bench-worker", network="regtest", target_country="RU",
        period_start=end - dt.timedelta(days=args.days - 1), period_end=end,
        budget_sat=10**9, fee_reserve_sat=0, probation_days=args.probation,
    )  # fmt: skip
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-worker").digest())
    keys = [key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())]
    settings_json = canonical_json(settings_to_json(settings))
    started, cpu = time.perf_counter(), time.process_time()
    if args.profile:
        profile = cProfile.Profile()
        done = profile.runcall(rounds.compute_job, url, settings_json, keys)
        profile.dump_stats(args.profile)
    else:
        done = rounds.compute_job(url, settings_json, keys)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = hashlib.sha256()
    if isinstance(done, tuple):
        digest.update(repr(done).encode())
        what = f"refused: {done[1]}"
    else:
        for name in sorted(done.stored):
            digest.update(f"{name}={done.stored[name]}\n".encode())
        for chunk in done.chunks:
            digest.update(chunk.encode() + b"\n")
        digest.update(json.dumps(done.per_proxy, sort_keys=True).encode())
        digest.update(json.dumps([done.carry_ids, done.skipped_operators]).encode())
        what = f"{len(done.chunks)} chunks, {len(done.per_proxy)} proxies"
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "cpu": round(cpu, 2),
                "peak_mb": round(peak),
                "what": what,
                "sha256": digest.hexdigest(),
            }
        )
    )


if __name__ == "__main__":
    main()
