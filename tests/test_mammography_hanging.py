"""Views, hanging protocols and prior selection: every image lands in the right viewport, mirrored right."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from modules.mammography.exams import chest_wall_side, exam_image
from modules.mammography.hanging import (
    Exam,
    ExamImage,
    ProtocolError,
    choose_protocol,
    hang,
    load_protocols,
    protocol_from_json,
    select_priors,
)
from modules.mammography.views import (
    BREAST_TOMOSYNTHESIS,
    DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
    BreastView,
    ImageKind,
    parse_breast_view,
)
from sample_data.mammography import CURRENT, mammogram, tomosynthesis

PROTOCOLS = load_protocols()


def image(
    study: str,
    lat: str,
    view: str,
    n: int,
    *,
    chest_wall: str | None = None,
    kind: ImageKind = ImageKind.MAMMOGRAM,
    modifiers: tuple[str, ...] = (),
    source: str = "",
) -> ExamImage:
    side = chest_wall if chest_wall is not None else {"R": "right", "L": "left"}.get(lat, "")
    return ExamImage(
        study_instance_uid=study,
        series_instance_uid=f"{study}.{n}",
        sop_instance_uid=f"{study}.{n}.1",
        sop_class_uid=BREAST_TOMOSYNTHESIS
        if kind is ImageKind.TOMOSYNTHESIS
        else DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
        breast=BreastView(lat, view, modifiers),
        kind=kind,
        frames=30 if kind is ImageKind.TOMOSYNTHESIS else 1,
        chest_wall=side,
        series_number=n,
        instance_number=1,
        source_sop_instance_uid=source,
    )


def four_views(study: str) -> list[ExamImage]:
    return [
        image(study, "R", "CC", 1),
        image(study, "L", "CC", 2),
        image(study, "R", "MLO", 3),
        image(study, "L", "MLO", 4),
    ]


def exam(uid: str, date: str, images: list[ExamImage], time: str = "090000") -> Exam:
    return Exam(uid, date, time, f"ACC-{uid}", "MAMMO", frozenset({"MG"}), tuple(images))


def placements(document: dict, stage: int) -> dict[str, tuple[str | None, bool]]:
    return {
        v["id"]: (v["image"]["SOPInstanceUID"] if v["image"] else None, v["mirrored"])
        for v in document["stages"][stage]["viewports"]
    }


# ---- views -------------------------------------------------------------------------------


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def _code(value: str, meaning: str = "", modifiers: tuple[str, ...] = ()) -> Dataset:
    item = _header(CodeValue=value, CodingSchemeDesignator="SCT", CodeMeaning=meaning)
    item.ViewModifierCodeSequence = [_header(CodeValue=m, CodingSchemeDesignator="SCT") for m in modifiers]
    return item


def test_view_from_view_code_sequence_with_modifiers() -> None:
    ds = _header(ImageLaterality="L", ViewPosition="CC")
    ds.ViewCodeSequence = [_code("399192008", "cranio-caudal exaggerated laterally", ("399163009",))]
    view = parse_breast_view(ds)
    assert (view.laterality, view.view, view.modifiers) == ("L", "XCCL", ("MAGNIFICATION",))
    assert view.label == "LXCCL-M"
    assert view.view_source == "ViewCodeSequence" and not view.notices


def test_view_falls_back_to_view_position_then_description() -> None:
    assert parse_breast_view(_header(ImageLaterality="R", ViewPosition="MLO")).view == "MLO"
    by_description = parse_breast_view(_header(SeriesDescription="L MLO tomo"))
    assert (by_description.laterality, by_description.view) == ("L", "MLO")
    assert any("SeriesDescription" in n for n in by_description.notices)
    spot = _header(ImageLaterality="R", SeriesDescription="RCC SPOT")
    assert parse_breast_view(spot).view == "CC"


def test_unknown_view_code_and_missing_laterality_are_kept_with_notices() -> None:
    ds = _header()
    ds.ViewCodeSequence = [_code("123456", "something new")]
    view = parse_breast_view(ds)
    assert (view.laterality, view.view, view.label) == ("", "UNKNOWN", "??")
    assert any("unknown view code 123456" in n for n in view.notices)
    assert any("laterality not recorded" in n for n in view.notices)


def test_frame_laterality_of_enhanced_objects() -> None:
    ds, _ = tomosynthesis(CURRENT, "L", "CC", 10, seed=1, slices=3, shape=(64, 48))
    del ds.ImageLaterality
    view = parse_breast_view(ds)
    assert (view.laterality, view.laterality_source) == ("L", "FrameLaterality")


def test_chest_wall_from_patient_orientation_or_assumed() -> None:
    assert chest_wall_side(_header(PatientOrientation=["P", "L"]), "R") == ("right", "PatientOrientation")
    assert chest_wall_side(_header(PatientOrientation=["A", "R"]), "L") == ("left", "PatientOrientation")
    assert chest_wall_side(_header(PatientOrientation=["P", "R"]), "L") == ("right", "PatientOrientation")
    assert chest_wall_side(_header(), "L") == ("left", "assumed")


def test_exam_image_of_sample_headers() -> None:
    ds = mammogram(CURRENT, "L", "MLO", 4, seed=3, shape=(80, 64))
    img = exam_image(ds, "1.2", "1.2.3", 1)
    assert (img.breast.label, img.kind, img.chest_wall) == ("LMLO", ImageKind.MAMMOGRAM, "left")
    stack, _ = tomosynthesis(
        CURRENT, "R", "CC", 10, seed=4, slices=3, shape=(64, 48), functional_groups=False
    )
    tomo = exam_image(stack, "1.2", "1.2.4", 3)
    assert tomo.kind is ImageKind.TOMOSYNTHESIS
    assert any("no per-frame functional groups" in n for n in tomo.notices)


# ---- hanging -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_inputs_land_in_the_same_viewports(seed: int) -> None:
    current_images = four_views("1.1")
    prior_images = four_views("1.2")
    random.Random(seed).shuffle(current_images)
    random.Random(seed + 100).shuffle(prior_images)
    current = exam("1.1", "20250610", current_images)
    prior = exam("1.2", "20240604", prior_images)
    protocol = choose_protocol(PROTOCOLS, current, [prior])
    assert protocol.id == "screening-with-prior"
    document = hang(protocol, current, [prior]).to_json()
    assert placements(document, 0) == {
        "RCC": ("1.1.1.1", False),
        "LCC": ("1.1.2.1", False),
        "RMLO": ("1.1.3.1", False),
        "LMLO": ("1.1.4.1", False),
    }
    assert placements(document, 1)["RCC-prior"] == ("1.2.1.1", False)
    assert placements(document, 3)["LMLO-prior"] == ("1.2.4.1", False)
    eight = document["stages"][3]["viewports"]
    assert [(v["row"], v["column"], v["is_prior"]) for v in eight][:2] == [(0, 0, False), (0, 1, False)]
    assert all(v["is_prior"] for v in eight if v["row"] == 1)
    assert document["other_images"] == []


def test_images_stored_the_other_way_round_are_mirrored() -> None:
    flipped = [
        image("1.1", "R", "CC", 1, chest_wall="left"),  # stored with the chest wall on the left
        image("1.1", "L", "CC", 2, chest_wall="right"),
        image("1.1", "R", "MLO", 3),
        image("1.1", "L", "MLO", 4),
    ]
    document = hang(PROTOCOLS[1], exam("1.1", "20250610", flipped), []).to_json()
    stage = placements(document, 0)
    assert stage["RCC"] == ("1.1.1.1", True) and stage["LCC"] == ("1.1.2.1", True)
    assert stage["RMLO"] == ("1.1.3.1", False) and stage["LMLO"] == ("1.1.4.1", False)
    rcc = document["stages"][0]["viewports"][0]
    assert (rcc["chest_wall"], rcc["image"]["chest_wall"]) == ("right", "left")


def test_missing_views_leave_empty_viewports_and_no_prior_uses_the_plain_protocol() -> None:
    current = exam("1.1", "20250610", [image("1.1", "R", "CC", 1), image("1.1", "L", "MLO", 4)])
    protocol = choose_protocol(PROTOCOLS, current, [])
    assert protocol.id == "screening"
    document = hang(protocol, current, []).to_json()
    stage = placements(document, 0)
    assert stage["RCC"][0] == "1.1.1.1" and stage["LMLO"][0] == "1.1.4.1"
    assert stage["LCC"] == (None, False)
    empty = next(v for v in document["stages"][0]["viewports"] if v["id"] == "LCC")
    assert empty["empty"] == "no LCC image"


def test_missing_prior_views_are_empty_with_a_reason() -> None:
    current = exam("1.1", "20250610", four_views("1.1"))
    prior = exam("1.2", "20240604", [image("1.2", "R", "CC", 1)])
    document = hang(choose_protocol(PROTOCOLS, current, [prior]), current, [prior]).to_json()
    stage = placements(document, 1)
    assert stage["RCC-prior"][0] == "1.2.1.1" and stage["LCC-prior"] == (None, False)


def test_extra_views_are_listed_never_dropped_and_repeats_replace() -> None:
    images = [
        *four_views("1.1"),
        image("1.1", "L", "CC", 7),  # a repeated LCC: the later one is shown
        image("1.1", "L", "CC", 8, modifiers=("SPOT_COMPRESSION",)),
        image("1.1", "R", "XCCL", 9),
        image("1.1", "", "UNKNOWN", 10),
        image("1.1", "L", "CC", 11, kind=ImageKind.TOMOSYNTHESIS),
        image("1.1", "L", "CC", 12, kind=ImageKind.SYNTHESIZED, source="1.1.11.1"),
    ]
    current = exam("1.1", "20250610", images)
    document = hang(choose_protocol(PROTOCOLS, current, []), current, []).to_json()
    stage = document["stages"][0]["viewports"]
    lcc = next(v for v in stage if v["id"] == "LCC")
    assert lcc["image"]["SOPInstanceUID"] == "1.1.7.1"
    assert lcc["tomosynthesis"]["SOPInstanceUID"] == "1.1.11.1"
    others = {o["SOPInstanceUID"] for o in document["other_images"]}
    assert others == {"1.1.2.1", "1.1.8.1", "1.1.9.1", "1.1.10.1", "1.1.12.1"}
    shown = others | {
        v["image"]["SOPInstanceUID"] for s in document["stages"] for v in s["viewports"] if v["image"]
    }
    shown |= {
        v["tomosynthesis"]["SOPInstanceUID"]
        for s in document["stages"]
        for v in s["viewports"]
        if v["tomosynthesis"]
    }
    assert shown == {i.sop_instance_uid for i in images}


def test_synthesized_2d_stands_in_for_a_missing_conventional_view() -> None:
    images = [
        image("1.1", "R", "CC", 1),
        image("1.1", "L", "CC", 11, kind=ImageKind.TOMOSYNTHESIS),
        image("1.1", "L", "CC", 12, kind=ImageKind.SYNTHESIZED, source="1.1.11.1"),
    ]
    current = exam("1.1", "20250610", images)
    document = hang(PROTOCOLS[1], current, []).to_json()
    lcc = document["stages"][0]["viewports"][1]
    assert (lcc["image"]["SOPInstanceUID"], lcc["image"]["kind"]) == ("1.1.12.1", "synthesized")
    assert lcc["tomosynthesis"]["SOPInstanceUID"] == "1.1.11.1"
    assert lcc["tomosynthesis"]["frame"] == 15


# ---- priors --------------------------------------------------------------------------------


def test_prior_selection_takes_the_most_recent_earlier_exam() -> None:
    current = exam("9", "20250610", four_views("9"), time="100000")
    candidates = [
        exam("1", "20220501", four_views("1")),
        exam("2", "20240604", four_views("2")),
        exam("3", "20230612", four_views("3")),
        exam("4", "20260101", four_views("4")),  # later: never a prior
        exam("5", "20250610", four_views("5"), time="080000"),  # same day, earlier: a prior
        exam("6", "", four_views("6")),  # undated: never a prior
        exam("7", "20250101", []),  # no mammography images
    ]
    assert [e.study_instance_uid for e in select_priors(current, candidates, 3)] == ["5", "2", "3"]
    assert [e.study_instance_uid for e in select_priors(current, candidates, 2, min_interval_days=30)] == [
        "2",
        "3",
    ]


def test_several_priors_hang_the_chosen_one() -> None:
    current = exam("9", "20250610", four_views("9"))
    older = exam("1", "20220501", four_views("1"))
    recent = exam("2", "20240604", four_views("2"))
    priors = select_priors(current, [older, recent], 1)
    document = hang(choose_protocol(PROTOCOLS, current, priors), current, priors, [recent, older]).to_json()
    assert [p["StudyInstanceUID"] for p in document["priors"]] == ["2"]
    assert placements(document, 2)["RMLO-prior"][0] == "2.3.1"
    chosen = hang(choose_protocol(PROTOCOLS, current, [older]), current, [older]).to_json()
    assert placements(chosen, 2)["RMLO-prior"][0] == "1.3.1"


# ---- protocol data -------------------------------------------------------------------------


def test_protocol_documents_are_validated(tmp_path: Path) -> None:
    document = json.loads((Path("modules/mammography/protocols/screening.json")).read_text())
    document["stages"][0]["viewports"][0]["chest_wall"] = "middle"
    with pytest.raises(ProtocolError, match="chest_wall"):
        protocol_from_json(document, "bad.json")
    with pytest.raises(ProtocolError, match=r"bad\.json"):
        protocol_from_json({"id": "x"}, "bad.json")
    with pytest.raises(ProtocolError, match="no hanging protocol 'nope'"):
        choose_protocol(PROTOCOLS, exam("1", "20250101", four_views("1")), [], "nope")
