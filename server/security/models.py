"""Security tables in the shared index database, so every server process sees the same state.

Secrets are never stored: passwords as argon2 hashes, session ids and API tokens as
SHA-256 digests (they are long random strings, so a fast hash is enough and a stolen
database row cannot be replayed as a cookie or a bearer token).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.archive.models import Base


class User(Base):
    __tablename__ = "tessera_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    full_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    password_changed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class LoginSession(Base):
    __tablename__ = "login_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("tessera_user.id"), index=True)
    xsrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    client_address: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(256), default="")


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("tessera_user.id"), index=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEvent(Base):
    """One audit record; ``record_hash`` = SHA-256(previous record's hash + this record's content)."""

    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    event_id: Mapped[str] = mapped_column(String(16), index=True)  # DCM code, PS3.15 A.5
    event_type: Mapped[str] = mapped_column(String(16), default="")  # DCM code (CID 401) or ""
    action: Mapped[str] = mapped_column(String(1))  # C R U D E
    outcome: Mapped[int] = mapped_column(Integer)  # 0 success, 4 minor, 8 serious, 12 major failure
    outcome_detail: Mapped[str] = mapped_column(String(256), default="")
    username: Mapped[str] = mapped_column(String(64), default="", index=True)
    role: Mapped[str] = mapped_column(String(16), default="")
    auth_method: Mapped[str] = mapped_column(String(16), default="")  # session, token, none, cli, dimse
    ae_title: Mapped[str] = mapped_column(String(16), default="")
    client_address: Mapped[str] = mapped_column(String(64), default="")
    http_method: Mapped[str] = mapped_column(String(8), default="")
    resource: Mapped[str] = mapped_column(Text, default="")  # path and query as requested
    study_uids: Mapped[str] = mapped_column(Text, default="")  # "|uid|uid|" so one study matches exactly
    patient_ids: Mapped[str] = mapped_column(Text, default="")  # "|id|id|"
    objects: Mapped[str] = mapped_column(Text, default="")  # JSON: other identifiers the request named
    prev_hash: Mapped[str] = mapped_column(String(64))
    record_hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The single row writers lock to append in order, whichever process they run in."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


class StudyGroup(Base):
    """A named set of studies, defined by rules on study attributes (server/security/groups.py)."""

    __tablename__ = "study_group"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(256), default="")
    rules: Mapped[str] = mapped_column(Text, default="{}")  # JSON: attribute -> accepted values
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class UserStudyGroup(Base):
    """A user with at least one row here sees only the studies of those groups."""

    __tablename__ = "user_study_group"

    user_id: Mapped[int] = mapped_column(ForeignKey("tessera_user.id"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("study_group.id"), primary_key=True, index=True)


class EmergencyAccess(Base):
    """Break-glass: while active, the user's group limits are lifted (always audited)."""

    __tablename__ = "emergency_access"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("tessera_user.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DicomAccount(Base):
    """A calling AE title acting as a user account over DIMSE (its role and groups apply)."""

    __tablename__ = "dicom_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("tessera_user.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
