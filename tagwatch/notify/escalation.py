"""Escalation of unacknowledged critical alerts: a pure state machine on a given clock.

Policy as built:
- A critical alert (`open`/`updated` record, severity critical) starts a clock at its
  `ts` (event time). Not acknowledged within `ack_timeout_s`: an `escalated` record of
  level 1 (police control again, at a higher level). Another `ack_timeout_s` without
  acknowledgement: level 2 (police again, and a voice call to the victim). Level 2 is
  the last.
- An SMS accepted by Twilio but not `delivered` within `sms_delivery_timeout_s`, or
  reported `failed`/`undelivered`, escalates to level 1 at once (if the alert is below).
- An acknowledgement (operator or victim), or an `acknowledged` or `resolved` record
  seen through `observe`, stops the clock for good: the engine's later `updated`
  records of an alert acknowledged while critical (a proximity whose victim position
  went stale and fresh again) start none. An alert acknowledged below critical gets a
  clock when it becomes critical (a probable breach confirmed).
- Escalated records carry `ts` = the deadline that fired (watchdogs fire at their
  deadline), `raised` = the `now` given to `tick` and `escalation` = the new level.
- The level reached is remembered past the acknowledgement until a `resolved` record:
  `stamp` gives every later record of the alert (the engine's `updated` and `resolved`,
  which know nothing of escalation) that level (DESIGN 3.3).

`tick(now)` is driven by wall-clock time in the daemon and by event time in replay.
Thread-safe: the inbound webhooks (feed threads) and the daemon share one instance.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tagwatch.notify.records import escalated_record, escalation_level, record_time

MAX_LEVEL = 2
# checkpoint keys (alert ids are hex, never these)
_CLOCKS, _REACHED, _STOPPED = "clocks", "reached", "acknowledged"
_DELIVERY_FAILED = {"failed", "undelivered"}


@dataclass(frozen=True)
class EscalationSettings:
    ack_timeout_s: float = 120.0  # Rules.ack_timeout_s
    sms_delivery_timeout_s: float = 300.0


@dataclass
class _Clock:
    record: dict  # the latest record of the alert
    level: int
    deadline: float | None  # next ack deadline; None once at MAX_LEVEL
    sms_deadline: float | None = None  # when an accepted SMS must be delivered by
    sms_reason: str = ""


@dataclass
class Escalation:
    settings: EscalationSettings = field(default_factory=EscalationSettings)
    _clocks: dict[str, _Clock] = field(default_factory=dict)
    _reached: dict[str, int] = field(default_factory=dict)  # alert id -> level > 0
    _stopped: dict[str, str] = field(default_factory=dict)  # acked, unresolved -> severity
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, record: dict) -> None:
        """Feed every alert record published (also the ones this object made)."""
        with self._lock:
            alert_id, state = record["id"], record.get("state")
            clock = self._clocks.get(alert_id)
            level = escalation_level(record)
            if state == "resolved":
                self._reached.pop(alert_id, None)
                self._stopped.pop(alert_id, None)
            elif level > self._reached.get(alert_id, 0):
                self._reached[alert_id] = level
            if state == "acknowledged":
                self._stopped[alert_id] = record.get("severity") or ""
            if state in ("acknowledged", "resolved"):
                self._clocks.pop(alert_id, None)
            elif self._stopped.get(alert_id) == "critical":
                pass  # acknowledged while critical: later records start no clock again
            elif clock is not None:
                clock.record = record
                clock.level = max(clock.level, level)
            elif state in ("open", "updated") and record.get("severity") == "critical":
                deadline = record_time(record) + self.settings.ack_timeout_s
                self._clocks[alert_id] = _Clock(record, 0, deadline)
                self._stopped.pop(alert_id, None)

    def stamp(self, record: dict) -> dict:
        """The record with the escalation level its alert reached (itself if no higher)."""
        with self._lock:
            reached = self._reached.get(record["id"], 0)
        if reached <= escalation_level(record):
            return record
        return {**record, "escalation": reached}

    def acknowledge(self, alert_id: str, by: str, note: str, at: float) -> bool:
        """Stop the clock of alert_id; False if it had none (unknown, or already stopped)."""
        with self._lock:
            clock = self._clocks.pop(alert_id, None)
            if clock is not None:
                self._stopped[alert_id] = clock.record.get("severity") or ""
            return clock is not None

    def sms_accepted(self, alert_id: str, at: float) -> None:
        """Twilio took an SMS for alert_id at `at`: it must be delivered in time."""
        with self._lock:
            clock = self._clocks.get(alert_id)
            if clock is not None and clock.sms_deadline is None:
                clock.sms_deadline = at + self.settings.sms_delivery_timeout_s
                clock.sms_reason = (
                    f"SMS to the victim not delivered within "
                    f"{self.settings.sms_delivery_timeout_s:g} s"
                )

    def delivery_status(self, alert_id: str, status: str, at: float) -> None:
        """A Twilio status for an SMS of alert_id (already ordered: see inbound.Statuses)."""
        with self._lock:
            clock = self._clocks.get(alert_id)
            if clock is None:
                return
            if status == "delivered":
                clock.sms_deadline = None
            elif status in _DELIVERY_FAILED:
                clock.sms_deadline, clock.sms_reason = at, f"SMS to the victim {status}"

    def tick(self, now: float) -> list[dict]:
        """The `escalated` records due at `now`, in deadline order."""
        with self._lock:
            out: list[dict] = []
            for clock in self._clocks.values():
                out += self._due(clock, now)
            return sorted(out, key=lambda r: (r["ts"], r["id"]))

    def _due(self, clock: _Clock, now: float) -> list[dict]:
        out = []
        if clock.sms_deadline is not None and clock.sms_deadline <= now:
            if clock.level < 1:
                out.append(self._raise(clock, 1, clock.sms_reason, clock.sms_deadline, now))
            clock.sms_deadline = None
        while clock.deadline is not None and clock.deadline <= now:
            fired, level = clock.deadline, clock.level + 1
            reason = f"not acknowledged within {self.settings.ack_timeout_s * level:g} s" + (
                "; calling the victim" if level >= 2 else "; police control again"
            )
            out.append(self._raise(clock, level, reason, fired, now))
            clock.deadline = None if level >= MAX_LEVEL else fired + self.settings.ack_timeout_s
        return out

    def _raise(self, clock: _Clock, level: int, reason: str, ts: float, now: float) -> dict:
        clock.level = level
        self._reached[clock.record["id"]] = level
        if level >= MAX_LEVEL:
            clock.deadline = None
        clock.record = escalated_record(clock.record, level, reason, ts, now)
        return clock.record

    def pending(self) -> dict[str, int]:
        """Alert id -> current level, for every running clock."""
        with self._lock:
            return {k: c.level for k, c in self._clocks.items()}

    def take_state(self, other: Escalation) -> None:
        """Take other's clocks and levels, in place (others hold this object)."""
        with self._lock:
            self._clocks, self._reached, self._stopped = (
                other._clocks, other._reached, other._stopped
            )

    def alert_ids(self) -> set[str]:
        """Every alert id this state holds anything of."""
        with self._lock:
            return {*self._clocks, *self._reached, *self._stopped}

    def part(self, alerts: Callable[[str], bool]) -> Escalation:
        """The state of the chosen alert ids (in cluster mode one partition's share,
        checkpointed under that partition's key); its clocks are this one's."""
        with self._lock:
            return Escalation(
                self.settings,
                {k: c for k, c in self._clocks.items() if alerts(k)},
                {k: v for k, v in self._reached.items() if alerts(k)},
                {k: v for k, v in self._stopped.items() if alerts(k)},
            )

    def take_part(self, other: Escalation) -> None:
        """Add other's clocks and levels (a partition taken over), in place."""
        with self._lock:
            self._clocks.update(other._clocks)
            self._reached.update(other._reached)
            self._stopped.update(other._stopped)

    def drop(self, alerts: Callable[[str], bool]) -> None:
        """Forget the chosen alerts (a partition given up): no clock of theirs runs here."""
        with self._lock:
            for table in (self._clocks, self._reached, self._stopped):
                for k in [k for k in table if alerts(k)]:
                    del table[k]

    def to_bytes(self, without: str | None = None) -> bytes:
        """The running clocks; `without`: all but that alert's (an acknowledgement's
        checkpoint, committed with it before the clock is stopped here)."""
        with self._lock:
            clocks = {k: asdict(c) for k, c in self._clocks.items() if k != without}
            stopped = dict(self._stopped)
            if without in self._clocks:
                stopped[without] = self._clocks[without].record.get("severity") or ""
            doc = {_CLOCKS: clocks, _REACHED: self._reached, _STOPPED: stopped}
            return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes, settings: EscalationSettings) -> Escalation:
        """Also reads the older checkpoint, a bare {alert id: clock} without the levels."""
        try:
            state = json.loads(data)
            if _CLOCKS not in state:
                state = {_CLOCKS: state, _REACHED: {}}
            clocks = {k: _Clock(**v) for k, v in state[_CLOCKS].items()}
            reached = {str(k): int(v) for k, v in state[_REACHED].items()}
            reached.update({k: c.level for k, c in clocks.items() if c.level > reached.get(k, 0)})
            stopped = {str(k): str(v) for k, v in state.get(_STOPPED, {}).items()}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"escalation checkpoint: unreadable: {exc}") from None
        return cls(settings, clocks, reached, stopped)
