"""The case set: loading the case files, the rule for refused files, and the reload.

`CaseSet` and `load_caseset` decide which cases are in force (DESIGN 3.4); `CaseReload` is
the part of the Daemon that swaps a new case set in on SIGHUP, and handles the stop
signals, and keeps the daemon off the broker while no case is loaded.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from tagwatch import signing
from tagwatch.cases import load as load_cases_checked
from tagwatch.config import Config
from tagwatch.notify.policy import PolicySettings
from zones import Case, ZoneSet

log = structlog.get_logger("tagwatch.daemon")


def freeze_long_lived() -> None:
    """What start-up (or a reload) made, modules, cases, zones, the restored rule state,
    lives as long as the daemon: moved out of the garbage collector's generations, a full
    collection walks only what was made since. It holds the GIL throughout, so paho's
    thread and the event loop both wait: a full collection of a daemon with 1,000 cases
    took 30-40 ms of CPU (72,000 objects tracked, nearly all from start-up), under 0.1 ms
    once frozen; and under a one-tag flood the young objects of the normal path reach the
    old generation often, so full collections come often (12% of the GIL's samples,
    issue 16.8). Frozen objects are still freed when their last reference goes; cycles
    among them only after gc.unfreeze() (a reload does that first)."""
    gc.collect()  # no garbage frozen for ever
    gc.freeze()


class CasesRefused(Exception):
    """Case files refused at start; the message names each file and problem."""


def victim_phones(cases: dict[str, Case]) -> dict[str, tuple[str, str]]:
    """phone -> (case id, victim id), for victims' SMS replies."""
    return {v.phone: (c.id, v.id) for c in cases.values() for v in c.victims if v.phone}


@dataclass(frozen=True)
class CaseSet:
    """The cases in force and the case files refused at the last load.

    The rule (DESIGN 3.4): the good files are loaded and swapped in together; a refused
    file is named with its error (file and field, never its content) and the others still
    load. At a reload a refused file keeps the case it held before (`kept`), unless a good
    file now holds that case id; a deleted file's case goes. A missing cases path, or a
    reload that would leave no case at all, is refused whole (CasesRefused) and the cases
    in force stay.
    """

    cases: dict[str, Case]
    refused: dict[str, str] = field(default_factory=dict)  # file -> error
    kept: tuple[str, ...] = ()  # case ids kept from before because their file was refused

    @property
    def zoneset(self) -> ZoneSet:
        return ZoneSet(sorted(self.cases.values(), key=lambda c: (c.source, c.id)))


def load_caseset(path: Path, previous: dict[str, Case] | None = None) -> CaseSet:
    """The good case files of `path`; at a reload, `previous` are the cases in force."""
    try:
        result = load_cases_checked(path)
    except OSError as exc:  # FileNotFoundError: no such file or folder
        raise CasesRefused(str(exc)) from None
    cases = {c.id: c for c in result.cases}
    refused = dict(zip(result.files, result.errors, strict=True))
    kept = []
    for case in (previous or {}).values():
        if case.source in refused and case.id not in cases:
            cases[case.id] = case
            kept.append(case.id)
    if previous and not cases:
        raise CasesRefused(f"{path}: no case would be left; " + "; ".join(refused.values()))
    return CaseSet(cases, refused, tuple(kept))


def log_caseset(caseset: CaseSet, path: Path) -> None:
    """One error line per refused file, a warning per kept case; loud when none is left."""
    for file, error in caseset.refused.items():
        log.error("case_file_refused", file=file, error=error)
    for case_id in caseset.kept:
        source = caseset.cases[case_id].source
        log.warning(
            "case_kept", case=case_id, file=source, detail="its new file is refused; old version"
        )
    if not caseset.cases:
        log.error(
            "no_cases",
            cases=str(path),
            refused=len(caseset.refused),
            detail="not ready and not connected to the broker (it keeps the fixes queued) "
            "until a reload (SIGHUP) loads a case",
        )


def policy_settings(config: Config, cases: dict[str, Case]) -> PolicySettings:
    """Who gets what: the deployment's channels and each case's language and texts."""
    return PolicySettings(
        sms_enabled=config.notify.twilio is not None,
        police_enabled=config.notify.police is not None,
        languages={c.id: c.language for c in cases.values()},
        case_texts={c.id: dict(c.texts) for c in cases.values() if c.texts},
        degraded_notify_s={
            c.id: float(c.rules["degraded_notify_s"])
            for c in cases.values()
            if "degraded_notify_s" in c.rules
        },
        default_degraded_notify_s=config.rules.degraded_notify_s,
    )


class CaseReload:
    """A part of the Daemon (service.py): signals, reload and waiting for cases.
    It uses the Daemon's attributes (config, cases, pipeline, notify, _work...)."""

    async def _cases_in_force(self) -> bool:
        """With no case loaded, stay off the broker (its session keeps the fixes queued)
        until a reload loads one; False when stopped meanwhile."""
        while not self.cases:
            reloaded = asyncio.create_task(self._cases_loaded.wait())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({reloaded, stop}, return_when=asyncio.FIRST_COMPLETED)
            reloaded.cancel()
            stop.cancel()
            self._cases_loaded.clear()
            if self.stopping.is_set():
                return False
        return True

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    def _stop(self, name: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping", signal=name)
            self.stopping.set()

    def _reload_soon(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload())

    async def reload(self) -> bool:
        """Reload the cases (CaseSet has the rule) and the tag keys; False when refused."""
        path = self.config.cases.path
        try:
            caseset = await asyncio.to_thread(load_caseset, path, self.cases)
        except CasesRefused as exc:
            log.error(
                "reload_refused",
                cases=str(path),
                error=str(exc),
                detail="keeping the cases loaded before",
            )
            return False
        try:
            keys = signing.keys_from_env(os.environ)
        except signing.KeyFileError as exc:
            log.error("reload_refused", error=str(exc), detail="keeping the cases and keys")
            return False
        cases = caseset.cases
        async with self._work:
            self.pipeline.reload(caseset.zoneset)
            self.pipeline.set_keys(keys)
            self.cases = cases
            self.cases_refused = dict(caseset.refused)
            self.victim_phones.clear()
            self.victim_phones.update(victim_phones(cases))
            self.notify.settings = policy_settings(self.config, cases)
        log_caseset(caseset, path)
        log.info("reloaded", cases=len(cases), refused=len(caseset.refused), path=str(path))
        gc.unfreeze()  # what the old cases leave in cycles is collected, the new frozen
        freeze_long_lived()
        if cases:
            self._cases_loaded.set()
        return True
