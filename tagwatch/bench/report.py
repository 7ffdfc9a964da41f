"""Progress on stderr and the figures on stdout (text or one JSON object)."""

from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np
import pyproj
import shapely


class Progress:
    """Says what a long benchmark is doing, on stderr, so stdout stays clean."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.perf_counter()

    def step(self, what: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{self.name} {elapsed:6.1f}s] {what}", file=sys.stderr, flush=True)

    def done(self) -> None:
        self.step("done")


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": _cpus(),
        "numpy": np.__version__,
        "shapely": shapely.__version__,
        "pyproj": pyproj.__version__,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def emit(result: dict, lines: list[tuple[str, str]], as_json: bool) -> None:
    result = {**result, "machine": machine()}
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    width = max(len(label) for _, label in lines)
    for key, label in lines:
        value = result[key]
        if "ratio" in key:
            shown = f"{value:,.1f}x"
        elif key.endswith("_ms"):
            shown = f"{value:,.1f} ms"
        elif key.endswith("_per_s"):
            shown = f"{value:,} fixes/s"
        elif key.endswith("_s"):
            shown = f"{value:,.2f} s"
        else:
            shown = f"{value:,}"
        print(f"{label:<{width}}  {shown}")
    extra = {k: v for k, v in result.items() if k not in {key for key, _ in lines}}
    print(json.dumps(extra, sort_keys=True))
