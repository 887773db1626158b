"""QIDO-RS: search for studies, series and instances (PS3.18 10.6) on the shared matcher."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.orm import Session

from server.archive.query import QueryError, QueryLevel, QueryResult, QuerySpec, run_query, spec_from_pairs
from server.context import ServerContext
from server.web.base import BaseHandler, ProblemError

_LEVELS = {"studies": QueryLevel.STUDY, "series": QueryLevel.SERIES, "instances": QueryLevel.INSTANCE}


class QidoHandler(BaseHandler):
    """GET /studies, /series, /instances and their study/series-scoped forms."""

    scope_filters_query = True  # a limited user's groups filter the results, not refuse the query

    def initialize(self, ctx: ServerContext, level_name: str = "studies") -> None:
        super().initialize(ctx)
        self.level = _LEVELS[level_name]

    async def get(self, study: str | None = None, series: str | None = None) -> None:
        level = self.level
        fixed: dict[str, str] = {}
        if study:
            fixed["StudyInstanceUID"] = study
        if series:
            fixed["SeriesInstanceUID"] = series
        pairs = parse_qsl(self.request.query, keep_blank_values=True)
        settings = self.ctx.settings
        try:
            spec = spec_from_pairs(
                level,
                pairs,
                default_limit=settings.query_default_limit,
                max_limit=settings.query_max_limit,
                fixed=fixed,
            )
            if self.identity is not None and self.identity.scope is not None:
                spec.scope = self.identity.scope.condition()
            results = await self.run_blocking(self._run, spec)
        except QueryError as exc:
            raise ProblemError(400, str(exc)) from exc
        if spec.unsupported:
            self.set_header(
                "Warning",
                f'299 tessera "matching on {", ".join(sorted(set(spec.unsupported)))} is not supported; ignored"',
            )
        if len(results) == spec.limit:
            self.add_header("Warning", '299 tessera "there may be more results: use offset to page"')
        base = f"{self.request.protocol}://{self.request.host}/dicom-web"
        self.write_json([_with_retrieve_url(r, level, base) for r in results], "application/dicom+json")

    def _run(self, spec: QuerySpec) -> list[QueryResult]:
        engine = self.ctx.archive.engine
        if engine.dialect.name == "sqlite":  # in-process: no round trips to save
            with self.ctx.archive.sessions() as session:
                return run_query(session, spec)
        # Read-only: in autocommit mode no BEGIN / ROLLBACK round trips go to PostgreSQL around the
        # query (each SELECT still sees one consistent snapshot; READ COMMITTED gives no more).
        with (
            engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection,
            Session(bind=connection) as session,
        ):
            return run_query(session, spec)


def _with_retrieve_url(result: QueryResult, level: QueryLevel, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{result.study_instance_uid}"
    if level in (QueryLevel.SERIES, QueryLevel.INSTANCE):
        url += f"/series/{result.series_instance_uid}"
    if level is QueryLevel.INSTANCE:
        url += f"/instances/{result.sop_instance_uid}"
    document = dict(result.dataset)
    document["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(document.items()))
