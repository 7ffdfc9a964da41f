"""`tagwatch bench cluster`: cluster mode (DESIGN 7) on a three-node NATS cluster and a
PostgreSQL record. One worker against two on the same cluster in one run, and the
takeover time after a kill -9.

Without --nats the benchmark starts three nats-server processes on free loopback ports
(tagwatch/bench/nats_cluster.py: JetStream, MQTT listeners, the partition mapping
`tagwatch.v1.tags.*.fix -> tw.tags.{{partition(K,1)}}.{{wildcard(1)}}`, MQTT ack_wait
2 s as the shipped deploy/nats/nats.conf) and stops them at the end. With --nats, a running
cluster's MQTT listeners (mqtt://host:port,host:port,...): its account must have that
mapping for K partitions and let this benchmark publish and subscribe without credentials
(as the test harness's open account does).

Each deployment (a set of workers) gets a PostgreSQL schema of its own, created before
its workers start and dropped after they stop, and an MQTT client id of its own (the
partitions' persistent sessions are `{client_id}-p{p}`), whose sessions are deleted at
the end so that no later run's fixes pile up for them.

1. Throughput. The same N fixes from T tags, far from every zone (as `bench e2e`), through
   1 worker, then 2 workers, alternated (1, 2, 1, 2 with --rounds 2), each on a fresh
   schema and fresh sessions. Published at QoS 1 to node 1 through a sliding window (at
   most WINDOW fixes ahead of the workers' `tagwatch_fixes_total`, summed), timed from the
   first publish until the workers have taken in every fix. Figures: fixes/s of each run,
   the median of each worker count and the ratio two / one.
2. Takeover. Two workers; a paced stream (--kill-rate fixes/s, default 200: below what
   the cluster takes in here, so a takeover is not measured behind a backlog; every tenth
   tag goes in and out of its zone, so alerts are made) runs while one worker, then the
   other, is killed with SIGKILL (--kills times), each restarted once its partitions are
   served again. For each partition the killed worker held: kill -> the survivor's first commit
   on it (its `partition_first_commit` log event). Then: every fix PUBACKed by the broker
   must be in the record exactly once, and no alert id opened twice.

On this project's 2-core machine the workers, the three NATS nodes, PostgreSQL and this
publisher share the same two cores: the two-worker ratio there says little about
scale-out onto machines of their own (README and docs/CLUSTER.md say so).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec

from tagwatch.bench.e2e import (
    BenchDaemon,
    BenchError,
    _payloads,
    _pg_schema,
    _publish_windowed,
    _write_cases,
    cpu_seconds,
)
from tagwatch.bench.nats_cluster import NatsCluster, mqtt_connack, nats_server_binary
from tagwatch.bench.rawpub import RawPublisher, publish_packet
from tagwatch.bench.report import Progress
from tagwatch.bench.workload import london_cases
from tagwatch.ingest.embedded_broker import free_port
from tagwatch.ingest.mqtt import BrokerSettings
from tagwatch.ingest.partitions import client_id as partition_client_id
from tagwatch.ingest.partitions import partition_of, subscription
from tagwatch.record.db import redact_url

TOPIC_PREFIX = "tagwatch/v1"  # the mapping's source subject: tagwatch.v1.tags.*.fix
PARTITION_PREFIX = "tw/tags"  # its destination: tw.tags.{p}.{tag}
ACK_WAIT = "2s"  # the shipped nats.conf's: below lease_ttl_s, so the dead owner's
# unacknowledged fixes are due again when the new owner resumes the session
WINDOW = 2_000  # fixes ahead of the workers; below the sessions' max_ack_pending in all
SCHEMA_PREFIX = "tagwatch_cbench"  # not tagwatch_bench_: bench e2e's test looks at those
READY_S = 60.0  # the stream reaching the workers
SPREAD_S = 300.0  # partitions spread over the workers: a restarted worker gets its share one
# partition a lease round, each after the giver has handled what it holds (docs/CLUSTER.md)
DRAIN_S = 30.0  # the record catching up with what was PUBACKed: nothing moved for this long
STALL_HINT = (
    "see the workers' logs: partition_dropped with why lease_unconfirmed or lease_lost "
    "means a worker lost its leases (a machine too loaded for lease_ttl_s?), and fixes "
    "published to a partition before its session first subscribed reach no one"
)
RECORD_HINT = "pass --record postgresql://user@host:port/db (a database it may create schemas in)"
NATS_HINT = (
    "install Debian's nats-server (apt-get install nats-server, 2.9.10 is tested), pass "
    "--nats-server PATH, or --nats mqtt://host:port,... for a running cluster"
)


def run(
    record: str | None,
    nats: str | None = None,
    nats_server: str | None = None,
    fixes: int = 20_000,
    tags: int = 1_000,
    rounds: int = 2,
    kills: int = 3,
    kill_rate: int = 200,
    lease_ttl_s: float = 3.0,
    partitions: int = 16,
) -> dict:
    if not 0.5 <= lease_ttl_s <= 60:
        raise BenchError(f"--lease-ttl-s {lease_ttl_s}: expected 0.5 to 60 seconds")
    if nats is not None:
        _first_node(nats)
    record = _checked_record(record)
    binary = None if nats else _checked_nats_server(nats_server)
    progress = Progress("bench cluster")
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="tagwatch-bench-cluster-"))
    try:
        with contextlib.ExitStack() as stack:
            if nats is None:
                assert binary is not None
                cluster = NatsCluster(workdir / "nats", binary=binary[0], partitions=partitions,
                                      mqtt_ack_wait=ACK_WAIT)
                progress.step(f"starting three NATS nodes ({binary[0]} {_version(binary[1])})")
                stack.callback(cluster.stop)
                try:
                    cluster.start()
                except (RuntimeError, TimeoutError) as exc:
                    raise BenchError(f"the NATS cluster did not start: {exc}") from None
                urls, used = cluster.mqtt_urls, f"three nodes started by the benchmark, " \
                    f"nats-server {_version(binary[1])}"
            else:
                urls, used = nats, f"{nats} (given)"
            cases = london_cases(tags, seed=11)
            _write_cases(cases, workdir / "cases")
            bench = _Bench(workdir, urls, record, partitions, lease_ttl_s, progress)
            if nats is None:
                bench.nats_pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            result = bench.throughput(_payloads(cases, fixes), rounds)
            result.update(bench.takeovers(cases, kills, kill_rate))
    except BenchError as exc:
        raise BenchError(f"{exc} (logs kept in {workdir})") from None
    shutil.rmtree(workdir, ignore_errors=True)
    result.update({
        "benchmark": "cluster",
        "nats": used,
        "record": redact_url(record),
        "partitions": partitions,
        "lease_ttl_s": lease_ttl_s,
        "tags": tags,
        "fixes": fixes,
        "rounds": rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    })
    progress.done()
    return result


def _checked_record(record: str | None) -> str:
    """The PostgreSQL URL, after a connection to it has worked; else why not and what to do."""
    if not record:
        raise BenchError(f"cluster mode needs a PostgreSQL record and none was given: "
                         f"{RECORD_HINT}")
    if not record.startswith(("postgresql://", "postgres://")):
        raise BenchError(f"--record: expected a postgresql:// URL, not {redact_url(record)!r}: "
                         f"{RECORD_HINT}")
    import psycopg

    try:
        with psycopg.connect(record, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"no PostgreSQL at --record {redact_url(record)} ({first}): "
                         f"{RECORD_HINT}") from None
    return record


def _checked_nats_server(binary: str | None) -> tuple[str, tuple[int, ...]]:
    from tagwatch.bench.nats_cluster import version_of

    if binary is not None:
        version = version_of(binary)
        if not version:
            raise BenchError(f"--nats-server {binary}: not a nats-server that answers "
                             f"--version: {NATS_HINT}")
        return binary, version
    found = nats_server_binary()
    if found is None:
        raise BenchError("no nats-server found (looked at TAGWATCH_TEST_NATS_SERVER, beside "
                         f"this Python, on PATH and /usr/sbin): {NATS_HINT}")
    return found


def _first_node(urls: str) -> BrokerSettings:
    """mqtt://a:1,b:2,c:3 (as [broker] url takes it) -> the settings of mqtt://a:1."""
    first = urls.split(",")[0]
    try:
        if not first.startswith("mqtt://"):
            raise ValueError("expected mqtt://host:port,host:port,...")
        return BrokerSettings.from_url(first)
    except ValueError as exc:
        raise BenchError(f"--nats {urls!r}: {exc}") from None


