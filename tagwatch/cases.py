"""Loading case files as tagwatch uses them: the geometry core's loader, plus the
checks only tagwatch can make (rule names, the victims' text templates).

`tagwatch cases check`, `zones`, `replay` and the daemon all load through here, so a
file one of them accepts the others accept too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagwatch.config import RULE_NAMES
from tagwatch.notify import texts
from zones import Case, load_cases


@dataclass(frozen=True)
class Loaded:
    cases: tuple[Case, ...]
    errors: tuple[str, ...]  # one message per refused file, naming file and field
    files: tuple[str, ...] = ()  # the refused file of each error, in the same order


def load(path: str | Path) -> Loaded:
    """Raises FileNotFoundError when the path does not exist."""
    result = load_cases(path, rule_names=RULE_NAMES)
    errors = [str(e) for e in result.errors]
    files = [e.file for e in result.errors]
    cases = []
    for case in result.cases:
        try:
            texts.check_templates(case.texts, f"{case.source}: case.texts")
        except texts.TextError as exc:
            errors.append(str(exc))
            files.append(str(case.source))
            continue
        cases.append(case)
    return Loaded(tuple(cases), tuple(errors), tuple(files))
