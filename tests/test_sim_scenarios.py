"""Scenario files: they parse, bad ones are refused by name, and each one's fixes,
fed through tagwatch's own pipeline in event time, give its expected alerts and
none of its forbidden ones. That makes the files trustworthy before any daemon runs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from simulators import cli
from simulators.capture import capture_line
from simulators.inprocess import run_inprocess
from simulators.scenario import ALERT_TYPES, ScenarioError, load_scenario
from simulators.verify import VerifyResult
from tagwatch.config import Rules
from tagwatch.engine.alerts import to_dict
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.replay import replay
from tagwatch.wire import Topics
from zones import ZoneSet, load_cases

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.toml"))


def test_there_are_scenarios_and_they_cover_every_alert_type():
    assert len(SCENARIOS) >= 14
    expected = {e.type for path in SCENARIOS for e in load_scenario(path).expects}
    assert expected == ALERT_TYPES


@functools.cache
def _played(path: Path) -> tuple[VerifyResult, tuple[Inbound, ...]]:
    """A scenario played in process once per test run: its verdict and the messages sent
    (both tests below need the same run; day_in_the_life takes a minute on a loaded
    machine). Runs are deterministic (test_a_scenario_is_deterministic)."""
    sent: list[Inbound] = []
    result = run_inprocess(load_scenario(path), capture=sent)
    return result, tuple(sent)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_gives_its_expected_alerts_in_process(path):
    scenario = load_scenario(path)
    assert scenario.expects, f"{path.name} expects nothing"
    result, _ = _played(path)
    assert result.ok, result.summary()
    assert len(result.met) == len(scenario.expects)


def test_a_scenario_is_deterministic():
    path = ROOT / "config" / "scenarios" / "outliers.toml"
    one, two = run_inprocess(load_scenario(path)), run_inprocess(load_scenario(path))
    assert one.alerts == two.alerts and one.published == two.published


def test_capture_of_a_run_replays_to_the_same_alerts(tmp_path):
    """What `record` writes is what `tagwatch replay` reads (DESIGN 3.5)."""
    scenario = load_scenario(ROOT / "config" / "scenarios" / "late_breach.toml")
    sent = []
    live = run_inprocess(scenario, capture=sent)
    capture = tmp_path / "run.jsonl"
    capture.write_bytes(b"".join(capture_line(m.topic, m.payload, m.received) for m in sent))
    out = tmp_path / "alerts.jsonl"
    zoneset = ZoneSet(load_cases(scenario.cases).cases)
    with open(out, "wb") as stream:
        replay(zoneset, Rules(), capture, stream)
    replayed = [json.loads(line) for line in out.read_text().splitlines()]

    def strip(alerts):
        return [{k: v for k, v in a.items() if k != "raised"} for a in alerts]

    assert strip(replayed) == strip(live.alerts)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


GOOD_HEAD = '[scenario]\ncases = "%s"\nstart = "2026-11-02T10:00:00Z"\nduration_s = 60\n' % (
    ROOT / "config" / "cases"
)
TAG = '[[tags]]\nid = "T-1001"\n[[tags.moves]]\nmodel = "stationary"\npoint = [-0.1, 51.5]\n'


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (
            GOOD_HEAD + TAG + '[[expect]]\ntype = "zone.breech"\nwithin_s = 5\n',
            "expect[0].type",
            "out of range",
        ),
        (GOOD_HEAD + TAG.replace("model", "modle"), "tags[0].moves[0].model", "required"),
        (GOOD_HEAD + TAG + "colour = 1\n", "tags[0].moves[0].colour", "unknown key"),
        (
            GOOD_HEAD.replace("2026-11-02T10:00:00Z", "yesterday") + TAG,
            "scenario.start",
            "RFC 3339",
        ),
        (GOOD_HEAD + TAG + '[[expect]]\ntype = "zone.breach"\n', "expect[0].within_s", "required"),
        (GOOD_HEAD + TAG.replace("[-0.1, 51.5]", "[-0.1]"), "tags[0].moves[0].point", "[lon, lat]"),
        (
            GOOD_HEAD + TAG + '[[tags.faults]]\nkind = "no_comms"\nat = 10\nupload = "later"\n',
            "tags[0].faults[0].upload",
            "out of range",
        ),
        (
            GOOD_HEAD
            + TAG.replace(
                '"stationary"\npoint = [-0.1, 51.5]', '"follow"\nleader = "VD-9"\nlag_s = 5'
            ),
            "tags[0].moves[0].leader",
            "VD-9",
        ),
        ("[scenario\n", "(file)", "TOML"),
    ],
)
def test_a_bad_scenario_names_file_and_key(tmp_path, body, key, words):
    path = _write(tmp_path, body)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.key == key and str(path) in str(err.value) and words in str(err.value)


def test_cli_exit_2_on_a_bad_file_and_1_on_a_failed_verification(tmp_path, capsys):
    bad = _write(tmp_path, GOOD_HEAD + TAG + "colour = 1\n")
    assert cli.main(["check", str(bad)]) == 2
    assert f"{bad}: tags[0].moves[0].colour: unknown key" in capsys.readouterr().err
    failing = _write(tmp_path, GOOD_HEAD + TAG + '[[expect]]\ntype = "tag.tamper"\nwithin_s = 60\n')
    assert cli.main(["check", str(failing)]) == 1
    assert "MISSING   expect[0]: tag.tamper" in capsys.readouterr().out
    assert cli.main(["check", "--quiet", str(SCENARIOS[0])]) == 0


def _outputs(zoneset: ZoneSet, messages: list, batch: int) -> tuple:
    """Everything the pipeline decides for `messages` fed in batches of `batch`."""
    pipeline = Pipeline(zoneset, Rules(), Topics(), event_clock=True)
    records, commands, rejected, accepted, duplicates = [], [], [], [], 0
    for i in range(0, len(messages), batch):
        result = pipeline.process(messages[i : i + batch])
        records += [to_dict(r) for r in result.records]
        commands += result.commands
        rejected += [(r.source, r.rejection) for r in result.rejected]
        accepted += result.accepted
        duplicates += result.duplicates
    return records, commands, rejected, accepted, duplicates


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_batching_a_scenario_changes_no_decision(path):
    """The daemon batches what replay may take one by one: every alert record, command,
    rejection, accepted fix and duplicate count is the same for any batch size."""
    scenario = load_scenario(path)
    _, sent = _played(path)
    zoneset = ZoneSet(load_cases(scenario.cases).cases)
    one_by_one = _outputs(zoneset, sent, 1)
    assert one_by_one[0], f"{path.name} raises nothing"
    for batch in (7, 1000):
        assert _outputs(zoneset, sent, batch) == one_by_one, f"batches of {batch}"
