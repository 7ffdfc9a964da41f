"""tagwatch's geometry core: zones, schedules, case files and batch evaluation.

Pure and synchronous: no I/O beyond reading case files in `casefile`, no
asyncio, no knowledge of MQTT or of the rules. Arrays in, arrays out.
"""

from zones.casefile import CaseFileError, LoadResult, load_case_file, load_cases, parse_case
from zones.evaluate import Evaluation, ZoneSet
from zones.geodesy import LocalFrame, ecef, geodesic_distance_m
from zones.models import EXCLUSION, INCLUSION, Case, Victim, Zone
from zones.schedule import Schedule, ScheduleError, Window, parse_schedule

__all__ = [
    "EXCLUSION",
    "INCLUSION",
    "Case",
    "CaseFileError",
    "Evaluation",
    "LoadResult",
    "LocalFrame",
    "Schedule",
    "ScheduleError",
    "Victim",
    "Window",
    "Zone",
    "ZoneSet",
    "ecef",
    "geodesic_distance_m",
    "load_case_file",
    "load_cases",
    "parse_case",
    "parse_schedule",
]
