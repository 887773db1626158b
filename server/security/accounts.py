"""Users, passwords (argon2), login sessions and API tokens, stored in the index database.

Every method is blocking (argon2 and SQL): call it from an executor, never on the event loop.
Sessions live in the database, not in a process, so every HTTP process sees a login, a
logout or a revocation at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from server.security.groups import Emergency, Scope, load_scope
from server.security.models import ApiToken, DicomAccount, LoginSession, User, UserStudyGroup
from server.security.policy import Role

MIN_PASSWORD_LENGTH = 12
MAX_FAILED_LOGINS = 5  # then the account is locked for LOCKOUT
LOCKOUT = dt.timedelta(minutes=15)
TOKEN_PREFIX = "tsk_"
_hasher = PasswordHasher()
# Verified when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user-management request that cannot be done; the message says why."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who a request acts as, and how that was established."""

    username: str
    role: Role
    method: str  # "session", "token", or "none" when authentication is off
    user_id: int | None = None
    session_id: int | None = None
    xsrf_token: str | None = None
    # Limited to study groups (server/security/groups.py); None: sees every study. An active
    # break-glass period sets ``emergency`` and lifts the scope.
    scope: Scope | None = None
    emergency: Emergency | None = None
    expires_at: dt.datetime | None = None  # the session's or token's end (UTC), if it has one


LOCAL_IDENTITY = Identity(username="", role=Role.ADMINISTRATOR, method="none")


@dataclass(frozen=True)
class LoginResult:
    identity: Identity | None
    session_secret: str = ""  # the cookie value, only on success
    reason: str = ""  # for the audit trail; the client only ever hears "wrong name or password"
    username: str = ""


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: Role
    full_name: str
    disabled: bool
    created_at: dt.datetime
    active_sessions: int
    active_tokens: int


@dataclass(frozen=True)
class TokenInfo:
    id: int
    username: str
    label: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked: bool


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


