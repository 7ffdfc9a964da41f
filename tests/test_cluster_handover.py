"""A worker giving a surplus partition back (a newcomer joined) keeps renewing its other
leases while that partition's last batches are handled, however long that takes.

Found by `tagwatch bench cluster` at load 19: after a restart, the old worker's lease round
waited for the give-back (its units of work queued behind the other partitions'), renewed
nothing for longer than lease_ttl_s, and the newcomer took every lease as expired; then
the same happened the other way round, again and again.

In process, on a real PostgreSQL: one ClusterDaemon (its lease rounds as `tagwatch run`
runs them; no broker answers, so its partitions' sessions only retry) and a newcomer's
Leases. Its give-back is made slow (3 x lease_ttl_s) by the subclass below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagwatch.config import load_config
from tagwatch.daemon.caseset import load_caseset
from tagwatch.daemon.cluster import ClusterDaemon
from tagwatch.ingest.embedded_broker import free_port
from tagwatch.ingest.leases import Leases
from tagwatch.ingest.mqtt import BrokerSettings
from tagwatch.record import Record
from tests.daemon_harness import write_config
from tests.record_db import RecordDb, record_database

TTL = 2.0
K = 4


class SlowHandover(ClusterDaemon):
    """A worker whose give-back of a partition takes 3 x lease_ttl_s (as on a loaded
    machine, where the partition's last units of work wait behind the others')."""

    async def _drop(self, p: int, why: str, count_loss: bool = True) -> None:
        if why == "rebalanced":
            await asyncio.sleep(3 * TTL)
        await super()._drop(p, why, count_loss)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[RecordDb]:
    with record_database("postgresql", tmp_path) as db:
        yield db


def _worker(tmp_path: Path, pg: RecordDb) -> tuple[SlowHandover, Record]:
    broker = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    extra = f'[cluster]\nworker = "w1"\npartitions = {K}\nlease_ttl_s = {TTL}\n'
    config = load_config(write_config(tmp_path / "w1.toml", broker, pg.url, "tagwatch/v1",
                                      extra=extra), {})
    caseset = load_caseset(config.cases.path)
    record = Record.open(config.record.url)
    worker = SlowHandover(config, record, caseset.zoneset, caseset.cases)
    worker._settings = BrokerSettings.from_url(broker, client_id="twh")
    return worker, record


async def _until(check, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_slow_give_back_keeps_the_workers_other_leases(tmp_path: Path, pg) -> None:
    async def scenario() -> None:
        w1, record = _worker(tmp_path, pg)
        await asyncio.to_thread(w1.leases.setup)
        rounds = asyncio.create_task(w1._lease_rounds())
        try:
            await _until(lambda: len(w1.served) == K, "w1 serving every partition", 10 * TTL)
            newcomer = Leases(pg.url, "w2", K, TTL)
            newcomer.setup()
            # the newcomer's rounds for 5 x TTL: w1 names partition 3 surplus and spends
            # 3 x TTL handing it over; its leases on 0 and 1 must stay live all along
            end = time.monotonic() + 5 * TTL
            while time.monotonic() < end:
                await asyncio.to_thread(newcomer.round)
                await asyncio.sleep(TTL / 3)
            leases = pg.raw("SELECT partition, owner, epoch FROM cluster_leases "
                            "WHERE partition IN (0, 1) ORDER BY partition")
            assert [tuple(row) for row in leases] == [(0, "w1", 1), (1, "w1", 1)]
            losses = w1.metrics.registry.get_sample_value("tagwatch_lease_losses_total")
            assert losses == 0
            assert 3 in newcomer.held  # the give-back did end, and the newcomer took it
            newcomer.release(list(newcomer.held))
            newcomer.close()
        finally:
            rounds.cancel()
            await asyncio.gather(rounds, *w1._giving.values(), return_exceptions=True)
            for p in list(w1.served):
                await w1._drop(p, "stopping")
            w1.leases.close()
            record.close()

    asyncio.run(scenario())
