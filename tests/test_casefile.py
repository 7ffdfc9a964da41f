"""Case files (DESIGN 3.4): what loads, and every refusal naming file, feature and field.

Refusals end up in logs, so each is also checked to quote neither a zone
coordinate nor a phone number (DESIGN 5).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from zones import EXCLUSION, INCLUSION, CaseFileError, ZoneSet, load_case_file, load_cases

SHIPPED_CASES = Path(__file__).resolve().parents[1] / "config" / "cases"
PHONE = "+447700900987"
HOME = [[-0.1280, 51.5070], [-0.1270, 51.5070], [-0.1270, 51.5076], [-0.1280, 51.5076]]
SCHOOL = [-0.1350, 51.5100]
CURFEW = [-0.2000, 51.5200]
RULES = frozenset({"warn_m", "near_m", "dwell_s"})


def good_doc(case_id: str = "C-0100", tags: tuple[str, ...] = ("T-100",)) -> dict:
    return {
        "type": "FeatureCollection",
        "case": {
            "id": case_id,
            "tags": list(tags),
            "timezone": "Europe/London",
            "victims": [{"id": "V-01", "phone": PHONE, "device": "VD-01", "mobile_radius_m": 500}],
            "rules": {"warn_m": 400},
        },
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[*HOME, HOME[0]]]},
                "properties": {
                    "zone": "home",
                    "kind": "exclusion",
                    "victim": "V-01",
                    "warn_m": 250,
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": SCHOOL},
                "properties": {
                    "zone": "school",
                    "kind": "exclusion",
                    "radius_m": 150,
                    "warn_m": 300,
                    "schedule": ["Mon-Fri 08:00-16:00"],
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": CURFEW},
                "properties": {
                    "zone": "curfew",
                    "kind": "inclusion",
                    "radius_m": 80,
                    "schedule": ["Mon-Sun 19:00-07:00"],
                },
            },
        ],
    }


def write(folder: Path, name: str, doc: object) -> Path:
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def secrets_of(doc: object) -> list[str]:
    """Texts a message must not contain: every coordinate (as written and rounded), phones."""
    found: list[str] = []

    def walk(node: object, in_coordinates: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, in_coordinates or key == "coordinates")
                if key == "phone" and isinstance(value, str):
                    found.extend([value, value.lstrip("+")])
        elif isinstance(node, list):
            for item in node:
                walk(item, in_coordinates)
        elif in_coordinates and isinstance(node, int | float):
            found.extend({str(node), f"{node:.4f}", f"{node:.3f}", f"{abs(node):.2f}"})

    walk(doc, False)
    return found


def refused(folder: Path, doc: object, *fragments: str, rule_names=None) -> str:
    """Load `doc` from a file; assert a CaseFileError naming the file and every fragment.

    Returns the message without the file path.
    """
    path = write(folder, "case.geojson", doc)
    with pytest.raises(CaseFileError) as caught:
        load_case_file(path, rule_names)
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    result = load_cases(folder, rule_names)
    assert result.cases == () and [str(e) for e in result.errors] == [message]
    # tmp_path holds the test's id, so only the text after the path is searched for leaks.
    text = message.replace(str(path), "")
    leaked = [s for s in secrets_of(doc) if s in text]
    assert not leaked, f"{message!r} quotes {leaked}"
    return text


def feature(doc: dict, i: int) -> dict:
    return doc["features"][i]


# --- what loads --------------------------------------------------------------------------------


def test_good_case_loads_with_every_field(tmp_path: Path) -> None:
    case = load_case_file(write(tmp_path, "c.geojson", good_doc()), RULES)
    assert (case.id, case.tags, case.timezone) == ("C-0100", ("T-100",), "Europe/London")
    assert case.source.endswith("c.geojson") and dict(case.rules) == {"warn_m": 400}
    (victim,) = case.victims
    assert (victim.id, victim.phone, victim.device, victim.mobile_radius_m) == (
        "V-01",
        PHONE,
        "VD-01",
        500.0,
    )
    home, school, curfew = case.zones
    assert (home.zone_id, home.kind, home.victim, home.warn_m) == ("home", EXCLUSION, "V-01", 250)
    assert home.shape is not None and home.radius_m is None and home.schedule is None
    assert (school.radius_m, school.warn_m, school.shape) == (150.0, 300.0, None)
    assert school.schedule is not None and len(school.schedule.windows) == 1
    assert (curfew.kind, curfew.radius_m, curfew.warn_m) == (INCLUSION, 80.0, None)
    assert all(z.case_id == "C-0100" for z in case.zones)


def test_home_polygon_has_its_metric_size(tmp_path: Path) -> None:
    # 0.001° of longitude at 51.507° is 69.5 m, 0.0006° of latitude is 66.8 m (WGS84).
    case = load_case_file(write(tmp_path, "c.geojson", good_doc()))
    assert case.zones[0].shape.area == pytest.approx(69.5 * 66.8, rel=0.01)


def test_shipped_examples_load_without_errors() -> None:
    result = load_cases(SHIPPED_CASES)
    assert result.errors == ()
    assert len(result.cases) >= 2
    assert {c.source for c in result.cases} == {str(p) for p in SHIPPED_CASES.glob("*.geojson")}


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    write(tmp_path, "a-good.geojson", good_doc("C-1"))
    bad = good_doc("C-2")
    del feature(bad, 1)["properties"]["radius_m"]
    write(tmp_path, "b-bad.geojson", bad)
    write(tmp_path, "c-good.json", good_doc("C-3"))
    write(tmp_path, "d-bad.geojson", "{ not json")
    write(tmp_path, "notes.txt", "not a case file and not read")
    result = load_cases(tmp_path)
    assert sorted(c.id for c in result.cases) == ["C-1", "C-3"]
    assert len(result.errors) == 2
    assert "b-bad.geojson" in str(result.errors[0]) and "radius_m" in str(result.errors[0])
    assert "d-bad.geojson" in str(result.errors[1]) and "JSON" in str(result.errors[1])
    assert result.errors[0].file.endswith("b-bad.geojson")


def test_same_case_id_in_two_files_refuses_the_second(tmp_path: Path) -> None:
    write(tmp_path, "a.geojson", good_doc("C-7"))
    write(tmp_path, "b.geojson", good_doc("C-7"))
    result = load_cases(tmp_path)
    assert [c.source for c in result.cases] == [str(tmp_path / "a.geojson")]
    (error,) = result.errors
    assert str(tmp_path / "b.geojson") in str(error) and "case.id" in str(error)
    assert str(tmp_path / "a.geojson") in str(error) and "C-7" in str(error)


def test_a_tag_may_belong_to_several_cases(tmp_path: Path) -> None:
    write(tmp_path, "a.geojson", good_doc("C-1", ("T-shared", "T-a")))
    write(tmp_path, "b.geojson", good_doc("C-2", ("T-shared",)))
    result = load_cases(tmp_path)
    assert result.errors == () and len(result.cases) == 2
    zone_set = ZoneSet(result.cases)
    rows = zone_set.evaluate(zone_set.tag_indices(["T-shared"]), np.array([0.0]), np.array([0.1]))
    assert sorted(zone_set.zones[k].case_id for k in rows.zone) == ["C-1"] * 3 + ["C-2"] * 3


def test_a_single_file_path_and_a_missing_path(tmp_path: Path) -> None:
    path = write(tmp_path, "one.geojson", good_doc())
    assert [c.id for c in load_cases(path).cases] == ["C-0100"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cases(tmp_path / "nowhere")


def test_rule_names_none_accepts_any_rule(tmp_path: Path) -> None:
    doc = good_doc()
    doc["case"]["rules"] = {"anything_m": 5}
    assert dict(load_case_file(write(tmp_path, "c.geojson", doc)).rules) == {"anything_m": 5}


# --- refusals ----------------------------------------------------------------------------------


def test_not_json(tmp_path: Path) -> None:
    refused(tmp_path, '{"type": "FeatureCollection", "features": [', "not JSON", "line 1")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "case.geojson"
    path.write_bytes(b'{"type": "FeatureCollection" \xff}')
    with pytest.raises(CaseFileError, match="UTF-8") as caught:
        load_case_file(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "doc",
    [
        {"type": "Feature", "geometry": None, "properties": {}},
        [good_doc()],
        {"features": []},
        "just a string",
    ],
    ids=["feature", "list", "no type", "string"],
)
def test_json_but_not_a_feature_collection(tmp_path: Path, doc: object) -> None:
    refused(tmp_path, json.dumps(doc), "not GeoJSON", "FeatureCollection")


def test_unclosed_ring(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 0)["geometry"]["coordinates"] = [[*HOME, [-0.1281, 51.5070]]]
    refused(tmp_path, doc, "feature 0", "'home'", "geometry.coordinates", "not closed")


def test_self_intersecting_ring(tmp_path: Path) -> None:
    bow_tie = [HOME[0], HOME[2], HOME[1], HOME[3], HOME[0]]
    doc = good_doc()
    feature(doc, 0)["geometry"]["coordinates"] = [bow_tie]
    message = refused(tmp_path, doc, "feature 0", "'home'", "geometry", "invalid polygon")
    assert "Self-intersection" in message


def test_latitude_outside_range_lon_lat_swapped(tmp_path: Path) -> None:
    # Sydney drawn as [lat, lon]: latitude 151.2.
    sydney = [[-33.80, 151.20], [-33.80, 151.21], [-33.81, 151.21], [-33.80, 151.20]]
    doc = good_doc()
    feature(doc, 0)["geometry"]["coordinates"] = [sydney]
    refused(tmp_path, doc, "feature 0", "'home'", "geometry.coordinates", "latitude", "swapped")


def test_point_latitude_outside_range(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 1)["geometry"]["coordinates"] = [-33.8688, 151.2093]
    refused(tmp_path, doc, "feature 1", "'school'", "geometry.coordinates", "latitude")


def test_longitude_outside_range(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 1)["geometry"]["coordinates"] = [181.5, 51.5]
    refused(tmp_path, doc, "feature 1", "'school'", "geometry.coordinates", "longitude")


def test_point_without_radius(tmp_path: Path) -> None:
    doc = good_doc()
    del feature(doc, 1)["properties"]["radius_m"]
    refused(tmp_path, doc, "feature 1", "'school'", "properties.radius_m")


@pytest.mark.parametrize("radius", [0, -5, "150", None, True])
def test_point_radius_not_positive(tmp_path: Path, radius: object) -> None:
    doc = good_doc()
    feature(doc, 2)["properties"]["radius_m"] = radius
    refused(tmp_path, doc, "feature 2", "'curfew'", "properties.radius_m")


def test_radius_on_a_polygon(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 0)["properties"]["radius_m"] = 50
    refused(tmp_path, doc, "feature 0", "'home'", "properties.radius_m")


@pytest.mark.parametrize("kind", ["forbidden", "Exclusion", None])
def test_unknown_kind(tmp_path: Path, kind: object) -> None:
    doc = good_doc()
    feature(doc, 1)["properties"]["kind"] = kind
    refused(tmp_path, doc, "feature 1", "'school'", "properties.kind")


@pytest.mark.parametrize("schedule", [["Mon-Fri 8-16"], [], "Mon-Fri 08:00-16:00"])
def test_bad_schedule(tmp_path: Path, schedule: object) -> None:
    doc = good_doc()
    feature(doc, 1)["properties"]["schedule"] = schedule
    refused(tmp_path, doc, "feature 1", "'school'", "properties.schedule")


@pytest.mark.parametrize("timezone", ["Europe/Londres", "", None])
def test_bad_timezone(tmp_path: Path, timezone: object) -> None:
    doc = good_doc()
    doc["case"]["timezone"] = timezone
    refused(tmp_path, doc, "case.timezone")


def test_duplicate_zone_ids(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 2)["properties"]["zone"] = "school"
    refused(tmp_path, doc, "feature 2", "'school'", "properties.zone", "duplicate")


@pytest.mark.parametrize("tags", ["missing", [], [""], "T-100"])
def test_case_without_tags(tmp_path: Path, tags: object) -> None:
    doc = good_doc()
    if tags == "missing":
        del doc["case"]["tags"]
    else:
        doc["case"]["tags"] = tags
    refused(tmp_path, doc, "case.tags")


def test_zone_naming_an_unknown_victim(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 0)["properties"]["victim"] = "V-99"
    refused(tmp_path, doc, "feature 0", "'home'", "properties.victim")


@pytest.mark.parametrize(
    "phone",
    ["447700900987", "07700900987", "+44 7700 900987", 447700900987],
    ids=["no plus", "national", "spaces", "number"],
)
def test_bad_phone(tmp_path: Path, phone: object) -> None:
    doc = good_doc()
    doc["case"]["victims"][0]["phone"] = phone
    message = refused(tmp_path, doc, "case.victims[0].phone")
    assert "7700900987" not in message and "900987" not in message


def test_phone_of_another_victim_not_quoted(tmp_path: Path) -> None:
    doc = good_doc()
    doc["case"]["victims"].append({"id": "V-02", "phone": "+44 7700 900555"})
    message = refused(tmp_path, doc, "case.victims[1].phone")
    assert PHONE not in message


def test_unknown_rule_name(tmp_path: Path) -> None:
    doc = good_doc()
    doc["case"]["rules"] = {"warn_m": 300, "wran_m": 200}
    refused(tmp_path, doc, "case.rules.wran_m", "unknown rule", rule_names=RULES)


def test_negative_rule_value(tmp_path: Path) -> None:
    doc = good_doc()
    doc["case"]["rules"] = {"warn_m": -1}
    refused(tmp_path, doc, "case.rules.warn_m", rule_names=RULES)


@pytest.mark.parametrize(
    ("geometry", "field"),
    [
        ({"type": "LineString", "coordinates": [[-0.1, 51.5], [-0.2, 51.5]]}, "geometry"),
        (None, "geometry"),
        ({"type": "Polygon", "coordinates": [[[-0.1, 51.5], [-0.2, 51.5], [-0.1, 51.5]]]},
         "geometry.coordinates"),
        ({"type": "Polygon", "coordinates": []}, "geometry.coordinates"),
        ({"type": "Point", "coordinates": ["-0.1", 51.5]}, "geometry.coordinates"),
    ],
    ids=["linestring", "none", "three positions", "no rings", "string coordinate"],
)  # fmt: skip
def test_bad_geometry(tmp_path: Path, geometry: object, field: str) -> None:
    doc = good_doc()
    feature(doc, 1)["geometry"] = geometry
    if geometry and geometry["type"] != "Point":
        del feature(doc, 1)["properties"]["radius_m"]
    refused(tmp_path, doc, "feature 1", "'school'", field)


def test_hole_outside_its_shell(tmp_path: Path) -> None:
    far = [[-0.10, 51.50], [-0.09, 51.50], [-0.09, 51.51], [-0.10, 51.50]]
    doc = good_doc()
    feature(doc, 0)["geometry"]["coordinates"].append(far)
    refused(tmp_path, doc, "feature 0", "'home'", "geometry", "invalid polygon")


def test_negative_warn_m(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 0)["properties"]["warn_m"] = -10
    refused(tmp_path, doc, "feature 0", "'home'", "properties.warn_m")


@pytest.mark.parametrize("radius", [0, -1, "500"])
def test_bad_victim_mobile_radius(tmp_path: Path, radius: object) -> None:
    doc = good_doc()
    doc["case"]["victims"][0]["mobile_radius_m"] = radius
    refused(tmp_path, doc, "case.victims[0].mobile_radius_m")


def test_duplicate_tag_and_duplicate_victim(tmp_path: Path) -> None:
    doc = good_doc(tags=("T-1", "T-1"))
    refused(tmp_path, doc, "case.tags")
    doc = good_doc()
    doc["case"]["victims"].append({"id": "V-01"})
    refused(tmp_path, doc, "case.victims")


def test_feature_without_zone_id(tmp_path: Path) -> None:
    doc = good_doc()
    del feature(doc, 1)["properties"]["zone"]
    refused(tmp_path, doc, "feature 1", "properties.zone")


def test_case_member_missing(tmp_path: Path) -> None:
    doc = good_doc()
    del doc["case"]
    refused(tmp_path, doc, '"case"')


def test_refusal_leaves_the_document_alone(tmp_path: Path) -> None:
    doc = good_doc()
    feature(doc, 0)["properties"]["victim"] = "V-99"
    before = copy.deepcopy(doc)
    refused(tmp_path, doc, "properties.victim")
    assert doc == before


# -- ids (issue 16.12): they become topic levels, chain names and URL segments ---------------

BAD_IDS = ["C/1", "C+1", "C#1", "C\x001", "", " ", "x" * 65, "Cé", 7]


def _set_id(doc: dict, where: str, value: object) -> None:
    if where == "case.id":
        doc["case"]["id"] = value
    elif where == "case.tags[1]":
        doc["case"]["tags"] = ["T-100", value]
    elif where == "case.victims[0].id":
        doc["case"]["victims"][0]["id"] = value
        for f in doc["features"]:
            f["properties"].pop("victim", None)
    elif where == "case.victims[0].device":
        doc["case"]["victims"][0]["device"] = value
    else:
        feature(doc, 1)["properties"]["zone"] = value


@pytest.mark.parametrize("where", ["case.id", "case.tags[1]", "case.victims[0].id",
                                   "case.victims[0].device", "feature 1.properties.zone"])
@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
def test_an_id_outside_the_id_characters_is_refused_naming_the_field(
        tmp_path: Path, where: str, value: object) -> None:
    doc = good_doc()
    _set_id(doc, where, value)
    message = refused(tmp_path, doc, where, "is not an id", "A-Z a-z 0-9 . _ -")
    assert "\x00" not in message


def test_ids_of_64_id_characters_load(tmp_path: Path) -> None:
    doc = good_doc(case_id="C." + "x" * 59 + "_-9", tags=("t.1_A-" + "9" * 58,))
    case = load_case_file(write(tmp_path, "case.geojson", doc))
    assert len(case.id) == 64 and len(case.tags[0]) == 64
