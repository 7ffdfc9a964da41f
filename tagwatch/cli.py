"""The `tagwatch` command line (DESIGN 3.5).

Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input (with a
message on stderr naming what is wrong).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Bad usage or bad input: exit status 2, with the message."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)  # argparse itself exits 2 on bad usage
    if unknown:  # said by the sub-command they were given to, with its usage
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except BadInput as exc:
        print(f"tagwatch: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _Failure as exc:
        print(f"tagwatch: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # a file or socket the command needed: a message, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tagwatch: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tagwatch")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _own_help(parser: argparse.ArgumentParser) -> None:
    """Every parser knows itself (errors name their sub-command); a command or group
    without its action prints its own help, exit 2."""

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT

    parser.set_defaults(command_parser=parser)
    if parser.get_default("handler") is None:
        parser.set_defaults(handler=usage)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _own_help(sub)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tagwatch",
        description="tagwatch: GPS tag fixes against victims' exclusion zones and approach "
        "rules, alerts to operators, victims and police, a hash-chained case record.",
        epilog="Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"tagwatch {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    zones = commands.add_parser("zones", help="geometry only: fixes against their tags' zones")
    zones.add_argument("cases", type=Path, help="a case file or a folder of them")
    zones.add_argument("fixes", type=Path, help="CSV with header: tag,ts,lat,lon[,acc]")
    zones.set_defaults(handler=_zones)

    demo = commands.add_parser(
        "demo", help="everything on one machine: broker, daemon, dashboard, a simulated day"
    )
    demo.add_argument("--broker", help="mqtt://host:port (default: an in-process broker)")
    demo.add_argument("--speed", type=float, default=120.0, help="scenario time per wall second")
    demo.add_argument("--scenario", type=Path, help="a scenario file (default: a day in the life)")
    demo.add_argument("--port", type=int, help="dashboard port (default: a free one)")
    demo.set_defaults(handler=_demo)

    replay = commands.add_parser(
        "replay",
        help="the full rule pipeline offline, in event time: alert records as JSON lines",
        description="The alert records the daemon would publish for INPUT, one JSON object per "
        "line on stdout (nothing else). Each bad row or line (a missing or unparseable field, "
        "a naive time, a value out of range, a line that is not JSON) is reported on stderr "
        "with its line number and field, and the exit status is then 2: a row left out can "
        "hide a breach. --lenient exits 0 all the same. A tag in no case is said once.",
    )
    replay.add_argument("cases", type=Path, help="a case file or a folder of them")
    replay.add_argument("input", type=Path, help="CSV of fixes, or a JSON-lines MQTT capture")
    replay.add_argument("--config", type=Path, help="take the [rules] of this configuration")
    replay.add_argument(
        "--lenient",
        action="store_true",
        help="exit 0 even when rows were bad (they are still reported on stderr)",
    )
    replay.set_defaults(handler=_replay)

    cases = commands.add_parser("cases", help="case files").add_subparsers(metavar="ACTION")
    check = cases.add_parser("check", help="validate case files and print what loaded")
    check.add_argument("cases", type=Path, help="a case file or a folder of them")
    check.set_defaults(handler=_cases_check)

    bench = commands.add_parser("bench", help="the shipped benchmarks")
    which = bench.add_subparsers(metavar="BENCHMARK")
    core = which.add_parser("core", help="geometry core beside a naive per-point loop")
    core.add_argument("--json", action="store_true", help="print one JSON object")
    core.add_argument("--small", action="store_true", help="a small workload (smoke test)")
    core.set_defaults(handler=_bench_core)
    pipe = which.add_parser(
        "pipeline", help="decode + geometry + rules, batched beside one at a time"
    )
    pipe.add_argument("--json", action="store_true", help="print one JSON object")
    pipe.add_argument("--small", action="store_true", help="a small workload (smoke test)")
    pipe.set_defaults(handler=_bench_pipeline)
    e2e = which.add_parser("e2e", help="tagwatch run through a broker beside a bare receiver")
    e2e.add_argument("--broker", help="mqtt://host:port (default: a private Mosquitto)")
    e2e.add_argument(
        "--fixes", type=_count(1, 10_000_000), default=100_000, help="fixes for the throughput run"
    )
    e2e.add_argument("--json", action="store_true", help="print one JSON object")
    e2e.add_argument(
        "--flood",
        action="store_true",
        help="instead: other tags' fix -> alert latency, unloaded and while one tag floods",
    )
    e2e.add_argument("--flood-rate", type=int, default=16_000, help="the flooding tag's messages/s")
    e2e.add_argument(
        "--record",
        help="postgresql://... : record there (a schema of its own per run, dropped after)",
    )
    e2e.add_argument(
        "--compare-sqlite",
        action="store_true",
        help="with --record: the SQLite record too, in the same run, and the ratios",
    )
    e2e.add_argument("--latency-s", type=float, default=10.0, help="seconds of the latency run")
    e2e.add_argument(
        "--memory-tags", type=int, default=100_000, help="tags held in the memory run"
    )
    e2e.set_defaults(handler=_bench_e2e)
    cluster = which.add_parser(
        "cluster", help="cluster mode: one worker against two, and takeover after kill -9"
    )
    cluster.add_argument(
        "--record", help="postgresql://... (required: a schema of its own per run, dropped after)"
    )
    cluster.add_argument(
        "--nats", help="mqtt://host:port,... of a running cluster (default: start three nodes)"
    )
    cluster.add_argument("--nats-server", help="the nats-server binary to start (default: found)")
    cluster.add_argument(
        "--fixes", type=_count(1, 10_000_000), default=20_000, help="fixes per throughput run"
    )
    cluster.add_argument("--tags", type=_count(1, 100_000), default=1_000, help="tags (and cases)")
    cluster.add_argument(
        "--rounds", type=_count(1, 20), default=2, help="pairs of runs: 1 worker, then 2"
    )
    cluster.add_argument("--kills", type=_count(0, 50), default=3, help="kill -9 of a worker")
    cluster.add_argument(
        "--kill-rate", type=_count(1, 20_000), default=200, help="fixes/s while killing"
    )
    cluster.add_argument("--lease-ttl-s", type=float, default=3.0, help="the workers' lease_ttl_s")
    cluster.add_argument(
        "--partitions", type=_count(1, 1024), default=16, help="K: the broker mapping's"
    )
    cluster.add_argument("--json", action="store_true", help="print one JSON object")
    cluster.set_defaults(handler=_bench_cluster)
    notify = which.add_parser("notify", help="breach fix published to SMS request received")
    notify.add_argument("--broker", help="mqtt://host:port (default: a private Mosquitto)")
    notify.add_argument(
        "--breaches", type=_count(1, 10_000), default=200, help="breaches to time (1..10000)"
    )
    notify.add_argument("--json", action="store_true", help="print one JSON object")
    notify.set_defaults(handler=_bench_notify)
    quality = which.add_parser("quality", help="alert quality on realistic GPS error")
    quality.add_argument("--json", action="store_true", help="print one JSON object")
    quality.add_argument(
        "--seed",
        "--seeds",
        dest="seeds",
        type=_seeds,
        default=[17],
        metavar="N|A-B",
        help="seed of the generated set, or seeds (1-20, 1,5,9): run in parallel, summed",
    )
    quality.set_defaults(handler=_bench_quality)
    _daemon_commands(commands)
    _own_help(parser)  # after every parser is made; their own handlers are kept
    return parser


def _count(low: int, high: int):
    """An argparse type: an integer in low..high (argparse names the flag when it is not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _seeds(text: str) -> list[int]:
    """An argparse type: `bench quality`'s seeds (N, A-B or N,M,...)."""
    from tagwatch.bench.quality import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _daemon_commands(commands: argparse._SubParsersAction) -> None:
    conf = "the configuration file (default: env TAGWATCH_CONFIG, else defaults + environment)"
    run = commands.add_parser("run", help="the daemon")
    run.add_argument("--config", type=Path, help=conf)
    run.set_defaults(handler=_run)

    record = commands.add_parser("record", help="the case record").add_subparsers(metavar="ACTION")
    verify = record.add_parser("verify", help="check the case record's hash chains")
    verify.add_argument("--config", type=Path, help=conf)
    verify.add_argument(
        "--anchors", type=Path, help="anchor file to check against (default: [record] anchor_path)"
    )
    verify.set_defaults(handler=_record_verify)
    init = record.add_parser(
        "init", help="create or upgrade the record's schema (run as the database's owner)"
    )
    init.add_argument("--config", type=Path, help=conf)
    init.set_defaults(handler=_record_init)
    purge = record.add_parser(
        "purge", help="purge old fix bodies outside alerts' evidence windows (recorded)"
    )
    purge.add_argument("--config", type=Path, help=conf)
    purge.add_argument("--older-than-days", type=float, help="default: [record] retention_days")
    purge.set_defaults(handler=_record_purge)
    export = record.add_parser("export", help="write an evidence bundle for a case")
    export.add_argument("--config", type=Path, help=conf)
    export.add_argument("--case", required=True, help="case id, e.g. C-0001")
    export.add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-11-28T00:00:00Z")
    export.add_argument("--until", required=True, help="RFC 3339 time")
    export.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    export.add_argument(
        "--force", action="store_true", help="replace the bundle files in a non-empty --out"
    )
    export.set_defaults(handler=_record_export)
    near = record.add_parser(
        "near", help="crime-scene correlation: tags with a fix near a point (recorded)"
    )
    near.add_argument("--config", type=Path, help=conf)
    near.add_argument("--lat", type=float, required=True, help="WGS84 latitude of the point")
    near.add_argument("--lon", type=float, required=True, help="WGS84 longitude of the point")
    near.add_argument("--radius-m", type=float, required=True, help="radius in metres")
    near.add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-11-28T21:00:00Z")
    near.add_argument("--until", required=True, help="RFC 3339 time")
    near.add_argument("--reason", required=True, help="why (recorded with the query)")
    near.set_defaults(handler=_record_near)
    report = record.add_parser("report", help="a court-ready PDF of one alert (redacted)")
    report.add_argument("--config", type=Path, help=conf)
    report.add_argument("--alert", required=True, help="the alert's id")
    report.add_argument("--out", type=Path, required=True, help="the PDF file to write")
    report.add_argument(
        "--unredacted", action="store_true",
        help="add coordinates, zone names and notes (police use only)",
    )
    report.set_defaults(handler=_record_report)

    config = commands.add_parser("config", help="the configuration").add_subparsers(
        metavar="ACTION"
    )
    config_check = config.add_parser(
        "check",
        help="load and validate the configuration, print it with secrets redacted",
        description="Load and validate the configuration as `tagwatch run` would (file, then "
        "TAGWATCH_<SECTION>_<KEY> variables), check that the cases path and the SQLite "
        "record's folder exist, and print the effective configuration as JSON, secrets "
        "redacted. Exit 2 with a message naming the key when anything is wrong.",
    )
    config_check.add_argument("--config", type=Path, help=conf)
    config_check.set_defaults(handler=_config_check)

    alerts = commands.add_parser("alerts", help="alerts in the case record").add_subparsers(
        metavar="ACTION"
    )
    ack = alerts.add_parser("ack", help="acknowledge an alert (id or a unique prefix)")
    ack.add_argument("alert_id", metavar="ID")
    ack.add_argument("--by", default=None, help="who acknowledges (default: $USER)")
    ack.add_argument("--note", default="", help="a note kept in the case record")
    ack.add_argument("--config", type=Path, help=conf)
    ack.set_defaults(handler=_alerts_ack)


def _load_zoneset(path: Path):
    from tagwatch.cases import load
    from zones import ZoneSet

    try:
        result = load(path)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    for error in result.errors:
        print(f"tagwatch: refused {error}", file=sys.stderr)
    return ZoneSet(result.cases), result


def _cases_check(args: argparse.Namespace) -> int:
    _, result = _load_zoneset(args.cases)
    for case in result.cases:
        zones = ", ".join(
            f"{z.zone_id} ({z.kind}{', scheduled' if z.schedule else ''})" for z in case.zones
        )
        print(
            f"{case.id}: tags {', '.join(case.tags)}; {len(case.victims)} victim(s); "
            f"zones: {zones or 'none'}  [{case.source}]"
        )
    print(f"{len(result.cases)} case(s) loaded, {len(result.errors)} refused")
    return EXIT_BAD_INPUT if result.errors else EXIT_OK


def _zones(args: argparse.Namespace) -> int:
    from tagwatch.zones_csv import InputError, write_zone_rows

    zoneset, result = _load_zoneset(args.cases)
    if result.errors:
        raise BadInput(f"{len(result.errors)} case file(s) refused; fix them first")
    try:
        with open(args.fixes, newline="", encoding="utf-8") as stream:
            _, unknown = write_zone_rows(zoneset, stream, str(args.fixes), sys.stdout)
    except OSError as exc:
        raise BadInput(f"{args.fixes}: cannot read: {exc.strerror}") from None
    except InputError as exc:
        raise BadInput(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{args.fixes}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    for tag in sorted(unknown):
        print(f"tagwatch: tag {tag!r} belongs to no case: no rows for its fixes", file=sys.stderr)
    return EXIT_OK


def _rules(config_path: Path | None):
    from tagwatch.config import ConfigError, Rules, load_config

    if config_path is None:
        return Rules()
    try:
        return load_config(config_path, {}).rules
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _rate_limit(config_path: Path | None) -> tuple[float, int] | None:
    """The daemon's per-tag rate limit ([ingest]), which replay applies as the daemon did."""
    from tagwatch.config import IngestConfig, load_config

    ingest = IngestConfig() if config_path is None else load_config(config_path, {}).ingest
    return ingest.rate_limit


def _owntracks_prefix(config_path: Path | None) -> str:
    """The daemon's [ingest] owntracks_prefix, so replay takes OwnTracks messages too."""
    from tagwatch.config import load_config

    return "" if config_path is None else load_config(config_path, {}).ingest.owntracks_prefix


def _demo(args: argparse.Namespace) -> int:
    from simulators.scenario import ScenarioError, load_scenario
    from tagwatch import demo

    if args.speed <= 0:
        raise BadInput("--speed must be above 0")
    if args.port is not None and not 0 < args.port < 65536:
        raise BadInput(f"--port {args.port}: must be 1..65535")
    if args.broker is not None:
        _check_broker_url(args.broker)
    scenario = args.scenario or demo.SCENARIO
    if not scenario.is_file():
        raise BadInput(f"{scenario}: no such scenario file")
    try:
        load_scenario(scenario)
    except ScenarioError as exc:
        raise BadInput(str(exc)) from None
    try:
        return demo.run(args.broker, args.speed, scenario, args.port)
    except demo.DemoError as exc:
        print(f"tagwatch demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _check_broker_url(url: str) -> None:
    from tagwatch.config import ConfigError, load_config

    try:
        embedded = load_config(None, {"TAGWATCH_BROKER_URL": url}).broker.embedded
    except ConfigError as exc:
        problem = str(exc).removeprefix("TAGWATCH_BROKER_URL: ")
        raise BadInput(f"--broker {url}: {problem}") from None
    if embedded:
        raise BadInput("--broker embedded: leave --broker out for the in-process broker")


def _replay(args: argparse.Namespace) -> int:
    from tagwatch.config import ConfigError
    from tagwatch.replay import ReplayInputError, Report, replay

    rules = _rules(args.config)
    zoneset, result = _load_zoneset(args.cases)
    if result.errors:
        raise BadInput(f"{len(result.errors)} case file(s) refused; fix them first")
    report = Report(str(args.input), sys.stderr)
    try:
        count = replay(
            zoneset,
            rules,
            args.input,
            sys.stdout.buffer,
            _rate_limit(args.config),
            report,
            _owntracks_prefix(args.config),
        )
    except OSError as exc:
        raise BadInput(f"{args.input}: cannot read: {exc.strerror}") from None
    except (ReplayInputError, ConfigError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"{args.input}: {exc}" if isinstance(exc, UnicodeDecodeError) else str(exc)
        ) from None
    print(f"tagwatch: replay wrote {count} alert record(s)", file=sys.stderr)
    if report.bad:
        print(
            f"tagwatch: {args.input}: {report.bad} bad row(s) or line(s), reported above, "
            "were left out" + ("" if args.lenient else "; exit 2 (--lenient: exit 0)"),
            file=sys.stderr,
        )
        return EXIT_OK if args.lenient else EXIT_BAD_INPUT
    return EXIT_OK


def _bench_core(args: argparse.Namespace) -> int:
    from tagwatch.bench import core
    from tagwatch.bench.report import emit

    emit(core.main(args.json, small=args.small), core.RESULT_LINES, args.json)
    return EXIT_OK


def _bench_pipeline(args: argparse.Namespace) -> int:
    from tagwatch.bench import pipeline
    from tagwatch.bench.report import emit

    emit(pipeline.main(small=args.small), pipeline.RESULT_LINES, args.json)
    return EXIT_OK


def _config_path(args: argparse.Namespace) -> Path | None:
    import os

    if args.config is not None:
        return args.config
    env = os.environ.get("TAGWATCH_CONFIG")
    return Path(env) if env else None


def _run(args: argparse.Namespace) -> int:
    import os

    from tagwatch.daemon.main import run

    return run(_config_path(args), os.environ)


def _loaded_config(args: argparse.Namespace):
    import os

    from tagwatch.config import ConfigError, load_config

    try:
        return load_config(_config_path(args), os.environ)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _config_check(args: argparse.Namespace) -> int:
    import json

    from tagwatch.config import missing_paths
    from tagwatch.feed.auth import PUBLIC_TOKEN_HASHES

    config = _loaded_config(args)
    problems = missing_paths(config)
    problems += [  # as tagwatch run refuses them
        f"[[feed.users]] {u.name!r}: token_sha256 is the example's, whose token is public: "
        "make a new token and put its SHA-256 here"
        for u in config.feed.users
        if u.token_sha256 in PUBLIC_TOKEN_HASHES
    ]
    print(json.dumps(config.redacted(), indent=2, sort_keys=True))
    source = config.path or "defaults and the environment (no file)"
    if problems:
        for problem in problems:
            print(f"tagwatch: {source}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"tagwatch: {source}: configuration valid", file=sys.stderr)
    return EXIT_OK


def _open_record(args: argparse.Namespace):
    """The configured record, for a command that reads it: never created (exit 2 if missing)."""
    from tagwatch.record import Record, RecordError, RecordMissing

    config = _loaded_config(args)
    try:
        return Record.open(config.record.url, create=False)
    except RecordMissing as exc:
        raise BadInput(f"case record: {exc}") from None
    except RecordError as exc:
        raise _Failure(f"case record: {exc}") from None


class _Failure(Exception):
    """A runtime failure: exit status 1, with the message."""


_MAX_NOTES = 100  # what anchors do not cover, per chain: a live record has many


def _record_verify(args: argparse.Namespace) -> int:
    from tagwatch.record import anchor

    config = _loaded_config(args)
    anchors = args.anchors or config.record.anchor_path
    key = config.record.anchor_key
    record = _open_record(args)
    try:
        anchored = None
        if anchors is not None and key is not None:
            # before the chains: the file is read before the snapshot it is checked against
            anchored = record.read(lambda db: anchor.check(db, anchors, key))
        report = record.verify_report()
    except anchor.AnchorError as exc:
        raise BadInput(str(exc)) from None
    finally:
        record.close()
    problems = [*report.problems, *(anchored.problems if anchored else [])]
    for p in problems:
        print(f"{p.chain}\tseq {p.seq}\t{p.what}\t{p.detail}")
    purged = sum(report.purged.values())
    if purged:
        print(f"{record.label}: {purged} fix bodies purged by recorded retention purges")
    notes = anchored.notes if anchored else []
    for note in notes[:_MAX_NOTES]:
        print(f"note: {note}")
    if len(notes) > _MAX_NOTES:
        print(f"note: ... and {len(notes) - _MAX_NOTES} more of the same kind")
    if problems:
        print(
            f"tagwatch: {record.label}: {len(problems)} problem(s) in the case record",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if anchored is not None:
        print(
            f"{record.label}: every chain intact, and every anchored head matches "
            f"({anchored.checkpoints} signed checkpoint(s) in {anchors})"
        )
    else:
        why = (
            f"no anchor key ({' or '.join(anchor.KEY_ENV_NAMES)})"
            if key is None
            else "no anchor file ([record] anchor_path or --anchors)"
        )
        print(
            f"{record.label}: every chain intact against itself; not proven against anchors: "
            f"{why}: someone who can write the database could rewrite an entry and re-hash "
            "the rest of its chain undetected"
        )
    return EXIT_OK


def _record_init(args: argparse.Namespace) -> int:
    from tagwatch.record import Record, RecordError

    config = _loaded_config(args)
    try:
        record = Record.open(config.record.url)
    except RecordError as exc:
        raise _Failure(f"case record: {exc}") from None
    record.close()
    applied = ", ".join(map(str, record.migrations_applied)) or "none: already up to date"
    print(f"{record.label}: schema ready (migrations applied: {applied})")
    return EXIT_OK


def _record_purge(args: argparse.Namespace) -> int:
    from tagwatch.daemon.retention import purge_now

    config = _loaded_config(args)
    record = _open_record(args)
    days = (
        args.older_than_days if args.older_than_days is not None else (config.record.retention_days)
    )
    if days <= 0:
        raise BadInput("no retention period: give --older-than-days or [record] retention_days")
    try:
        report = purge_now(record, days, config.record.evidence_window_h, time.time())
    finally:
        record.close()
    print(
        f"{record.label}: purged {report.purged} fix bodies older than {days:g} days; "
        f"kept {report.kept_in_window} in alerts' evidence windows"
    )
    return EXIT_OK


def _record_export(args: argparse.Namespace) -> int:
    from tagwatch.record import RecordError
    from tagwatch.record.export import ExportRefused
    from tagwatch.wire import parse_rfc3339

    times = {}
    for name in ("since", "until"):
        try:
            times[name] = parse_rfc3339(getattr(args, name))
        except ValueError:
            raise BadInput(
                f"--{name} {getattr(args, name)!r}: expected an RFC 3339 time with an offset or Z"
            ) from None
    if times["since"] > times["until"]:
        raise BadInput(f"--since {args.since} is after --until {args.until}")
    record = _open_record(args)
    try:
        out = record.export(args.case, times["since"], times["until"], args.out, args.force)
    except ExportRefused as exc:
        raise BadInput(str(exc)) from None
    except RecordError as exc:
        print(f"tagwatch: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        raise BadInput(f"--out {args.out}: cannot write the bundle: {exc.strerror}") from None
    finally:
        record.close()
    print(out)
    return EXIT_OK


def _record_near(args: argparse.Namespace) -> int:
    """Checked before the record is opened: bad input never touches it (exit 2)."""
    import getpass
    import json

    from tagwatch.record import RecordError
    from tagwatch.record.near import NearQuery, NearRefused

    times = _times(args, ("since", "until"))
    query = NearQuery(args.lat, args.lon, args.radius_m, times["since"], times["until"],
                      args.reason)
    try:
        query.check()
    except NearRefused as exc:
        raise BadInput(f"record near: {exc}") from None
    record = _open_record(args)
    try:
        results = record.near(query, getpass.getuser(), "cli", time.time())
    except RecordError as exc:
        raise _Failure(f"case record: {exc}") from None
    finally:
        record.close()
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    print(f"tagwatch: {len(results)} tag(s) near the point; the query is recorded",
          file=sys.stderr)
    return EXIT_OK


def _record_report(args: argparse.Namespace) -> int:
    from tagwatch.record import RecordError
    from tagwatch.record import report as reports

    config = _loaded_config(args)
    if args.out.suffix.lower() != ".pdf":
        raise BadInput(f"--out {args.out}: give a file name ending in .pdf")
    if not args.out.parent.is_dir():
        raise BadInput(f"--out {args.out}: no such folder {args.out.parent}")
    _, loaded = _load_zoneset(config.cases.path)
    cases = {case.id: case for case in loaded.cases}
    anchors = reports.anchoring(config.record.anchor_path, config.record.anchor_key)
    record = _open_record(args)
    try:
        data = record.read(lambda db: reports.gather(db, args.alert, cases.get, anchors))
    except reports.ReportRefused as exc:
        raise BadInput(str(exc)) from None
    except RecordError as exc:
        raise _Failure(f"case record: {exc}") from None
    finally:
        record.close()
    data.unredacted = args.unredacted
    reports.write_pdf(data, args.out, config.rules.warn_m)
    kind = "UNREDACTED (police use only)" if args.unredacted else "redacted"
    print(f"{args.out}: {kind} report of alert {args.alert}, sha256 {reports.digest(args.out)}")
    return EXIT_OK


def _times(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, float]:
    from tagwatch.wire import parse_rfc3339

    times = {}
    for name in names:
        try:
            times[name] = parse_rfc3339(getattr(args, name))
        except ValueError:
            raise BadInput(
                f"--{name} {getattr(args, name)!r}: expected an RFC 3339 time with an offset or Z"
            ) from None
    return times


def _alerts_ack(args: argparse.Namespace) -> int:
    import getpass
    import json
    import time

    from tagwatch.notify.ack import AckError, acknowledge
    from tagwatch.record import RecordError

    record = _open_record(args)
    by = args.by or getpass.getuser()
    try:
        acked = acknowledge(record, args.alert_id, by, args.note, time.time())
    except AckError as exc:
        raise BadInput(str(exc)) from None
    except RecordError as exc:
        print(f"tagwatch: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        record.close()
    print(json.dumps(acked))
    return _publish_ack(_loaded_config(args), acked)


def _publish_ack(config, acked: dict) -> int:
    """The acknowledged record on MQTT, as the dashboard's ack (DESIGN 3.5): QoS 1 on
    the case's alerts topic. It is already in the case record, and the daemon stops the
    escalation from the record; a broker that cannot be reached is exit 1, saying so."""
    import dataclasses
    import json
    import os

    from tagwatch.daemon.settings import broker_settings
    from tagwatch.ingest.mqtt import publish_once
    from tagwatch.wire import Topics

    if config.broker.embedded:
        print("tagwatch: acknowledged; not published (embedded broker)", file=sys.stderr)
        return EXIT_OK
    settings = broker_settings(config)
    settings = dataclasses.replace(settings, client_id=f"{settings.client_id}-ack-{os.getpid()}")
    topic = Topics(config.broker.topic_prefix).alerts(acked["case"])
    try:
        publish_once(settings, topic, json.dumps(acked, separators=(",", ":")).encode())
    except ConnectionError as exc:
        print(f"tagwatch: acknowledged in the case record, not published: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _bench_e2e(args: argparse.Namespace) -> int:
    from tagwatch.bench import e2e
    from tagwatch.bench.report import emit

    try:
        if args.flood:
            emit(e2e.run_flood(args.broker, rate=args.flood_rate), e2e.FLOOD_LINES, args.json)
        else:
            result = e2e.run(
                args.broker,
                fixes=args.fixes,
                latency_s=args.latency_s,
                memory_tags=args.memory_tags,
                record=args.record,
                compare_sqlite=args.compare_sqlite,
            )
            lines = e2e.COMPARE_LINES if args.compare_sqlite else e2e.RESULT_LINES
            emit(result, lines, args.json)
    except e2e.BenchError as exc:
        print(f"tagwatch bench e2e: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _bench_cluster(args: argparse.Namespace) -> int:
    from tagwatch.bench import cluster
    from tagwatch.bench.e2e import BenchError
    from tagwatch.bench.report import emit

    try:
        result = cluster.run(
            args.record,
            nats=args.nats,
            nats_server=args.nats_server,
            fixes=args.fixes,
            tags=args.tags,
            rounds=args.rounds,
            kills=args.kills,
            kill_rate=args.kill_rate,
            lease_ttl_s=args.lease_ttl_s,
            partitions=args.partitions,
        )
    except BenchError as exc:
        print(f"tagwatch bench cluster: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    emit(result, cluster.RESULT_LINES, args.json)
    return EXIT_OK


def _bench_notify(args: argparse.Namespace) -> int:
    from tagwatch.bench import notify

    return notify.main(args.broker, args.breaches, args.json)


def _bench_quality(args: argparse.Namespace) -> int:
    from tagwatch.bench import quality

    return quality.main(args.json, args.seeds)


if __name__ == "__main__":
    sys.exit(main())
