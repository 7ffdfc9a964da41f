"""GET /api/cases (DESIGN 3.8): each case, its tags' state and each victim's protection.

Read from the engine's memory (the daemon hands in a callable that calls `cases_view`).
No phone number, no coordinate, no device id (an OwnTracks user name can be a person's
name): ages, quality, battery, and the protection status with its reasons. Degraded
cases first, so they stand out; then unknown, then protected; by id within each.
"""

from __future__ import annotations

from tagwatch.engine.evidence import COARSE_M
from tagwatch.engine.protection import DEGRADED, PROTECTED, UNKNOWN

_ORDER = {DEGRADED: 0, UNKNOWN: 1, PROTECTED: 2}


def cases_view(engine, cases, now: float) -> list[dict]:
    """One object per case in force. `engine`: tagwatch.engine.core.Engine."""
    out = []
    for case in cases:
        tags = [_tag(tag, engine.tags.get(tag), now) for tag in case.tags]
        victims = [_victim(engine, case.id, v, now) for v in case.victims]
        statuses = [v["status"] for v in victims] or [
            UNKNOWN if all(t["last_message_age_s"] is None for t in tags) else PROTECTED
        ]
        status = min(statuses, key=_ORDER.__getitem__)
        out.append({"case": case.id, "status": status, "tags": tags, "victims": victims})
    out.sort(key=lambda c: (_ORDER[c["status"]], c["case"]))
    return out


def _age(ts: float | None, now: float) -> int | None:
    return None if ts is None else round(max(0.0, now - ts))


def _tag(tag: str, st, now: float) -> dict:
    if st is None:
        return {"tag": tag, "last_message_age_s": None, "last_fix_age_s": None,
                "fix_quality": None, "acc_m": None, "battery_pct": None, "battery_low": False,
                "tampered": False, "no_comms": False, "no_fix": False}
    if st.no_fix is not None or st.last_pos_ts is None:
        quality = "none"
    elif st.acc is not None and st.acc > COARSE_M:
        quality = "coarse"
    else:
        quality = "good"
    return {
        "tag": tag,
        "last_message_age_s": _age(st.last_msg_ts, now),
        "last_fix_age_s": _age(st.last_pos_ts, now),
        "fix_quality": quality,
        "acc_m": None if st.acc is None else round(st.acc, 1),
        "battery_pct": st.bat,
        "battery_low": not st.battery_armed,
        "tampered": st.tampered,
        "no_comms": st.no_comms is not None,
        "no_fix": st.no_fix is not None,
    }


def _victim(engine, case_id: str, victim, now: float) -> dict:
    state = engine.protection_of(f"{case_id}/{victim.id}")
    device_id = victim.phone_device
    device = None if device_id is None else engine.devices.get(device_id)
    kind = None if device_id is None else ("owntracks" if victim.owntracks else "device")
    return {
        "victim": victim.id,
        "status": state.status,
        "reasons": list(state.reasons),
        "device": kind,
        "device_age_s": None if device is None else _age(device.ts, now),
        "device_coarse": None if device is None else device.coarse,
    }
