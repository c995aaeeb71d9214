"""A small registry world for the dashboard tests: stored as the registry stores it.

Rows are written through the registry's own models (the ingestion paths that
make them are tested elsewhere): two vantages, three proxies of one operator
(SOCKS5 public, MTProto, WireGuard) and one of another, verdicts and their
history, the probes' evidence and raw results, daily rollups for the last
days, and a blocklist import that lists one proxy.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from resistance.registry.models import (
    BlocklistImport,
    BlocklistRange,
    Operator,
    ProbeAccount,
    ProbeBatch,
    ProbeEvidenceRow,
    ProbeResult,
    ProbeRollup,
    Proxy,
    ProxyBlocklistFlag,
    ProxyVerdict,
    ProxyVerdictChange,
)
from resistance.registry.services import Registry
from tests.grants.helpers import address

DAY = 86400


@dataclass(frozen=True)
class Seeded:
    socks_id: int
    mtproto_id: int
    other_id: int
    days: list[str]


def _hex(ip: str) -> str:
    from resistance.registry.blocklist import address_hex

    return address_hex(ip)


async def seed(registry: Registry, *, operator_id: int, other_operator_id: int) -> Seeded:
    now = registry.now()
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    days = [(today - dt.timedelta(days=n)).isoformat() for n in range(4, 0, -1)]
    async with registry.sessions.begin() as db:
        op = await db.get(Operator, operator_id)
        assert op is not None
        op.payout_address = address("alice")
        op.payout_type = "p2wpkh"
        other = await db.get(Operator, other_operator_id)
        assert other is not None
        other.payout_address = address("bob")
        other.payout_type = "p2wpkh"
        inside = ProbeAccount(
            name="ru-moscow-1", public_key="a" * 43, country="RU", control=False, created_at=now
        )
        outside = ProbeAccount(
            name="de-control-1", public_key="b" * 43, country="DE", control=True, created_at=now
        )
        db.add_all([inside, outside])
        common = dict(
            public_key="", probe_user="probe", probe_password="pw", verified_at=now - 5 * DAY,
            status="active", registered_at=now - 5 * DAY,
        )  # fmt: skip
        socks = Proxy(
            operator_id=operator_id, host="198.51.100.7", port=1080, network="198.51.100.0/24",
            protocols=["socks5"], credentials=[{"username": "friend", "password": "s3cret pass"}],
            public=True, **common,
        )  # fmt: skip
        mtproto = Proxy(
            operator_id=operator_id, host="198.51.100.8", port=443, network="198.51.100.0/24",
            protocols=["mtproto"], credentials=[], public=True, mtproto_mode="ee",
            mtproto_domain="example.com", mtproto_key="0" * 32, **common,
        )  # fmt: skip
        wg = Proxy(
            operator_id=operator_id, host="198.51.100.9", port=51820, network="198.51.100.0/24",
            protocols=["wireguard"], credentials=[], public=False, wg_public_key="c" * 43 + "=",
            **common,
        )  # fmt: skip
        theirs = Proxy(
            operator_id=other_operator_id, host="203.0.113.5", port=1080,
            network="203.0.113.0/24", protocols=["socks5"],
            credentials=[{"username": "x", "password": "their-secret"}], public=False, **common,
        )  # fmt: skip
        db.add_all([socks, mtproto, wg, theirs])
        await db.flush()
        # The SOCKS5 proxy served, then the censor blocked it two hours ago.
        db.add(ProxyVerdict(
            proxy_id=socks.id, verdict="blocked", blocked_in=["RU"], since=now - 2 * 3600,
            updated_at=now,
        ))  # fmt: skip
        db.add(ProxyVerdict(
            proxy_id=mtproto.id, verdict="functional", blocked_in=[], since=now - 3 * DAY,
            updated_at=now,
        ))  # fmt: skip
        db.add(ProxyVerdict(
            proxy_id=theirs.id, verdict="down", blocked_in=[], since=now - DAY, updated_at=now,
        ))  # fmt: skip
        db.add_all([
            ProxyVerdictChange(
                proxy_id=socks.id, at=now - 5 * DAY + 600, verdict="functional", blocked_in=[],
                previous="untested",
            ),
            ProxyVerdictChange(
                proxy_id=socks.id, at=now - 2 * 3600, verdict="blocked", blocked_in=["RU"],
                previous="functional",
            ),
        ])  # fmt: skip
        for probe, ok in ((inside, False), (outside, True)):
            db.add(ProbeEvidenceRow(
                proxy_id=socks.id, probe_id=probe.id, country=probe.country,
                control=probe.control, last_at=now - 300, last_ok=ok,
                fail_streak=0 if ok else 7, fail_windows=[] if ok else [1, 2],
                mechanism="ok" if ok else "ip-blackhole", transports=None,
            ))  # fmt: skip
            db.add(ProbeEvidenceRow(
                proxy_id=mtproto.id, probe_id=probe.id, country=probe.country,
                control=probe.control, last_at=now - 300, last_ok=True, fail_streak=0,
                fail_windows=[], mechanism="ok", transports=None,
            ))  # fmt: skip
        batch = ProbeBatch(
            batch_id=uuid.uuid4().hex, probe_id=inside.id, digest="0" * 64, created_at=now - 300,
            received_at=now - 200, result_count=1, body="{}",
        )  # fmt: skip
        db.add(batch)
        await db.flush()
        db.add(ProbeResult(
            batch_id=batch.batch_id, probe_id=inside.id, proxy_id=socks.id,
            measured_at=now - 300, country="RU", control=False, ok=False, step="tcp",
            failure="timeout", detail="no answer to SYN", connect_us=None, ttfb_us=None,
            throughput_kbps=None, mechanism="ip-blackhole",
        ))  # fmt: skip
        for n, day in enumerate(days):
            for proxy, owner_ok in ((socks, n < 3), (mtproto, True), (theirs, True)):
                for control in (False, True):
                    ok = 24 if (owner_ok or control) else 0
                    db.add(ProbeRollup(
                        proxy_id=proxy.id, day=day, country="DE" if control else "RU",
                        control=control, attempts=24, successes=ok, latency_hist=[],
                        latency_p50_ms=None, latency_p90_ms=None, throughput_hist=[],
                        throughput_p50_kbps=None,
                    ))  # fmt: skip
        for k, prefixes in enumerate((120, 480)):
            record = BlocklistImport(
                source=f"dump-{k}.csv", kind="dump", updated=days[k],
                imported_at=now - (3 - k) * DAY, prefixes=prefixes, ranges=prefixes // 2, skipped=0,
            )  # fmt: skip
            db.add(record)
            await db.flush()
        # The current list covers 198.51.100.0/24 (256 addresses, one of them a proxy).
        db.add(BlocklistRange(
            start_hex=_hex("198.51.100.0"), end_hex=_hex("198.51.100.255"),
            first_import=record.id,
        ))  # fmt: skip
        for proxy, listed in ((socks, True), (theirs, False)):
            db.add(ProxyBlocklistFlag(
                proxy_id=proxy.id, import_id=record.id, listed=listed, checked_at=now,
                listed_since=record.id if listed else None,
            ))  # fmt: skip
        ids = Seeded(socks.id, mtproto.id, theirs.id, days)
    return ids
