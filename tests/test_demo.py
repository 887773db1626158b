"""`tessera demo` fills an empty archive with every specialty's cases, all accepted."""

from __future__ import annotations

from pathlib import Path

from server.archive.archive import Archive
from server.cli import main
from server.config import load_settings
from server.modules import ModuleRegistry, SeriesRecord


def test_demo_fills_the_archive_and_every_module_claims_its_case(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    assert main(["demo", "--no-serve", "-q", "--data-dir", str(data)]) == 0
    assert "rejected" not in capsys.readouterr().err
    assert not (data / "demo-source").exists()
    archive = Archive(load_settings({}, data_dir=data))
    try:
        from sqlalchemy import select

        from server.archive.models import Instance, Series, Study

        with archive.sessions() as session:
            rows = session.execute(
                select(
                    Study.study_instance_uid,
                    Series.series_instance_uid,
                    Series.modality,
                    Instance.sop_class_uid,
                )
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
            ).all()
    finally:
        archive.close()
    classes: dict[str, set[str]] = {}
    for study, series, modality, sop_class in rows:
        classes.setdefault(f"{study}|{series}|{modality}", set()).add(sop_class)
    registry = ModuleRegistry.discover()
    claimed = set()
    for key, sop_classes in classes.items():
        study, series, modality = key.split("|")
        module = registry.claim(SeriesRecord(study, series, modality, frozenset(sop_classes)))
        if module is not None:
            claimed.add(module.id)
    assert claimed == {m.id for m in registry.modules}, "every loaded module has a demo case"
    assert len(rows) > 60
    # a second run leaves a filled archive alone
    assert main(["demo", "--no-serve", "-q", "--data-dir", str(data)]) == 0
