"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.archive.archive import Archive
from server.archive.models import Base


def test_migrated_schema_matches_the_models(archive: Archive) -> None:
    with archive.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    # Indexes made for one dialect only (ddl_if) are not expected on the other.
    dialect = archive.engine.dialect.name
    differences = [
        d
        for d in differences
        if not (
            d[0] in ("add_index", "remove_index")
            and d[1].name.endswith("_pattern")
            and dialect != "postgresql"
        )
    ]
    assert differences == []
