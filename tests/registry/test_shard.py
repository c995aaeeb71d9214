"""Rendezvous sharding of proxies over probes: balance, stability, secrecy (pure)."""

from __future__ import annotations

import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.registry import shard

KEY = shard.shard_key(b"ring key of the registry under test")


def owners(s: shard.Shards) -> dict[int, frozenset[int]]:
    return {int(x): frozenset(s.replicas_of(int(x))) for x in s.proxy_ids}


@settings(max_examples=30, deadline=None)
@given(
    proxies=st.sets(st.integers(1, 2**40), min_size=1, max_size=120),
    probes=st.sets(st.integers(1, 10_000), min_size=1, max_size=12),
    replicas=st.integers(1, 5),
)
def test_every_proxy_gets_min_r_n_distinct_probes_and_shares_agree(
    proxies: set[int], probes: set[int], replicas: int
) -> None:
    s = shard.assign(KEY, proxy_ids=sorted(proxies), probe_ids=sorted(probes), replicas=replicas)
    want = min(replicas, len(probes))
    for proxy, who in owners(s).items():
        assert len(who) == want and who <= probes
        for p in probes:  # a probe's share holds exactly the proxies it is a replica of
            assert (proxy in set(s.share(p).tolist())) == (p in who)
    assert sum(s.counts().values()) == want * len(proxies)
    assert s.share(10_001).size == 0  # not a probe of this network


@settings(max_examples=25, deadline=None)
@given(
    probes=st.sets(st.integers(1, 500), min_size=2, max_size=15),
    data=st.data(),
)
def test_a_probe_leaving_moves_only_its_own_proxies_and_joining_takes_only_its_share(
    probes: set[int], data: st.DataObject
) -> None:
    proxies = list(range(1, 601))
    before = owners(shard.assign(KEY, proxy_ids=proxies, probe_ids=sorted(probes), replicas=3))
    gone = data.draw(st.sampled_from(sorted(probes)))
    after = owners(
        shard.assign(KEY, proxy_ids=proxies, probe_ids=sorted(probes - {gone}), replicas=3)
    )
    for proxy in proxies:
        if gone not in before[proxy]:
            assert after[proxy] == before[proxy]  # nothing else moves
        else:  # the others keep it, and at most one probe steps in for the one gone
            assert before[proxy] - {gone} <= after[proxy]
            assert len(after[proxy] - before[proxy]) == (1 if len(probes) > 3 else 0)
    # Joining (``gone`` coming back) is the same move backwards: the newcomer takes each
    # proxy it now ranks for from exactly one probe, and no other proxy changes hands.
    taken = [p for p in proxies if gone in before[p]]
    assert all(len(before[p] ^ after[p]) == (2 if len(probes) > 3 else 1) for p in taken)
    assert all(before[p] == after[p] for p in proxies if p not in taken)


def test_the_load_is_even_at_100k_proxies_and_100_probes() -> None:
    proxies, probes = np.arange(1, 100_001), list(range(1, 101))
    started = time.process_time()
    s = shard.assign(KEY, proxy_ids=proxies, probe_ids=probes, replicas=3)
    spent = time.process_time() - started
    counts = np.array(list(s.counts().values()))
    assert counts.sum() == 300_000
    # R/N = 3 % of 100k = 3,000 each; a binomial's spread is ~54, so +-10 % is > 5 sigma.
    assert counts.min() > 2_700 and counts.max() < 3_300, (counts.min(), counts.max())
    print(f"100k proxies x 100 probes: {spent:.2f} s of CPU")


def test_the_shares_depend_on_the_key() -> None:
    proxies, probes = list(range(1, 1001)), [1, 2, 3, 4, 5, 6]
    a = shard.assign(KEY, proxy_ids=proxies, probe_ids=probes, replicas=2)
    b = shard.assign(shard.shard_key(b"another"), proxy_ids=proxies, probe_ids=probes, replicas=2)
    by_a, by_b = owners(a), owners(b)
    same = sum(by_a[p] == by_b[p] for p in proxies)
    assert same < 200  # 1 in 15 pairs by chance: ~67 of 1000