def _version(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v)) or "unknown"


class _Bench:
    def __init__(self, workdir: Path, urls: str, record: str, partitions: int,
                 lease_ttl_s: float, progress: Progress) -> None:
        self.workdir, self.urls, self.record = workdir, urls, record
        self.partitions, self.lease_ttl_s, self.progress = partitions, lease_ttl_s, progress
        self.settings = _first_node(urls)  # where the benchmark publishes
        self.nats_pids: list[int] = []  # the nodes started here (their CPU is counted)

    def throughput(self, payloads: list[tuple[str, bytes]], rounds: int) -> dict:
        runs: dict[int, list[int]] = {1: [], 2: []}
        cpu: dict[int, Counter[str]] = {1: Counter(), 2: Counter()}
        doubled = lost = 0
        for r in range(rounds):
            for workers in (1, 2):
                self.progress.step(f"round {r + 1}/{rounds}: {len(payloads):,} fixes through "
                                   f"{workers} worker(s)")
                with self.deployment(workers) as dep:
                    groups = {"workers": [w.proc.pid for w in dep.workers],
                              "bench": [os.getpid()]}
                    if self.nats_pids:  # not when the cluster was given (--nats)
                        groups["nats"] = self.nats_pids
                    before = {g: sum(map(cpu_seconds, pids)) for g, pids in groups.items()}
                    start = _publish_windowed(self.settings, TOPIC_PREFIX, payloads, WINDOW,
                                              dep.fixes_taken, f"{workers} worker(s)",
                                              self.urls, STALL_HINT)
                    rate = round(len(payloads) / (time.perf_counter() - start))
                    for g, pids in groups.items():
                        cpu[workers][g] += sum(map(cpu_seconds, pids)) - before[g]
                    tally = dep.tally()
                runs[workers].append(rate)
                lost += len(payloads) - tally["distinct"]
                doubled += tally["rows"] - tally["distinct"]
                self.progress.step(f"{workers} worker(s): {rate:,} fixes/s")
        one, two = statistics.median(runs[1]), statistics.median(runs[2])
        return {
            "one_worker_fixes_per_s": round(one),
            "two_workers_fixes_per_s": round(two),
            "ratio_two_over_one": round(two / one, 2),
            "one_worker_runs": runs[1],
            "two_workers_runs": runs[2],
            "throughput_fixes_lost": lost,
            # CPU seconds per 1,000 fixes (publishing to the last fix taken in), by process
            "cpu_s_per_1000_fixes": {
                f"{n}_worker{'s' if n > 1 else ''}": {
                    g: round(v * 1000 / (len(payloads) * rounds), 3) for g, v in c.items()}
                for n, c in cpu.items()},
            "throughput_fixes_doubled": doubled,
        }

    def takeovers(self, cases, kills: int, rate: int) -> dict:
        """Two workers under a paced stream; kill -9 one, then the other, `kills` times."""
        busy = {partition_of(c.tags[0], self.partitions) for c in cases}
        times: list[float] = []
        per_kill: list[float] = []
        rebalance: list[float] = []
        with self.deployment(2) as dep:
            stream = _PacedStream(self.settings, cases, rate)
            with stream.running():
                for k in range(kills):
                    victim, survivor = dep.workers[k % 2], dep.workers[1 - k % 2]
                    dep.spread()
                    dep.flowing(rate)
                    held = sorted(set(victim.partitions()) & busy)
                    self.progress.step(f"kill -9 {victim.name} ({len(held)} partitions), "
                                       f"{k + 1} of {kills}, {stream.sent:,} fixes sent")
                    killed_at = time.time()
                    victim.kill()
                    firsts = survivor.wait_first_commits(held, killed_at,
                                                         2 * self.lease_ttl_s + 30)
                    taken = [firsts[p] - killed_at for p in held]
                    times += taken
                    per_kill.append(round(max(taken, default=0.0), 2))
                    self.progress.step(f"{survivor.name} committed on all {len(held)} in "
                                       f"{per_kill[-1]:.2f} s; restarting {victim.name}")
                    victim.restart()
                    restarted = time.monotonic()
                    dep.spread()
                    rebalance.append(round(time.monotonic() - restarted, 1))
                    self.progress.step(f"partitions spread again {rebalance[-1]:.1f} s after "
                                       f"{victim.name} was ready")
            acked = stream.wait_acked()
            self.progress.step(f"{stream.sent:,} fixes sent, {acked:,} PUBACKed; waiting for "
                               "the record to hold them")
            tally = dep.wait_recorded(acked)
        return {
            "kills": kills,
            "kill_rate_fixes_per_s": rate,
            "takeovers": len(times),
            "takeover_median_s": round(statistics.median(times), 2) if times else 0.0,
            "takeover_max_s": round(max(times), 2) if times else 0.0,
            "takeover_per_kill_s": per_kill,
            "takeover_bound_s": 2 * self.lease_ttl_s + 2,
            "rebalance_after_restart_s": rebalance,
            "published_pubacked": acked,
            "fixes_in_record": tally["distinct"],
            "fixes_lost": acked - tally["distinct"],
            "fixes_doubled": tally["rows"] - tally["distinct"],
            "alerts_opened": tally["alerts"],
            "alerts_opened_twice": tally["opened_twice"],
        }

    @contextlib.contextmanager
    def deployment(self, workers: int) -> Iterator[_Deployment]:
        """Workers on a fresh schema and fresh sessions, partitions spread; all gone after."""
        with _pg_schema(self.record, SCHEMA_PREFIX) as url:
            dep = _Deployment(self, url, workers)
            try:
                dep.start()
                dep.spread()
                yield dep
            finally:
                dep.stop()


