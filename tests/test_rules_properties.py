"""Properties of the rule pipeline (hypothesis): order, redelivery, batching, restarts.

Every alert id must survive what MQTT does to messages (QoS 1 redelivery,
arrival order among messages of the same event time) and what the daemon
does to batches (micro-batches live, big batches in replay, a restart from
checkpoints in between).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagwatch.engine.alerts import encode
from tests.tracks import (
    CENTRE,
    VICTIM,
    at_distance,
    case_doc,
    circle,
    fix,
    noisy,
    offset,
    pipeline,
    run,
    tag_msg,
    utc,
    victim_msg,
    without_protection,
)

T0 = utc("2026-07-06T10:00:00Z")
TAGS = ("T-1", "T-2", "T-3")
DOC = case_doc(
    [circle("home", warn_m=250, victim=VICTIM), circle("park", offset(CENTRE, 90, 700), 60)],
    tags=TAGS,
)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scenario(seed: int, steps: int = 40):
    """Messages of three tags and the victim device, in rounds of equal event time."""
    rng = np.random.default_rng(seed)
    rounds = []
    for i in range(steps):
        ts = T0 + 30 * i
        msgs = []
        for k, tag in enumerate(TAGS):
            d = 400 - 25 * i + 40 * k  # all three walk in and through home
            pos = noisy([at_distance(100, d, 90 + 30 * k)], 8.0, rng)[0]
            msgs.append(tag_msg(fix(ts, pos, 10.0, seq=i), tag))
        if i % 4 == 0:
            msgs.append(victim_msg(fix(ts, offset(CENTRE, 0, 300))))
        rounds.append(msgs)
    return rounds


def ids(records) -> list[str]:
    return sorted({r.id for r in records})


@SETTINGS
@given(seed=st.integers(0, 2**16), data=st.data())
def test_shuffling_messages_of_the_same_event_time_changes_no_alert_id(seed, data):
    """Each message is a batch of its own (`run` of a flat list): the arrival order of a
    tag's and the victim device's fixes of one event time crosses batches, as it does
    live; and again with each round one batch, as in replay."""
    rounds = scenario(seed)
    plain = run([m for msgs in rounds for m in msgs], pipeline(DOC))
    shuffled = [data.draw(st.permutations(msgs)) for msgs in rounds]
    other = run([m for msgs in shuffled for m in msgs], pipeline(DOC))
    assert plain.records, "the scenario must raise alerts"
    assert ids(other.records) == ids(plain.records)
    assert ids(run(shuffled, pipeline(DOC)).records) == ids(plain.records)


@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_every_message_twice_changes_no_alert_id_nor_record(seed):
    msgs = [m for r in scenario(seed) for m in r]
    once = run(msgs, pipeline(DOC))
    twice = run([m for m in msgs for _ in (0, 1)], pipeline(DOC))
    assert [encode(r) for r in twice.records] == [encode(r) for r in once.records]
    assert [encode(r) for r in twice.protection] == [encode(r) for r in once.protection]


@SETTINGS
@given(seed=st.integers(0, 2**16), size=st.sampled_from([1, 7, 10_000]))
def test_batch_size_does_not_change_the_records(seed, size):
    msgs = [m for r in scenario(seed) for m in r]
    whole = run([msgs], pipeline(DOC))
    parts = run([msgs[i : i + size] for i in range(0, len(msgs), size)], pipeline(DOC))
    assert [encode(r) for r in parts.records] == [encode(r) for r in whole.records]
    assert [encode(r) for r in parts.protection] == [encode(r) for r in whole.protection]
    assert parts.commands == whole.commands


def _checkpoints(pipe, result) -> dict[str, bytes]:
    # The pipeline API moved from Result.checkpoints to Pipeline.checkpoints().
    if hasattr(pipe, "checkpoints") and callable(pipe.checkpoints):
        return pipe.checkpoints()
    return result.checkpoints


@SETTINGS
@given(seed=st.integers(0, 2**16), cut=st.integers(1, 150), size=st.sampled_from([1, 9]))
def test_checkpoint_and_restore_resumes_exactly(seed, cut, size):
    msgs = [m for r in scenario(seed) for m in r]
    cut = min(cut, len(msgs) - 1)
    whole = run([msgs[i : i + size] for i in range(0, len(msgs), size)], pipeline(DOC))
    first = pipeline(DOC)
    saved: dict[str, bytes] = {}
    records = []
    head = msgs[:cut]
    for i in range(0, len(head), size):
        result = first.process(head[i : i + size])
        records += result.records
        saved.update(_checkpoints(first, result))  # later keys replace earlier
    second = pipeline(DOC)
    second.engine.restore(saved)
    tail = msgs[cut:]
    for i in range(0, len(tail), size):
        records += second.process(tail[i : i + size]).records
    assert [encode(r) for r in without_protection(records)] == [encode(r) for r in whole.records]
    protection = [r for r in records if r.type.startswith("protection.")]
    assert [encode(r) for r in protection] == [encode(r) for r in whole.protection]
