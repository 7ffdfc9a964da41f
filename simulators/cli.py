"""The `tagwatch-sim` command line.

    tagwatch-sim run SCENARIO --broker URL [--prefix P] [--speed X | --realtime] [--verify]
    tagwatch-sim check SCENARIO...            (in-process, event time, no broker)
    tagwatch-sim load --broker URL --tags N --rate R --duration S [--write-cases DIR]
    tagwatch-sim record --broker URL --out FILE [--duration S] [--prefix P]

Broker options, as the daemon's (simulators.broker): mqtt:// or mqtts:// URLs,
--ca-file, --cert-file, --key-file, --username; the password from the environment
(TAGWATCH_SIM_PASSWORD, else TAGWATCH_BROKER_PASSWORD).

Exit status: 0 done (and verified), 1 a failed verification or a runtime
failure, 2 bad usage or a bad scenario file (the message names file and key).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from aiomqtt import MqttError

from simulators import broker
from simulators.scenario import ScenarioError, load_scenario
from simulators.verify import VerifyResult, alert_line

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except (ScenarioError, ValueError) as exc:
        print(f"tagwatch-sim: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, MqttError) as exc:  # broker unreachable, file unwritable
        print(f"tagwatch-sim: {getattr(args, 'broker', '')}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagwatch-sim", description="the tag-fix simulator")
    cmds = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = cmds.add_parser("run", help="publish a scenario to a broker; --verify its alerts")
    run.add_argument("scenario", type=Path)
    broker.add_arguments(run)
    run.add_argument("--prefix", default="tagwatch/v1")
    run.add_argument("--traccar-url", metavar="URL",
                     help='tags of protocol = "traccar": POST to this /ingest/traccar, with '
                          "the bearer token in TAGWATCH_SIM_TRACCAR_TOKEN")
    run.add_argument("--owntracks-prefix", default="owntracks", metavar="PREFIX",
                     help='victim phones of protocol = "owntracks" publish on PREFIX/USER/DEVICE')
    pace = run.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=60.0,
                      help="scenario seconds per wall second (default 60)")
    pace.add_argument("--realtime", action="store_true",
                      help="real time, the scenario re-based to start now")
    run.add_argument("--verify", action="store_true",
                     help="exit 1 unless every expected alert came in time and no forbidden one")
    run.set_defaults(handler=_run)

    check = cmds.add_parser("check", help="feed scenarios through the in-process pipeline")
    check.add_argument("scenarios", type=Path, nargs="+")
    check.add_argument("--quiet", action="store_true", help="the summaries only")
    check.set_defaults(handler=_check)

    load = cmds.add_parser("load", help="sustained load: latency and throughput")
    broker.add_arguments(load, required=False)  # not needed with --write-cases
    load.add_argument("--prefix", default="tagwatch/v1")
    load.add_argument("--tags", type=int, required=True)
    load.add_argument("--rate", type=float, required=True, help="fixes per second in total")
    load.add_argument("--duration", type=float, required=True, help="seconds")
    load.add_argument("--breach-every", type=int, default=4, metavar="N",
                      help="two fixes in N are inside the zone (default 4: an alert storm)")
    load.add_argument("--write-cases", type=Path, metavar="DIR",
                      help="write the load case file the daemon must load into DIR, and exit")
    load.set_defaults(handler=_load)

    rec = cmds.add_parser("record", help="capture fix topics as JSON lines for tagwatch replay")
    broker.add_arguments(rec)
    rec.add_argument("--prefix", default="tagwatch/v1")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--duration", type=float, help="seconds (default: until Ctrl-C)")
    rec.set_defaults(handler=_record)
    return parser


def _report(result: VerifyResult, verify: bool) -> int:
    print(result.summary())
    return EXIT_OK if result.ok or not verify else EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    from simulators.runner import run_scenario

    if args.speed <= 0:
        raise ValueError(f"--speed {args.speed}: must be > 0")
    scenario = load_scenario(args.scenario)
    result = asyncio.run(run_scenario(
        scenario, broker.from_args(args), args.prefix, args.speed,
        on_alert=lambda a: print(alert_line(a, scenario.start), flush=True),
        realtime=args.realtime,
        on_command=lambda tag, what: print(f"{'':>9} command to {tag}: {what}", flush=True),
        traccar=_traccar(args), owntracks_prefix=args.owntracks_prefix,
    ))
    return _report(result, args.verify)


def _traccar(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.traccar_url is None:
        return None
    token = os.environ.get("TAGWATCH_SIM_TRACCAR_TOKEN", "")
    if not token:
        raise ValueError("--traccar-url needs TAGWATCH_SIM_TRACCAR_TOKEN: the token of a "
                         "feed user of role ingest")
    return args.traccar_url, token


def _check(args: argparse.Namespace) -> int:
    from simulators.inprocess import run_inprocess

    status = EXIT_OK
    for path in args.scenarios:
        scenario = load_scenario(path)
        show = None if args.quiet else (lambda a, s=scenario: print(alert_line(a, s.start)))
        status = max(status, _report(run_inprocess(scenario, on_alert=show), True))
    return status


def _load(args: argparse.Namespace) -> int:
    from simulators.load import check_bounds, run_load, write_cases

    if args.write_cases:
        print(write_cases(args.write_cases, args.tags))
        return EXIT_OK
    if not args.broker:
        raise ValueError("load: --broker is required (unless --write-cases)")
    check_bounds(args.tags, args.rate, args.duration)
    if args.breach_every < 4:
        raise ValueError("--breach-every must be at least 4 (two fixes inside, then two "
                         "outside)")
    report = asyncio.run(run_load(broker.from_args(args), args.tags, args.rate, args.duration,
                                  args.prefix, breach_every=args.breach_every))
    print("\n".join(report.lines()))
    return EXIT_OK


def _record(args: argparse.Namespace) -> int:
    from simulators.capture import record

    count = asyncio.run(record(broker.from_args(args), args.out, args.prefix, args.duration))
    print(f"tagwatch-sim: recorded {count} message(s) to {args.out}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
