"""Retention of raw probe results: old batches and their result rows are pruned.

Every signed batch is stored verbatim with a row per result (``probe_batches``,
``probe_results``): about 450 bytes a result, some 2 TB a month at 10,000
proxies measured by 100 probes every 10 minutes.  What the registry computes
from them is folded in at upload and kept: per-probe evidence and verdicts,
daily rollups (which grant rounds read; an approved round keeps its signed
inputs), so raw results are kept only ``retention_days`` (by when they were
received) for audits and the dashboards' recent results.  The default, 3
days, is the verdicts' own memory (:class:`resistance.probe.verdict.Rules`
``stale_seconds``); rounds are never recomputed from raw results.

Theory of operation: a named background task (:func:`prune_periodically`)
runs :func:`prune` every ``prune_interval`` seconds.  One run holds a
registry-wide lock for its duration (a PostgreSQL session advisory lock:
among registry processes sharing a database one prunes, the others skip that
run) and deletes in chunks of at most ``prune_chunk`` batches, the oldest
first, each chunk with its results in its own short transaction, so ingestion
and requests never wait behind one long delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from resistance.registry import repositories as repo
from resistance.registry.services import Registry
from resistance.registry.settings import RegistrySettings

log = logging.getLogger(__name__)

DAY = 86400


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one run deleted; ``ran`` is false when another process held the lock."""

    batches: int
    results: int
    before: int
    ran: bool = True


def describe(settings: RegistrySettings) -> str:
    """One line for the start-up output."""
    days = settings.retention_days
    if days == 0:
        return "raw probe results and batch bodies are kept for ever (--retention-days 0)"
    return (
        f"raw probe results and batch bodies kept {days} days, pruned in the background "
        f"every {settings.prune_interval:g} s (rollups, verdicts and rounds kept)"
    )


async def prune(registry: Registry, *, stop: asyncio.Event | None = None) -> Pruned:
    """Delete the batches received more than ``retention_days`` ago, chunk by chunk
    (stopping between two chunks once ``stop`` is set)."""
    settings = registry.settings
    before = registry.now() - settings.retention_days * DAY
    batches = results = 0
    async with registry.engine.connect() as connection:
        held = await repo.try_prune_lock(connection)
        await connection.commit()
        if not held:
            return Pruned(0, 0, before, ran=False)
        try:
            while stop is None or not stop.is_set():
                chunk = await repo.prune_batches(
                    connection, before=before, limit=settings.prune_chunk
                )
                await connection.commit()
                batches, results = batches + chunk[0], results + chunk[1]
                if chunk[0] < settings.prune_chunk:
                    break
                await asyncio.sleep(0)  # let requests in between chunks
        except BaseException:
            # Closing the connection ends its database session and so the lock with it
            # (a pooled connection would otherwise keep holding it).
            await connection.invalidate()
            raise
        await repo.release_prune_lock(connection)
        await connection.commit()
    return Pruned(batches, results, before)


async def prune_periodically(registry: Registry, stop: asyncio.Event) -> None:
    """The named background task: prune at once, then every ``prune_interval`` seconds,
    until ``stop`` is set (it then ends between two chunks, never inside a query)."""
    while not stop.is_set():
        try:
            done = await prune(registry, stop=stop)
        except Exception:
            log.exception("pruning raw probe results failed; will retry next interval")
        else:
            if done.batches:
                log.info(
                    "pruned %d probe batches (%d raw results) received before %d",
                    done.batches,
                    done.results,
                    done.before,
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), registry.settings.prune_interval)
