"""A scenario fed straight into tagwatch's pipeline, in event time, without a broker.

The same messages the live runner publishes, in the same order, with the
pipeline's `rate` commands fed back to the simulated tags as the broker would.
It is how the scenario files are checked before any daemon runs, and it gives
the alerts `tagwatch replay` gives for a capture of the same run.
"""

from __future__ import annotations

from collections.abc import Callable

from simulators.scenario import Scenario, ScenarioError
from simulators.verify import Verifier, VerifyResult
from tagwatch.config import Rules
from tagwatch.engine.alerts import to_dict
from tagwatch.ingest.traccar import traccar_fix
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.wire import Topics
from zones import ZoneSet, load_cases


def load_zoneset(scenario: Scenario) -> ZoneSet:
    result = load_cases(scenario.cases)
    if result.errors:
        raise ScenarioError(scenario.path, "scenario.cases", f"refused: {result.errors[0]}")
    return ZoneSet(result.cases)


def run_inprocess(
    scenario: Scenario,
    rules: Rules | None = None,
    on_alert: Callable[[dict], None] | None = None,
    capture: list[Inbound] | None = None,
) -> VerifyResult:
    topics = Topics(owntracks="owntracks")  # the phones of `protocol = "owntracks"`
    pipeline = Pipeline(load_zoneset(scenario), rules or Rules(), topics, event_clock=True)
    sim = scenario.simulation(topics)
    verifier = Verifier(scenario)
    published = 0
    while sim.next_time() <= scenario.duration_s:
        for em in sim.step():
            if em.via == "traccar":  # what /ingest/traccar makes of it
                tag, fix = traccar_fix(em.payload)
                msg = Inbound(topics.tag_fix(tag), fix, scenario.start + em.t)
            else:
                msg = Inbound(em.topic, em.payload, scenario.start + em.t)
            if capture is not None:
                capture.append(msg)
            published += 1
            result = pipeline.process([msg])
            for record in result.records:
                alert = to_dict(record)
                verifier.on_alert(alert)
                if on_alert is not None:
                    on_alert(alert)
            for tag, payload in result.commands:
                sim.command(tag, payload)
    verifier.result.published = published
    return verifier.finish()
