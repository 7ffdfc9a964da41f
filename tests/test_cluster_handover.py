"""A worker giving a surplus partition back (a newcomer joined) keeps renewing its other
leases while that partition's last batches are handled, however long that takes; and that
handling ends although fixes keep coming (what arrives after the stop is the next owner's).

Found by `tagwatch bench cluster` at load 19: after a restart, the old worker's lease round
waited for the give-back (its units of work queued behind the other partitions'), renewed
nothing for longer than lease_ttl_s, and the newcomer took every lease as expired; then
the same happened the other way round, again and again.

In process, on a real PostgreSQL: one ClusterDaemon (its lease rounds as `tagwatch run`
runs them) and a newcomer's Leases. In the first test no broker answers (the partitions'
sessions only retry) and the give-back is made slow (3 x lease_ttl_s) by a subclass; in
the second a private Mosquitto carries a steady stream to the partition given back.
"""

from __future__ import annotations

import asyncio
import threading
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


def _worker(tmp_path: Path, pg: RecordDb, broker: str | None = None,
            kind: type[ClusterDaemon] = SlowHandover) -> tuple[ClusterDaemon, Record]:
    broker = broker or f"mqtt://127.0.0.1:{free_port()}"  # by default nothing listens there
    extra = f'[cluster]\nworker = "w1"\npartitions = {K}\nlease_ttl_s = {TTL}\n'
    config = load_config(write_config(tmp_path / "w1.toml", broker, pg.url, "tagwatch/v1",
                                      extra=extra), {})
    caseset = load_caseset(config.cases.path)
    record = Record.open(config.record.url)
    worker = kind(config, record, caseset.zoneset, caseset.cases)
    worker._settings = BrokerSettings.from_url(broker, client_id="twh")
    return worker, record


async def _until(check, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)



async def _stop(w1: ClusterDaemon, rounds: asyncio.Task, record) -> None:
    """End the worker's lease rounds and give-backs, drop what it serves, close."""
    rounds.cancel()
    await asyncio.gather(rounds, *w1._giving.values(), return_exceptions=True)
    for p in list(w1.served):
        await w1._drop(p, "stopping")
    w1.leases.close()
    record.close()

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
            await _stop(w1, rounds, record)

    asyncio.run(scenario())


class SlowHandling(ClusterDaemon):
    """Each piece of work takes 50 ms more (a loaded machine); records the partitions whose
    task had to be cancelled when dropped (their handling did not end by itself)."""

    cut_short: list[int]

    async def _handle_piece(self, messages) -> None:
        await asyncio.sleep(0.05)
        await super()._handle_piece(messages)

    async def _drop(self, p: int, why: str, count_loss: bool = True) -> None:
        served = self.served.get(p)
        await super()._drop(p, why, count_loss)
        if served is not None and served.task is not None and served.task.cancelled():
            self.cut_short.append(p)


def test_a_give_back_under_a_steady_stream_ends_without_being_cut_short(
    tmp_path: Path, pg, mosquitto_factory
) -> None:
    from tests.daemon_harness import Publisher

    broker = mosquitto_factory().url

    async def scenario() -> None:
        w1, record = _worker(tmp_path, pg, broker, SlowHandling)
        assert isinstance(w1, SlowHandling)
        w1.cut_short = []
        await asyncio.to_thread(w1.leases.setup)
        rounds = asyncio.create_task(w1._lease_rounds())
        stop = threading.Event()
        pub = Publisher(broker)

        def stream() -> None:  # T-1001 far from its zones, on partition 3's topic (K-1,
            # the surplus a round names), every 5 ms until stopped
            n = 0
            while not stop.wait(0.005):
                ts = time.time() - 1
                pub.send("tw/tags/3/T-1001", {"ts": ts, "lat": 51.6, "lon": -0.3, "acc": 5})
                n += 1

        streaming = threading.Thread(target=stream, daemon=True)
        try:
            await _until(lambda: len(w1.served) == K, "w1 serving every partition", 10 * TTL)
            streaming.start()
            fixes = w1.metrics.registry.get_sample_value
            await _until(lambda: (fixes("tagwatch_fixes_total") or 0) > 20,
                         "the stream handled", 20)
            newcomer = Leases(pg.url, "w2", K, TTL)
            newcomer.setup()
            deadline = time.monotonic() + 30
            while 3 not in newcomer.held and time.monotonic() < deadline:
                await asyncio.to_thread(newcomer.round)
                await asyncio.sleep(TTL / 3)
            assert 3 in newcomer.held, "partition 3 was never given back"
            assert w1.cut_short == []
            newcomer.release(list(newcomer.held))
            newcomer.close()
        finally:
            stop.set()
            streaming.join(5) if streaming.is_alive() else None
            pub.close()
            await _stop(w1, rounds, record)

    asyncio.run(scenario())


class SlowTake(ClusterDaemon):
    """Each takeover takes lease_ttl_s / 2 more (a loaded machine: checkpoints read, the
    engine's cases rebuilt), so taking all K partitions in one round takes 2 x TTL."""

    async def _take(self, p: int, epoch: int) -> None:
        await asyncio.sleep(TTL / 2)
        await super()._take(p, epoch)


def test_a_round_taking_every_partition_slowly_keeps_them_all(tmp_path: Path, pg) -> None:
    async def scenario() -> None:
        w1, record = _worker(tmp_path, pg, kind=SlowTake)
        await asyncio.to_thread(w1.leases.setup)
        rounds = asyncio.create_task(w1._lease_rounds())
        sample = w1.metrics.registry.get_sample_value
        try:
            await _until(lambda: len(w1.served) == K, "w1 serving every partition", 10 * TTL)
            renewed = sample("tagwatch_lease_renewals_total") or 0
            # three more rounds' worth of renewals of all K (none, before the fix: every
            # lease had expired during the takes, and the worker dropped them all)
            await _until(lambda: (sample("tagwatch_lease_renewals_total") or 0) >= renewed + 3 * K,
                         "three more rounds", 10 * TTL)
            assert sample("tagwatch_lease_losses_total") == 0
            assert sorted(w1.served) == list(range(K))
            epochs = pg.raw("SELECT DISTINCT owner, epoch FROM cluster_leases")
            assert [tuple(row) for row in epochs] == [("w1", 1)]
        finally:
            await _stop(w1, rounds, record)

    asyncio.run(scenario())
