"""Alembic environment: runs on the connection Tessera hands it (see database.migrate)."""

from alembic import context

from server.archive.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when alembic is run by hand
    from sqlalchemy import create_engine

    from server.config import load_settings

    connection = create_engine(load_settings().effective_database_url).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
