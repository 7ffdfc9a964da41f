"""A case's own language and texts reach the victim's SMS; a bad template refuses the
case file in `tagwatch cases check` and in the daemon alike."""

from __future__ import annotations

import json
from pathlib import Path

from tagwatch.cases import load
from tagwatch.cli import main
from tagwatch.config import Config
from tagwatch.daemon.caseset import policy_settings
from tagwatch.notify.policy import SmsLedger, deliveries_for
from tests.test_notify_policy import alert

from .conftest import ROOT

SPANISH = (
    "Alerta Tagwatch {ref}: la persona de la que está protegida ha entrado en una zona. "
    "Llame al {emergency}."
)


def _case_file(tmp_path: Path, **case_fields) -> Path:
    doc = json.loads((ROOT / "config" / "cases" / "C-0001.geojson").read_text())
    doc["case"].update(case_fields)
    path = tmp_path / "C-0001.geojson"
    path.write_text(json.dumps(doc))
    return path


def test_the_case_texts_reach_the_sms(tmp_path: Path) -> None:
    loaded = load(_case_file(tmp_path, language="es", texts={"zone.breach": SPANISH}))
    assert loaded.errors == ()
    (case,) = loaded.cases
    settings = policy_settings(Config(), {case.id: case})
    settings = type(settings)(**{**settings.__dict__, "sms_enabled": True})
    (sms,) = deliveries_for(alert(), case, settings, SmsLedger())
    assert sms.target == case.victims[0].phone
    assert sms.body["text"].startswith("Alerta Tagwatch ") and sms.body["language"] == "es"


def test_a_bad_template_refuses_the_file_naming_it(tmp_path: Path, capsys) -> None:
    path = _case_file(tmp_path, texts={"zone.breach": "Alert {ref} at {lat}"})
    assert main(["cases", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "C-0001.geojson: case.texts" in err and "'lat'" in err


def test_an_unknown_rule_name_is_refused_by_cases_check(tmp_path: Path, capsys) -> None:
    path = _case_file(tmp_path, rules={"warn_metres": 100})
    assert main(["cases", "check", str(path)]) == 2
    assert "case.rules.warn_metres: unknown rule name" in capsys.readouterr().err
