"""Cluster mode of `tagwatch run` (DESIGN 7): this process is one worker of several.

Each partition p of the broker's mapping is an MQTT persistent session of its own
(client id `{client_id}-p{p}`, filter `{partition_prefix}/{p}/+`), served only while this
worker holds p's lease in PostgreSQL (tagwatch/ingest/leases.py). The daemon's units of
work are unchanged; what differs:

- a batch holds one partition's messages, and its commit carries that partition's fence
  (a tick's, every partition served): a worker that lost a lease has its commit refused
  (Fenced), undoes the batch, leaves the messages unacknowledged for the new owner, stops
  that partition's session and never reconnects it without a new lease;
- the engine knows only the cases with a tag in a partition served here; on takeover it
  restores their rule state from the checkpoints, read after the lease was taken (so the
  old owner's last commit is in them, and any later one is refused);
- the SMS ledger and the escalation clocks are checkpointed per partition (an alert's is
  its tag's, a victim's its case's first tag's) under the fences of the commit, taken over
  with the partition and forgotten when it is dropped: a new owner neither texts again
  nor forgets a pending escalation;
- a lease round every lease_ttl_s / 3: renew, take free or expired partitions up to a
  fair share, give one surplus back; when no round has succeeded for lease_ttl_s (the
  database unreachable, or this process stopped), every partition is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import msgspec
import structlog
from prometheus_client import Counter, Gauge

from tagwatch.config import Config
from tagwatch.daemon.effects import ESCALATION_KEY, LEDGER_KEY
from tagwatch.daemon.service import Daemon
from tagwatch.ingest import partitions as parts
from tagwatch.ingest.batcher import Batcher, RateGate
from tagwatch.ingest.leases import Leases
from tagwatch.ingest.mqtt import Backoff, BrokerSettings, Message, MqttConnection, connect_unless
from tagwatch.ingest.partitions import partition_of
from tagwatch.notify.escalation import Escalation
from tagwatch.notify.policy import SmsLedger
from tagwatch.record import (
    Batch,
    Fence,
    Fenced,
    OutboxItem,
    Record,
    RecordError,
    RecordUnavailable,
)
from tagwatch.wire import MAX_PAYLOAD_BYTES, parse_rfc3339, status_message, too_deep
from zones import Case, ZoneSet
from zones.models import OWNTRACKS_DEVICE

log = structlog.get_logger("tagwatch.cluster")
_LEASE_ROUNDS_PER_TTL = 3
_STOP_WAIT_S = 10.0  # a dropped partition's batch in hand may take this long to end


@dataclass
class Served:
    """A partition this worker holds: its lease epoch, session and unit-of-work task."""

    partition: int
    fence: Fence
    conn: MqttConnection
    batcher: Batcher[Message]
    gate: RateGate | None  # the per-tag rate limit at its door (its own token buckets)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    taken_at: float = field(default_factory=time.time)
    committed: bool = False
    drain: bool = False  # a graceful stop: handle what was received before closing


class OwnOutbox:
    """The record, but its outbox_due gives only the rows of the partitions served, and
    a commit made without a fence (an operator's action) is fenced by the partitions
    whose notification state it writes."""

    def __init__(self, record: Record, partitions: Callable[[], list[int]],
                 fences_of: Callable[[Batch], list[Fence]]) -> None:
        self._record = record
        self._partitions = partitions
        self._fences_of = fences_of

    def __getattr__(self, name: str):
        return getattr(self._record, name)

    def commit(self, batch: Batch, recorded_at: float, fence=None) -> None:
        fences = self._fences_of(batch) if fence is None else None
        if not fences:
            self._record.commit(batch, recorded_at, fence)
            return
        try:
            self._record.commit(batch, recorded_at, fences)
        except Fenced as exc:
            # The action is evidence and is kept; the partition's state is its new
            # owner's now (its poll of acknowledgements stops the clock there).
            log.warning("action_state_fenced", partitions=exc.partitions)
            points = {k: v for k, v in batch.checkpoints.items()
                      if parts.notify_partition(k) is None}
            self._record.commit(dataclasses.replace(batch, checkpoints=points), recorded_at)

    def outbox_due(self, now: float, limit: int = 100) -> list:
        return self._record.outbox_due(now, limit, partitions=self._partitions())


# The partition whose task is running (None: the ticker and other work of the worker).
_SERVED: ContextVar[Served | None] = ContextVar("tagwatch_served", default=None)


class ClusterMetrics:
    def __init__(self, registry) -> None:
        r = registry
        self.owned = Gauge("tagwatch_partitions_owned", "partitions this worker serves", registry=r)
        self.renewals = Counter(
            "tagwatch_lease_renewals", "lease renewals that succeeded", registry=r
        )
        self.losses = Counter(
            "tagwatch_lease_losses", "leases lost (expired, taken over or fenced)", registry=r
        )
        self.takeovers = Counter("tagwatch_takeovers", "partitions acquired", registry=r)
        self.fenced = Counter(
            "tagwatch_fenced_commits", "batch commits refused by a partition's fence", registry=r
        )


class ClusterDaemon(Daemon):
    def __init__(
        self,
        config: Config,
        record: Record,
        zoneset: ZoneSet,
        cases: dict[str, Case],
        cases_refused: dict[str, str] | None = None,
    ) -> None:
        super().__init__(config, record, zoneset, cases, cases_refused)
        assert config.cluster is not None
        self.cluster = config.cluster
        c = self.cluster
        self.leases = Leases(config.record.url, c.worker, c.partitions, c.lease_ttl_s)
        record.fence_idle_s = c.lease_ttl_s  # a stopped commit must not block a takeover
        # The publisher and the dispatcher see only the outbox rows of partitions served,
        # and none once the leases went unconfirmed (a zombie woken up sends nothing).
        self.record = OwnOutbox(record, self._sending, self._notify_fences)  # type: ignore[assignment]
        self.served: dict[int, Served] = {}
        self._alert_parts: dict[str, int] = {}  # alert id -> partition, for the notify state
        self._notify_written: dict[str, bytes] = {}  # the notify checkpoints as last committed
        self.topics.status = f"{self.topics.prefix}/status/{c.worker}"
        self.instance = f"{c.worker}/{self.instance}"
        self.cluster_metrics = ClusterMetrics(self.metrics.registry)
        self._settings: BrokerSettings | None = None
        self._valid_until = 0.0  # monotonic: leases unconfirmed after this
        self._giving: dict[int, asyncio.Task] = {}  # partitions being given back
        self.pipeline.reload(ZoneSet([]))  # no partition yet, so no case

    # ---- state -----------------------------------------------------------------------

    def restore(self) -> None:
        """Nothing of the partitions: their rule and notification state comes with each
        partition taken."""
        super().restore()
        self.pipeline.reset({})

    def _restore_notify(self, points: dict[str, bytes]) -> None:
        """The single process's whole-deployment keys are not a partition's: ignored."""
        for key in (LEDGER_KEY, ESCALATION_KEY):
            if points.pop(key, None) is not None:
                log.warning("notify_state_ignored", key=key,
                            detail="a single process's state; cluster mode keeps it by partition")

    def _sending(self) -> list[int]:
        if not self._may_send():
            return []
        return sorted(self.served)

    def _may_send(self) -> bool:
        """Not once the leases went unconfirmed (a zombie woken up sends nothing, not
        even the rows it read before it was stopped)."""
        return time.monotonic() <= self._valid_until

    def _owned_cases(self) -> dict[str, Case]:
        return parts.cases_in(self.cases, self.served, self.cluster.partitions)

    def _configure(self) -> None:
        """The engine's cases: those of the partitions served (under self._work)."""
        owned = sorted(self._owned_cases().values(), key=lambda c: (c.source, c.id))
        self.pipeline.reload(ZoneSet(owned))

    async def _checkpoints(self, cases: dict[str, Case],
                           partitions: tuple[int, ...] = ()) -> dict[str, bytes]:
        """The committed rule state of these cases (and the notification state of these
        partitions)."""
        keys = parts.checkpoint_keys(cases.values())
        keys.update(k for p in partitions for k in parts.notify_keys(p))
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                points = await asyncio.to_thread(self.record.checkpoints)
                return {k: v for k, v in points.items() if k in keys}
            except RecordError as exc:
                log.error("checkpoints_waiting", error=str(exc))
                await asyncio.sleep(backoff.next())

    async def _undo(self, notify: tuple[bytes, bytes] | None) -> None:
        """Back to the last committed state of the partitions still served."""
        points = await self._checkpoints(self._owned_cases())
        self.pipeline.reset(points)
        if notify is not None:
            self.notify.ledger = SmsLedger.from_bytes(notify[0])
            escalation = self.notify.escalation
            escalation.take_state(Escalation.from_bytes(notify[1], escalation.settings))

    def _forget(self, cases: dict[str, Case]) -> None:
        """Drop the rule state of cases no partition served here holds any more."""
        engine = self.pipeline.engine
        for key in parts.checkpoint_keys(cases.values()):
            kind, _, name = key.partition(":")
            table = {"tag": engine.tags, "device": engine.devices, "victim": engine.protection}
            table[kind].pop(name, None)
            engine.dirty.discard(name if kind == "tag" else key)

    async def reload(self) -> bool:
        reloaded = await super().reload()
        async with self._work:
            self._configure()
        return reloaded

    # ---- commits -----------------------------------------------------------------------

    def _fences(self) -> list[Fence]:
        served = _SERVED.get()
        if served is not None:
            return [served.fence]
        return [s.fence for s in self.served.values()]

    def _partitioned(self, batch: Batch, fences: list[Fence]) -> Batch:
        """Each outbox item with the partition of the tag it is about: the alert entry's
        tag (or its case's first tag) in this batch, the tag of a command; else the
        batch's own partition."""
        k = self.cluster.partitions
        tags = {}
        for e in batch.entries:
            if e.alert_id:  # a victim's record has no tag: its case's first tag then
                case = self.cases.get(e.chain.removeprefix("case:"))
                tags[e.alert_id] = e.tag or (case.tags[0] if case and case.tags else None)
        default = fences[0].partition if fences else 0

        def partition(item: OutboxItem) -> int:
            tag = tags.get(item.alert_id)
            if tag is None and item.alert_id.startswith("cmd:"):
                tag = item.alert_id[4:]
            return partition_of(tag, k) if tag else default

        outbox = [dataclasses.replace(i, partition=partition(i)) for i in batch.outbox]
        self._alert_parts.update(
            (alert, partition_of(tag, k)) for alert, tag in tags.items() if tag
        )
        return dataclasses.replace(batch, outbox=outbox)

    # ---- notification state by partition -----------------------------------------------

    def _alerts_of(self, p: int) -> Callable[[str], bool]:
        return lambda alert_id: self._alert_parts.get(alert_id) == p

    def _victims_of(self, p: int) -> Callable[[str], bool]:
        k = self.cluster.partitions
        return lambda key: parts.case_partition(self.cases.get(key.split("/")[0]), k) == p

    def _notify_parts(self, batch: Batch, fences: list[Fence]) -> Batch:
        """The batch's SMS ledger and escalation checkpoints (the whole state, as the
        effects make them) as one pair per partition fenced, each only if changed since
        last committed: no commit writes the state of a partition it is not fenced by."""
        points = dict(batch.checkpoints)
        ledger = points.pop(LEDGER_KEY, None) is not None
        escalation = points.pop(ESCALATION_KEY, None) is not None
        if not (ledger or escalation):
            return batch
        for f in fences:
            ledger_key, escalation_key = parts.notify_keys(f.partition)
            alerts = self._alerts_of(f.partition)
            if ledger:
                state = self.notify.ledger.part(alerts, self._victims_of(f.partition))
                points[ledger_key] = state.to_bytes()
            if escalation:
                points[escalation_key] = self.notify.escalation.part(alerts).to_bytes()
        for key in [k for k in points if parts.notify_partition(k) is not None]:
            if self._notify_written.get(key) == points[key]:
                del points[key]
        # what no state holds any more needs no partition (an alert's later records
        # come through _partitioned again)
        held = self.notify.escalation.alert_ids() | set(self.notify.ledger.texted)
        self._alert_parts = {a: p for a, p in self._alert_parts.items() if a in held}
        return dataclasses.replace(batch, checkpoints=points)

    def _notify_fences(self, batch: Batch) -> list[Fence]:
        """The fences of the partitions whose notification state a batch writes."""
        wanted = {parts.notify_partition(k) for k in batch.checkpoints} - {None}
        return [s.fence for p, s in self.served.items() if p in wanted]

    def _action_checkpoints(self, alert_id: str) -> dict[str, bytes]:
        """An operator's action commits its alert's partition's escalation state, when
        served here (else its owner's poll of acknowledgements stops the clock)."""
        p = self._alert_parts.get(alert_id)
        if p is None or p not in self.served:
            return {}
        state = self.notify.escalation.part(self._alerts_of(p))
        return {parts.notify_keys(p)[1]: state.to_bytes(without=alert_id)}

    def _take_notify(self, p: int, points: dict[str, bytes]) -> list[str]:
        """Add partition p's committed notification state (taken out of `points`);
        returns the alert ids whose escalation clocks it brought."""
        ledger_key, escalation_key = parts.notify_keys(p)
        ledger, escalation = points.pop(ledger_key, None), points.pop(escalation_key, None)
        try:
            taken = SmsLedger.from_bytes(ledger) if ledger is not None else SmsLedger()
            clocks = Escalation.from_bytes(escalation, self.notify.escalation.settings) \
                if escalation is not None else Escalation(self.notify.escalation.settings)
        except ValueError as exc:
            log.error("notify_state_unreadable", partition=p, error=str(exc),
                      detail="this partition's SMS ledger and escalation start empty")
            return []
        for key, blob in ((ledger_key, ledger), (escalation_key, escalation)):
            if blob is not None:
                self._notify_written[key] = blob
        self._alert_parts.update((a, p) for a in taken.texted)
        self._alert_parts.update((a, p) for a in clocks.alert_ids())
        self.notify.ledger.take(taken)
        self.notify.escalation.take_part(clocks)
        return list(clocks.pending())

    def _drop_notify(self, p: int) -> None:
        """Forget partition p's notification state: its new owner has it."""
        alerts = self._alerts_of(p)
        self.notify.ledger.drop(alerts, self._victims_of(p))
        self.notify.escalation.drop(alerts)
        self._alert_parts = {a: q for a, q in self._alert_parts.items() if q != p}
        for key in parts.notify_keys(p):
            self._notify_written.pop(key, None)

    async def _commit(self, batch: Batch) -> None:
        """As the single process's, under the fence of the partitions the batch is of;
        Fenced is never retried."""
        fences = self._fences()
        batch = self._partitioned(batch, fences)
        backoff = Backoff(0.2, 5.0)
        while True:
            started = time.perf_counter()
            written = self._notify_parts(batch, fences)  # again after a retry: fences change
            try:
                await asyncio.to_thread(self.record.commit, written, time.time(), fences)
            except Fenced as exc:
                self.cluster_metrics.fenced.inc()
                log.error("commit_fenced", partitions=exc.partitions, error=str(exc),
                          detail="the batch is undone and left unacknowledged for the new owner")
                for p in exc.partitions:
                    self._lost_soon(p, "fenced")
                raise
            except RecordError as exc:
                self.metrics.write_errors.inc()
                if self.record_down is None:
                    self.record_down = str(exc)
                    self.metrics.record_available.set(0)
                    log.error("record_unavailable", record=self.record.label, error=str(exc),
                              detail="holding the batch unacknowledged; retrying")
                await asyncio.sleep(backoff.next())
                fences = self._fences()
                continue
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            self._notify_written.update(
                (k, v) for k, v in written.checkpoints.items()
                if parts.notify_partition(k) is not None
            )
            if self.record_down is not None:
                log.warning("record_available", record=self.record.label)
                self.record_down = None
                self.metrics.record_available.set(1)
            self._first_commit()
            return

    def _first_commit(self) -> None:
        served = _SERVED.get()
        if served is not None and not served.committed:
            served.committed = True
            log.info("partition_first_commit", partition=served.partition,
                     epoch=served.fence.epoch, at=time.time(),
                     after_s=round(time.time() - served.taken_at, 3))

    async def _handle_piece(self, messages) -> None:
        served = _SERVED.get()
        if served is not None and served.stop.is_set():
            return  # dropped: left unacknowledged, the broker gives them to the new owner
        try:
            await super()._handle_piece(messages)
        except Fenced:
            return  # undone by the base; not acknowledged; the partition is being dropped

    async def _acknowledged(self, messages, fx) -> None:
        """A partition's messages are acknowledged on the partition's own session (the
        worker's session has its own packet ids: a PUBACK there would name another
        message, and these would stay pending, redelivered every ack_wait)."""
        served = _SERVED.get()
        if served is None:
            await super()._acknowledged(messages, fx)
            return
        try:
            await served.conn.ack_many(messages)
            self._after_commit(fx)
        except Exception:
            log.exception("after_commit_failed", messages=len(messages))

    async def _set_aside(self, msg: Message, error: Exception) -> None:
        served = _SERVED.get()
        if served is not None and served.stop.is_set():
            return
        await super()._set_aside(msg, error)

    # ---- the run -----------------------------------------------------------------------

    async def _connected(self, settings: BrokerSettings) -> None:
        if not await self._cases_in_force():
            return
        while True:
            try:
                await asyncio.to_thread(self.leases.setup)
                break
            except RecordUnavailable as exc:
                log.error("leases_unavailable", error=str(exc), detail="retrying")
                await asyncio.sleep(1.0)
        self._settings = settings
        status = self.topics.status
        worker_id = f"{settings.client_id}-{self.cluster.worker}"
        control = dataclasses.replace(settings, client_id=worker_id)
        self.conn = MqttConnection(
            control,
            # this worker's own persistent session on the victims' fixes (and OwnTracks'):
            # it keeps those of the devices of its cases (_victims)
            [(topic, 1) for topic in self.topics.fix_filters if topic != self.topics.tag_fixes],
            will=(status, status_message("offline", self.instance, self.since)),
            online=(status, lambda: status_message("online", self.instance, time.time())),
            door=self.gate,
        )
        if not await connect_unless(self.conn, self.stopping):
            return
        log.info("cluster_worker", worker=self.cluster.worker, partitions=self.cluster.partitions,
                 lease_ttl_s=self.cluster.lease_ttl_s)
        try:
            await self._serve(self.conn)
        finally:
            await self.conn.__aexit__(None, None, None)

    async def _ingest(self) -> None:
        """The lease rounds until stopped; then every partition dropped and released."""
        rounds = asyncio.create_task(self._lease_rounds(), name="leases")
        victims = asyncio.create_task(self._victims(), name="victims")
        try:
            await self.stopping.wait()
        finally:
            await self._finish_sends()
            for task in (rounds, victims):
                task.cancel()
            await asyncio.gather(rounds, victims, *self._giving.values(), return_exceptions=True)
            for p in list(self.served):
                await self._drop(p, "stopping")
            with contextlib.suppress(RecordError):
                await asyncio.to_thread(self.leases.leave)
            self.leases.close()

    async def _finish_sends(self) -> None:
        """Stopping: the SMS, calls and webhooks in flight end (answered and marked done)
        while the lease rounds still run. Released before that, the partition's next
        owner finds their rows pending and sends them again (a victim texted twice in a
        rolling restart). Rows not yet started are left to the next owner."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        dispatcher.stop()
        try:
            await asyncio.wait_for(dispatcher.idle(), _STOP_WAIT_S)
        except TimeoutError:  # a provider that never answers: at least once, as a crash
            log.warning("stopping_with_sends_in_flight", wait_s=_STOP_WAIT_S)

    async def _victims(self) -> None:
        """Victims' fixes, from this worker's own session: those of a device of a case
        served here are handled as in a single process (fenced by every partition
        served); the others are acknowledged unrecorded (their owner has its own copy)."""
        while not self.stopping.is_set():
            batch = await self.batcher.next_batch(self.stopping)
            if self.gate is not None and self.gate.waiting:
                await self._rate_limited(self.gate.take())
            engine = self.pipeline.engine
            mine, others = [], []
            for m in batch:
                parsed = self.topics.parse(m.topic)
                device = self._device_id(parsed)
                known = device is not None and (
                    device in engine.device_protected or device in engine.device_victims
                )
                (mine if known or device is None else others).append(m)
            if others:
                await self.conn.ack_many(others)  # type: ignore[union-attr]
            if mine:
                await self._handle(mine)

    @staticmethod
    def _device_id(parsed: tuple[str, str] | None) -> str | None:
        if parsed is None:
            return None  # not a fix topic: the pipeline rejects it, as everywhere
        kind, ident = parsed
        if kind == "owntracks":
            return f"{OWNTRACKS_DEVICE}{ident}"
        return ident if kind == "victim" else None

    async def _lease_rounds(self) -> None:
        period = self.cluster.lease_ttl_s / _LEASE_ROUNDS_PER_TTL
        while True:
            started = time.monotonic()
            if self.served and started > self._valid_until:
                # no round confirmed the leases in time (a stopped process, a lost
                # database): another worker may hold them now
                for p in list(self.served):
                    await self._drop(p, "lease_unconfirmed")
            try:
                await self._lease_round(started)
            except RecordError as exc:
                log.warning("lease_round_failed", error=str(exc))
            except Exception:
                log.exception("lease_round_crashed")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def _lease_round(self, started: float) -> None:
        result = await asyncio.to_thread(self.leases.round)
        self._valid_until = started + self.cluster.lease_ttl_s
        m = self.cluster_metrics
        m.renewals.inc(result.renewed)
        for p in result.lost:
            await self._drop(p, "lease_lost")
        for p in list(self.served):
            if p not in self.leases.held:  # dropped, or fenced meanwhile
                await self._drop(p, "lease_lost")
        for p in result.surplus:
            self._give_back(p)
        confirmed = started
        for p, epoch in sorted(result.acquired.items()):
            if time.monotonic() - confirmed > self.cluster.lease_ttl_s / _LEASE_ROUNDS_PER_TTL:
                # Taking partitions over (checkpoints read, the engine's cases rebuilt) can
                # take longer than lease_ttl_s on a loaded machine: renew between the takes,
                # or every lease, old and new, expires before the round ends (seen in
                # `tagwatch bench cluster`: one worker taking 16 dropped them all, again).
                confirmed = time.monotonic()
                lost = await asyncio.to_thread(self.leases.renew)
                self._valid_until = confirmed + self.cluster.lease_ttl_s
                m.renewals.inc(len(self.leases.held))
                for q in lost:
                    await self._drop(q, "lease_lost")
            if p in self.leases.held:
                await self._take(p, epoch)
        m.owned.set(len(self.served))

    def _give_back(self, p: int) -> None:
        """Stop serving p, then release its lease, in a task of its own. Handling what p
        received first can take longer than lease_ttl_s (its units of work queue behind
        the other partitions'); meanwhile the lease rounds must go on renewing p and the
        rest, or every lease of this worker expires and another takes them all (seen in
        `tagwatch bench cluster`: two workers took all the partitions from each other in
        turn after a restart)."""
        if p in self._giving:
            return  # still handing over: the round names the same surplus again

        async def give() -> None:
            try:
                epoch = self.leases.held.get(p)
                await self._drop(p, "rebalanced", count_loss=False)
                if epoch is not None:  # still ours, renewed until its sends have ended
                    self.leases.held[p] = epoch
                    await self._sends_ended(p)
                await asyncio.to_thread(self.leases.release, [p])
            except RecordError as exc:  # the lease expires by itself
                log.warning("lease_release_failed", partition=p, error=str(exc))
            finally:
                self._giving.pop(p, None)

        self._giving[p] = asyncio.create_task(give(), name=f"give-back-{p}")

    async def _sends_ended(self, p: int) -> None:
        """Wait for the SMS, calls and webhooks in flight to end (answered and marked done)
        before p is released: a row of p being sent would otherwise be found pending by
        the next owner and sent again (a victim texted twice when a worker joined). A
        provider that never answers holds p at most _STOP_WAIT_S."""
        dispatcher = self.dispatcher
        if dispatcher is not None and not await dispatcher.settled(_STOP_WAIT_S):
            log.warning("released_with_sends_in_flight", partition=p, wait_s=_STOP_WAIT_S)

    async def _take(self, p: int, epoch: int) -> None:
        self.cluster_metrics.takeovers.inc()
        fence = Fence(p, self.cluster.worker, epoch)
        new = parts.cases_in(self.cases, [p], self.cluster.partitions)
        async with self._work:
            points = await self._checkpoints(new, (p,))
            clocks = self._take_notify(p, points)
            try:  # acknowledged (by another worker, the CLI) after the old owner's commit
                await asyncio.to_thread(self._stopped_elsewhere, clocks)
            except RecordError as exc:  # the poll of acknowledgements catches up later
                log.warning("takeover_acks_unread", partition=p, error=str(exc))
            settings = self._settings
            assert settings is not None
            gate = self._new_gate()
            conn = MqttConnection(
                dataclasses.replace(settings, client_id=parts.client_id(settings.client_id, p)),
                [(parts.subscription(self.cluster.partition_prefix, p), 1)],
                offline_on_close=False,
                door=gate,
            )
            served = Served(p, fence, conn, self._new_batcher(gate), gate)
            self.served[p] = served
            self._configure()
            self.pipeline.restore(points)
        served.task = asyncio.create_task(self._serve_partition(served), name=f"partition-{p}")
        self._rows_left_behind()
        log.info("partition_taken", partition=p, epoch=epoch, cases=sorted(new),
                 checkpoints=len(points))

    def _rows_left_behind(self) -> None:
        """What the partition's last owner committed and did not send (it died between
        its commit and its publish) is this worker's to send now. The publisher wakes on
        its own only for new work, and a quiet partition has none; the dispatcher polls
        (poll_s) but sends the SMS and calls left behind now rather than at its next poll."""
        if self.publisher is not None:
            self.publisher.wake.set()
        self.dispatch_wake.set()

    def _lost_soon(self, p: int, why: str) -> None:
        """From inside a unit of work (self._work held): stop the partition's batches
        now; the next lease round drops it (a lease fenced in the record is not held)."""
        served = self.served.get(p)
        if served is not None:
            served.drain = False
            served.stop.set()
        self.leases.held.pop(p, None)

    async def _drop(self, p: int, why: str, count_loss: bool = True) -> None:
        served = self.served.get(p)
        if served is None:
            return
        # Released or stopping, the lease is still ours: what arrived is handled first
        # (fewer redeliveries for the next owner, which would come behind newer fixes).
        served.drain = why in ("rebalanced", "stopping")
        served.stop.set()
        if count_loss:
            self.cluster_metrics.losses.inc()
        if served.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(served.task), _STOP_WAIT_S)
            except TimeoutError:
                served.task.cancel()
            with contextlib.suppress(BaseException):
                await served.task
        self.served.pop(p, None)
        async with self._work:
            gone = parts.cases_in(self.cases, [p], self.cluster.partitions)
            kept = self._owned_cases()
            self._forget({cid: c for cid, c in gone.items() if cid not in kept})
            self._drop_notify(p)
            self._configure()
        self.leases.held.pop(p, None)
        self.cluster_metrics.owned.set(len(self.served))
        log.warning("partition_dropped", partition=p, epoch=served.fence.epoch, why=why)

    async def _serve_partition(self, served: Served) -> None:
        """Connect the partition's session, then its batches until it is dropped. The
        session is closed without acknowledging what was not committed."""
        _SERVED.set(served)
        conn = served.conn
        if not await connect_unless(conn, served.stop):
            await conn.__aexit__(None, None, None)
            return
        pump = asyncio.create_task(served.batcher.pump(self._retopic(conn.bursts())))
        try:
            if served.fence.epoch > 1:
                await self._settle(served)
            while not served.stop.is_set():
                batch = await served.batcher.next_batch(served.stop)
                gate = served.gate
                if gate is not None and gate.waiting and not served.stop.is_set():
                    with contextlib.suppress(Fenced):  # the partition is being dropped
                        await self._rate_limited(gate.take(), gate)
                if batch and not served.stop.is_set():
                    await self._handle(batch)
            # Take no more (what comes now stays unacknowledged for the next owner), then
            # handle what is in hand: under a steady stream, a drain that went on taking
            # never ended, and was cut short after _STOP_WAIT_S.
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            while served.drain and served.batcher.items:
                batch = await served.batcher.next_batch(served.stop)
                served.stop.clear()  # _handle_piece skips the pieces of a stopped partition
                try:
                    await self._handle(batch)
                finally:
                    served.stop.set()
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await conn.__aexit__(None, None, None)

    async def _settle(self, served: Served) -> None:
        """After a takeover (the partition was held before): hold what arrives for
        lease_ttl_s, above the broker's ack_wait (docs/CLUSTER.md), then order it by tag
        and event time. The connection took the session from the previous holder (the
        broker closes even a stopped process's connection), so whatever that holder was
        given and never acknowledged is due again within ack_wait and arrives in the
        hold, not behind newer fixes as late ones (nats-server 2.15.1 gives the newer
        fixes at once and the older ones an ack_wait later: seen, seq 6-23 committed
        before 0-5)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(served.stop.wait(), self.cluster.lease_ttl_s)
        items = served.batcher.items
        held = sorted(items, key=_tag_and_time)  # stable: arrival order at equal times
        items.clear()
        items.extend(held)

    async def _retopic(self, bursts: AsyncIterator[list[Message]]) -> AsyncIterator[list[Message]]:
        """`{partition_prefix}/{p}/{tag}` is the tag's fix topic of DESIGN 3.1 to the
        pipeline (the mapping changed only the topic); the ack still uses the message id."""
        prefix, fix_topic = self.cluster.partition_prefix, self.topics.tag_fix
        replace: Callable[..., Message] = msgspec.structs.replace
        async for burst in bursts:
            out = []
            for m in burst:
                tag = parts.tag_of(prefix, m.topic)
                out.append(replace(m, topic=fix_topic(tag)) if tag else m)
            yield out

    # ---- readiness -------------------------------------------------------------------

    def health(self) -> dict:
        out = super().health()
        out["worker"] = self.cluster.worker
        # served and subscribed: what is published for them from now on reaches this worker
        out["partitions"] = sorted(p for p, s in self.served.items() if s.conn.ready.is_set())
        return out


class _Stamp(msgspec.Struct):
    ts: float | str | None = None


_stamps = msgspec.json.Decoder(_Stamp | list[_Stamp])


def _tag_and_time(msg: Message) -> tuple[str, float]:
    """A message's topic and the event time of its (first) fix: the order of a partition's
    messages held at a takeover. Unreadable ones first (the pipeline rejects them)."""
    try:
        if len(msg.payload) > MAX_PAYLOAD_BYTES or too_deep(msg.payload):
            raise ValueError("not a fix message (DESIGN 3.2's limits): rejected later")
        stamp = _stamps.decode(msg.payload)
        if isinstance(stamp, list):
            stamp = stamp[0]
        ts = stamp.ts
        return msg.topic, float(ts) if not isinstance(ts, str) else parse_rfc3339(ts)
    except (msgspec.DecodeError, ValueError, TypeError, IndexError):
        return msg.topic, -math.inf