class _Worker(BenchDaemon):
    """One `tagwatch run` in cluster mode, which the benchmark may kill and restart."""

    def __init__(self, bench: _Bench, record: str, client_id: str, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.config = bench.workdir / f"{client_id}-{name}.toml"
        self.config.write_text(f"""
[broker]
url = "{bench.urls}"
client_id = "{client_id}"
topic_prefix = "{TOPIC_PREFIX}"

[cases]
path = "{bench.workdir / "cases"}"

[record]
url = "{record}"

[ingest]
batch_max = 2000
batch_wait_ms = 5

[feed]
listen = "127.0.0.1:{self.port}"

[log]
level = "info"
json = true

[cluster]
worker = "{name}"
partitions = {bench.partitions}
partition_prefix = "{PARTITION_PREFIX}"
lease_ttl_s = {bench.lease_ttl_s}
""")
        self._start(self.config, bench.workdir / f"{client_id}-{name}.log", None)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._http.close()
        self.log.close()

    def restart(self) -> None:
        self._start(self.config, self.log_path, None)

    def partitions(self) -> list[int]:
        with contextlib.suppress(OSError, ValueError):
            return list(json.loads(self._get("/readyz")[1]).get("partitions", []))
        return []

    def _events(self, name: str) -> Iterator[dict]:
        """The JSON log's events called `name`, oldest first."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == name:
                        yield event

    def first_commits(self, after: float) -> dict[int, float]:
        """Each partition's first commit after `after` (wall clock)."""
        out: dict[int, float] = {}
        for event in self._events("partition_first_commit"):
            if event["at"] > after:
                out.setdefault(event["partition"], event["at"])
        return out

    def subscribed(self) -> set[str]:
        """Every topic filter a session of this worker has subscribed to."""
        return {t for event in self._events("subscribed") for t in event.get("topics", [])}

    def wait_first_commits(self, partitions: list[int], after: float,
                           timeout_s: float) -> dict[int, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            firsts = self.first_commits(after)
            if all(p in firsts for p in partitions):
                return firsts
            if time.monotonic() > deadline:
                missing = sorted(set(partitions) - set(firsts))
                raise BenchError(f"{self.name} made no commit on partitions {missing} within "
                                 f"{timeout_s:.0f} s of the kill; see {self.log_path}")
            time.sleep(0.05)


class _Deployment:
    """The workers of one run, sharing an MQTT client id and a PostgreSQL schema."""

    def __init__(self, bench: _Bench, record: str, workers: int) -> None:
        self.bench, self.record = bench, record
        self.client_id = f"twb-{uuid.uuid4().hex[:8]}"
        self.names = [f"w{i + 1}" for i in range(workers)]
        self.workers: list[_Worker] = []

    def start(self) -> None:
        for name in self.names:
            self.workers.append(_Worker(self.bench, self.record, self.client_id, name))

    def spread(self) -> None:
        """Wait until every partition is served, each by one worker, each its fair share,
        and each partition's session has subscribed once (from then on the broker keeps
        the partition's fixes for it; before, a fix published would reach no one)."""
        k = self.bench.partitions
        share = -(-k // len(self.workers))
        filters = {subscription(PARTITION_PREFIX, p) for p in range(k)}
        deadline = time.monotonic() + SPREAD_S
        while True:
            held = [w.partitions() for w in self.workers]
            served = [p for ps in held for p in ps]
            if (sorted(served) == list(range(k)) and all(len(ps) <= share for ps in held)
                    and filters <= set().union(*(w.subscribed() for w in self.workers))):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the partitions were not spread over {len(self.workers)} "
                                 f"worker(s) within {SPREAD_S:.0f} s: {held}")
            time.sleep(0.1)

    def fixes_taken(self, target: int, timeout: float) -> int:
        """The workers' tagwatch_fixes_total, summed; polled until target or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            n = sum(int(w.metric("tagwatch_fixes_total")) for w in self.workers)
            if n >= target or time.monotonic() >= deadline:
                return n
            time.sleep(0.02 if target - n <= BenchDaemon.NEAR else 0.1)

    def flowing(self, fixes: int) -> None:
        """Wait until the workers have taken in `fixes` more (the stream reaches them)."""
        target = self.fixes_taken(0, 0) + fixes
        if self.fixes_taken(target, READY_S) < target:
            raise BenchError(f"the workers took in fewer than {fixes:,} fixes in "
                             f"{READY_S:.0f} s of the paced stream")

    def tally(self) -> dict[str, int]:
        """Fix rows and distinct fixes in the record; alerts opened, and opened twice."""
        import psycopg

        with psycopg.connect(self.record, connect_timeout=10) as db:
            rows, distinct = db.execute(
                "SELECT count(*), count(DISTINCT (tag, event_ts)) FROM entries "
                "WHERE kind = 'fix'").fetchone()  # type: ignore[misc]
            bodies = db.execute("SELECT body FROM entries WHERE kind = 'alert'").fetchall()
        opened: Counter[str] = Counter()
        for (body,) in bodies:
            alert = json.loads(body)
            if alert.get("state") == "open":
                opened[alert["id"]] += 1
        return {"rows": rows, "distinct": distinct, "alerts": len(opened),
                "opened_twice": sum(1 for n in opened.values() if n > 1)}

    def wait_recorded(self, acked: int) -> dict[str, int]:
        """Tally once the record holds `acked` distinct fixes, or nothing moved for DRAIN_S."""
        seen, moved = -1, time.monotonic()
        while True:
            tally = self.tally()
            if tally["distinct"] >= acked:
                return tally
            if tally["distinct"] != seen:
                seen, moved = tally["distinct"], time.monotonic()
            elif time.monotonic() - moved > DRAIN_S:
                return tally  # the shortfall is reported as lost
            time.sleep(0.2)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self._end_sessions()

    def _end_sessions(self) -> None:
        """Delete this run's persistent sessions (a clean CONNECT with each client id), so
        that the broker stops keeping later runs' fixes for them."""
        s = self.bench.settings
        ids = [partition_client_id(self.client_id, p) for p in range(self.bench.partitions)]
        ids += [f"{self.client_id}-{name}" for name in self.names]
        for cid in ids:
            with contextlib.suppress(OSError):
                mqtt_connack(s.port, s.host, client_id=cid)


class _PacedStream:
    """`rate` fixes/s round-robin over the tags (QoS 1, a raw socket publisher in a thread,
    paced every 10 ms), dated when made: every tenth tag alternates between its zone's
    centre and 11 km north, the others stay 11 km north, so breaches are made throughout."""

    STEP_S = 0.01

    def __init__(self, settings: BrokerSettings, cases, rate: int) -> None:
        self.settings, self.cases, self.rate = settings, cases, rate
        self.sent = 0
        self.publisher: RawPublisher | None = None

    def _packet(self, k: int) -> bytes:
        case = self.cases[k % len(self.cases)]
        rnd = k // len(self.cases)
        zone = case.zones[0]
        inside = (k % len(self.cases)) % 10 == 0 and rnd % 2 == 0
        fix = {"ts": round(time.time(), 6), "lat": zone.frame.lat + (0.0 if inside else 0.1),
               "lon": zone.frame.lon, "acc": 5, "seq": rnd}
        topic = f"{TOPIC_PREFIX}/tags/{case.tags[0]}/fix"
        return publish_packet(topic, msgspec.json.encode(fix), k % 65535 + 1)

    @contextlib.contextmanager
    def running(self) -> Iterator[_PacedStream]:
        stop = threading.Event()
        self.publisher = RawPublisher(self.settings.host, self.settings.port)
        per_step = max(1, round(self.rate * self.STEP_S))

        def publish() -> None:
            start, steps = time.perf_counter(), 0
            while not stop.is_set():
                self.publisher.send([self._packet(self.sent + i)  # type: ignore[union-attr]
                                     for i in range(per_step)])
                self.sent += per_step
                steps += 1
                lag = start + steps * self.STEP_S - time.perf_counter()
                if lag > 0:
                    stop.wait(lag)

        thread = threading.Thread(target=publish, name="paced-stream", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)

    def wait_acked(self, timeout_s: float = 30.0) -> int:
        """PUBACKs for everything sent (or as many as came within timeout_s); closes."""
        assert self.publisher is not None
        deadline = time.monotonic() + timeout_s
        while self.publisher.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        acked = self.publisher.acked
        self.publisher.close()
        return acked


RESULT_LINES: list[tuple[str, str]] = [
    ("one_worker_fixes_per_s", "one worker, every fix recorded (median)"),
    ("two_workers_fixes_per_s", "two workers, same run (median)"),
    ("ratio_two_over_one", "ratio two workers / one"),
    ("takeover_median_s", "kill -9 -> new owner's first commit, median"),
    ("takeover_max_s", "the same, max"),
    ("fixes_lost", "PUBACKed fixes not in the record"),
    ("fixes_doubled", "fixes recorded twice"),
    ("alerts_opened_twice", "alert ids opened twice"),
]