class Accounts:
    """User management and credential checks over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)

    # -- users ------------------------------------------------------------------------------

    def add_user(self, username: str, role: Role, password: str, full_name: str = "") -> None:
        username = username.strip()
        if not username or len(username) > 64 or any(c.isspace() for c in username):
            raise AccountError("a user name is 1-64 characters without spaces")
        check_password_rules(password)
        password_hash = _hasher.hash(password)
        with self.sessions.begin() as session:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                raise AccountError(f"user {username!r} already exists")
            now = now_utc()
            session.add(
                User(
                    username=username,
                    role=role.value,
                    full_name=full_name,
                    password_hash=password_hash,
                    disabled=False,
                    failed_logins=0,
                    created_at=now,
                    password_changed_at=now,
                )
            )

    def set_password(self, username: str, password: str) -> None:
        """New password; every session and the lockout of the user end."""
        check_password_rules(password)
        password_hash = _hasher.hash(password)
        with self.sessions.begin() as session:
            user = self._user(session, username)
            user.password_hash = password_hash
            user.password_changed_at = now_utc()
            user.failed_logins = 0
            user.locked_until = None
            self._revoke_sessions(session, user.id)

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Disabling ends the user's sessions and tokens at once (they are checked on every request)."""
        with self.sessions.begin() as session:
            user = self._user(session, username)
            user.disabled = disabled
            if disabled:
                self._revoke_sessions(session, user.id)
            else:
                user.failed_logins = 0
                user.locked_until = None

    def revoke_sessions(self, username: str) -> int:
        with self.sessions.begin() as session:
            return self._revoke_sessions(session, self._user(session, username).id)

    def list_users(self) -> list[UserInfo]:
        now = now_utc()
        with self.sessions() as session:
            users = session.scalars(select(User).order_by(User.username)).all()
            live_sessions = dict(
                session.execute(
                    select(LoginSession.user_id, func.count())
                    .where(LoginSession.revoked_at.is_(None), LoginSession.expires_at > now)
                    .group_by(LoginSession.user_id)
                ).all()
            )
            live_tokens = dict(
                session.execute(
                    select(ApiToken.user_id, func.count())
                    .where(ApiToken.revoked_at.is_(None))
                    .where((ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now))
                    .group_by(ApiToken.user_id)
                ).all()
            )
        return [
            UserInfo(
                u.username,
                Role(u.role),
                u.full_name,
                u.disabled,
                as_utc(u.created_at),
                int(live_sessions.get(u.id, 0)),
                int(live_tokens.get(u.id, 0)),
            )
            for u in users
        ]

    def count_active_users(self) -> int:
        with self.sessions() as session:
            return int(
                session.scalar(select(func.count()).select_from(User).where(User.disabled.is_(False))) or 0
            )

    # -- login sessions ---------------------------------------------------------------------

    def login(
        self, username: str, password: str, *, lifetime: int, client_address: str = "", user_agent: str = ""
    ) -> LoginResult:
        """Check a password; on success open a session and return its secret (the cookie value)."""
        now = now_utc()
        with self.sessions.begin() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                _verify(_DUMMY_HASH, password)
                return LoginResult(None, reason="unknown user", username=username[:64])
            if user.disabled:
                _verify(_DUMMY_HASH, password)
                return LoginResult(None, reason="user disabled", username=user.username)
            if user.locked_until is not None and as_utc(user.locked_until) > now:
                _verify(_DUMMY_HASH, password)
                return LoginResult(None, reason="account locked after failed logins", username=user.username)
            if not _verify(user.password_hash, password):
                user.failed_logins += 1
                reason = "wrong password"
                if user.failed_logins >= MAX_FAILED_LOGINS:
                    user.locked_until = now + LOCKOUT
                    user.failed_logins = 0
                    reason = (
                        f"wrong password; account locked for {int(LOCKOUT.total_seconds() // 60)} minutes"
                    )
                return LoginResult(None, reason=reason, username=user.username)
            user.failed_logins = 0
            user.locked_until = None
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = _hasher.hash(password)
            secret = secrets.token_urlsafe(32)
            xsrf = secrets.token_urlsafe(32)
            row = LoginSession(
                session_hash=digest(secret),
                user_id=user.id,
                xsrf_token=xsrf,
                created_at=now,
                last_seen_at=now,
                expires_at=now + dt.timedelta(seconds=lifetime),
                client_address=client_address[:64],
                user_agent=user_agent[:256],
            )
            session.add(row)
            session.flush()
            identity = Identity(user.username, Role(user.role), "session", user.id, row.id, xsrf)
            return LoginResult(identity, secret, username=user.username)

    def resolve_session(self, secret: str, idle_timeout: int) -> Identity | None:
        """The identity behind a session cookie, or None if it is unknown, revoked, idle or expired."""
        now = now_utc()
        with self.sessions() as session:
            row = session.execute(
                select(LoginSession, User, _limited())
                .join(User, LoginSession.user_id == User.id)
                .where(LoginSession.session_hash == digest(secret))
            ).first()
            if row is None:
                return None
            login, user, limited = row
            last_seen = as_utc(login.last_seen_at)
            if (
                login.revoked_at is not None
                or user.disabled
                or as_utc(login.expires_at) <= now
                or last_seen + dt.timedelta(seconds=idle_timeout) <= now
            ):
                return None
            # Refreshing the idle clock is a write; do it only when it has moved noticeably.
            if (now - last_seen).total_seconds() > min(60.0, idle_timeout / 10):
                session.execute(
                    update(LoginSession).where(LoginSession.id == login.id).values(last_seen_at=now)
                )
                session.commit()
            identity = Identity(
                user.username,
                Role(user.role),
                "session",
                user.id,
                login.id,
                login.xsrf_token,
                expires_at=as_utc(login.expires_at),
            )
            return _with_scope(session, identity, now) if limited else identity

    def logout(self, session_id: int) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(LoginSession)
                .where(LoginSession.id == session_id, LoginSession.revoked_at.is_(None))
                .values(revoked_at=now_utc())
            )

    # -- API tokens ---------------------------------------------------------------------------

    def create_token(
        self, username: str, label: str = "", expires_days: int | None = None
    ) -> tuple[int, str]:
        """A new bearer token for scripts; the secret is shown once and only its hash is kept."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = now_utc()
        with self.sessions.begin() as session:
            user = self._user(session, username)
            if user.disabled:
                raise AccountError(f"user {username!r} is disabled")
            token = ApiToken(
                token_hash=digest(secret),
                user_id=user.id,
                label=label[:128],
                created_at=now,
                expires_at=now + dt.timedelta(days=expires_days) if expires_days else None,
            )
            session.add(token)
            session.flush()
            return token.id, secret

    def resolve_token(self, secret: str) -> Identity | None:
        now = now_utc()
        with self.sessions() as session:
            row = session.execute(
                select(ApiToken, User, _limited())
                .join(User, ApiToken.user_id == User.id)
                .where(ApiToken.token_hash == digest(secret))
            ).first()
            if row is None:
                return None
            token, user, limited = row
            if (
                token.revoked_at is not None
                or user.disabled
                or (token.expires_at is not None and as_utc(token.expires_at) <= now)
            ):
                return None
            if token.last_used_at is None or (now - as_utc(token.last_used_at)).total_seconds() > 60:
                session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
                session.commit()
            expires = as_utc(token.expires_at) if token.expires_at is not None else None
            identity = Identity(user.username, Role(user.role), "token", user.id, expires_at=expires)
            return _with_scope(session, identity, now) if limited else identity

    def list_tokens(self, username: str | None = None) -> list[TokenInfo]:
        with self.sessions() as session:
            query = (
                select(ApiToken, User.username).join(User, ApiToken.user_id == User.id).order_by(ApiToken.id)
            )
            if username:
                query = query.where(User.username == username)
            return [
                TokenInfo(
                    t.id,
                    name,
                    t.label,
                    as_utc(t.created_at),
                    as_utc(t.expires_at) if t.expires_at else None,
                    as_utc(t.last_used_at) if t.last_used_at else None,
                    t.revoked_at is not None,
                )
                for t, name in session.execute(query).all()
            ]

    def revoke_token(self, token_id: int) -> str:
        """Revoke one token; returns its owner's name."""
        with self.sessions.begin() as session:
            row = session.execute(
                select(ApiToken, User.username)
                .join(User, ApiToken.user_id == User.id)
                .where(ApiToken.id == token_id)
            ).first()
            if row is None:
                raise AccountError(f"no token with id {token_id}")
            token, username = row
            if token.revoked_at is None:
                token.revoked_at = now_utc()
            return str(username)

    # -- DIMSE: calling AE titles acting as accounts -----------------------------------------

    def map_ae_title(self, ae_title: str, username: str) -> None:
        """The AE title acts as this user over DIMSE (its role and study groups apply)."""
        ae_title = ae_title.strip()
        if not ae_title or len(ae_title) > 16 or "\\" in ae_title or not ae_title.isprintable():
            raise AccountError("an AE title is 1-16 printable characters without backslash")
        with self.sessions.begin() as session:
            user = self._user(session, username)
            row = session.scalar(select(DicomAccount).where(DicomAccount.ae_title == ae_title))
            if row is None:
                session.add(DicomAccount(ae_title=ae_title, user_id=user.id, created_at=now_utc()))
            else:
                row.user_id = user.id

    def unmap_ae_title(self, ae_title: str) -> None:
        with self.sessions.begin() as session:
            row = session.scalar(select(DicomAccount).where(DicomAccount.ae_title == ae_title.strip()))
            if row is None:
                raise AccountError(f"AE title {ae_title!r} is not mapped to an account")
            session.delete(row)

    def ae_titles(self, *, enabled_only: bool = False) -> dict[str, str]:
        """AE title -> user name, for every mapped title (or those of enabled users)."""
        query = (
            select(DicomAccount.ae_title, User.username)
            .join(User, DicomAccount.user_id == User.id)
            .order_by(DicomAccount.ae_title)
        )
        if enabled_only:
            query = query.where(User.disabled.is_(False))
        with self.sessions() as session:
            return dict(session.execute(query).all())

    def resolve_ae_title(self, ae_title: str) -> Identity | None:
        """The enabled account a calling AE title acts as, or None."""
        with self.sessions() as session:
            row = session.execute(
                select(User, _limited())
                .join(DicomAccount, DicomAccount.user_id == User.id)
                .where(DicomAccount.ae_title == ae_title.strip())
            ).first()
            if row is None or row[0].disabled:
                return None
            user, limited = row
            identity = Identity(user.username, Role(user.role), "dimse", user.id)
            return _with_scope(session, identity, now_utc()) if limited else identity

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _user(session: Session, username: str) -> User:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise AccountError(f"no user {username!r}")
        return user

    @staticmethod
    def _revoke_sessions(session: Session, user_id: int) -> int:
        result = session.execute(
            update(LoginSession)
            .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
            .values(revoked_at=now_utc())
        )
        return int(getattr(result, "rowcount", 0) or 0)


def _limited() -> Any:
    """Whether the user is limited to study groups: part of the credential query, so users
    without groups pay nothing more per request."""
    return exists(select(UserStudyGroup.user_id).where(UserStudyGroup.user_id == User.id)).label("limited")


def _with_scope(session: Session, identity: Identity, now: dt.datetime) -> Identity:
    assert identity.user_id is not None
    scope, emergency = load_scope(session, identity.user_id, now)
    return replace(identity, scope=None if emergency else scope, emergency=emergency)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