def test_the_cache_reuses_equal_inputs_and_not_others() -> None:
    cache = shard.ShardCache(size=2)
    one = cache.get(KEY, proxy_ids=[1, 2, 3], probe_ids=[5, 4], replicas=1)
    assert cache.get(KEY, proxy_ids=[1, 2, 3], probe_ids=[4, 5], replicas=1) is one
    assert cache.get(KEY, proxy_ids=[1, 2, 3, 9], probe_ids=[4, 5], replicas=1) is not one
    assert cache.get(KEY, proxy_ids=[1, 2, 3], probe_ids=[4, 5], replicas=2) is not one


def test_liveness_is_a_batch_within_one_and_a_half_rounds() -> None:
    assert shard.is_live(1000, now=1900, round_seconds=600)
    assert not shard.is_live(1000, now=1901, round_seconds=600)
    assert not shard.is_live(None, now=0, round_seconds=600)
    assert shard.silent_after(0) == 60  # continuous probes: a minute


async def test_migration_0016_backfills_the_last_batch_and_goes_back(db_url: str) -> None:
    """Probes that reported before the migration are live from their latest batch."""
    from sqlalchemy import text

    from resistance.registry.db import make_engine, migrate
    from tests.registry.test_wireguard import downgrade

    await migrate(db_url)
    await downgrade(db_url, "0013")
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            for n in (1, 2):
                await conn.execute(
                    text(
                        "INSERT INTO probe_accounts (id, name, public_key, country, control,"
                        " created_at) VALUES (:n, :name, 'x', 'RU', false, 1)"
                    ),
                    {"n": n, "name": f"p{n}"},
                )
            for batch_id, at in (("a", 100), ("b", 300), ("c", 200)):
                await conn.execute(
                    text(
                        "INSERT INTO probe_batches (batch_id, probe_id, digest, created_at,"
                        " received_at, result_count, body) VALUES (:b, 1, 'd', 1, :at, 0, '')"
                    ),
                    {"b": batch_id, "at": at},
                )
        await migrate(db_url)
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id, last_batch_at, last_assignment_at FROM probe_accounts ORDER BY id")
            )
            assert [tuple(r) for r in rows] == [(1, 300, None), (2, None, None)]
        await downgrade(db_url, "0013")
        async with engine.connect() as conn:
            columns = await conn.execute(text("SELECT * FROM probe_accounts"))
            assert "last_batch_at" not in list(columns.keys())
        await migrate(db_url)
    finally:
        await engine.dispose()


def test_voters_are_the_current_replicas_of_each_network_less_flagged_probes() -> None:
    key = shard.shard_key(b"k" * 32)
    proxies = list(range(1, 201))
    fleet = shard.Fleet(
        live={"RU": frozenset({1, 2, 3, 4, 5}), "control": frozenset()},
        everyone={"RU": frozenset({1, 2, 3, 4, 5, 6}), "control": frozenset({10, 11, 12, 13})},
        flagged=frozenset({2}),
    )
    found = shard.voters(key, fleet, proxy_ids=proxies, replicas=2)
    inside = shard.assign(key, proxy_ids=proxies, probe_ids=[1, 2, 3, 4, 5], replicas=2)
    # No control probe is live: the last ones stand, ranked among all of them.
    outside = shard.assign(key, proxy_ids=proxies, probe_ids=[10, 11, 12, 13], replicas=2)
    for p in proxies:
        expected = set(inside.replicas_of(p)) | set(outside.replicas_of(p))
        assert found[p] == frozenset(expected - {2})
        assert 6 not in found[p]  # not live: whatever it measured, it no longer votes
    assert any(2 in inside.replicas_of(p) for p in proxies)
    # The uploader is live in its network at once.
    assert 6 in fleet.with_live("RU", 6).pool("RU") and fleet.with_live("RU", 1) is fleet
