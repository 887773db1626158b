"""Roles, what each may do, and the rule that a server reachable from the network needs logins."""

from __future__ import annotations

from enum import StrEnum

from server.config import ConfigError, Settings


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    CLINICIAN = "clinician"  # reads and reports (writes reports, plans, annotations, stores)
    VIEWER = "viewer"  # reads patient data only
    AUDITOR = "auditor"  # reads the audit trail only, no patient data


class Permission(StrEnum):
    PUBLIC = "public"  # no login needed (login API, health check)
    SIGNED_IN = "signed-in"  # any user, no patient data (module list, own session)
    READ = "read"  # patient data: QIDO, WADO, module GETs
    WRITE = "write"  # STOW, module POST/PUT/DELETE (reports, plans, annotations)
    AUDIT = "audit"  # the audit trail
    ADMIN = "admin"  # users and configuration


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMINISTRATOR: frozenset(Permission),
    Role.CLINICIAN: frozenset({Permission.PUBLIC, Permission.SIGNED_IN, Permission.READ, Permission.WRITE}),
    Role.VIEWER: frozenset({Permission.PUBLIC, Permission.SIGNED_IN, Permission.READ}),
    Role.AUDITOR: frozenset({Permission.PUBLIC, Permission.SIGNED_IN, Permission.AUDIT}),
}

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allows(role: Role, permission: Permission) -> bool:
    return permission in GRANTS[role]


def default_permission(method: str) -> Permission:
    """Patient-data routes: reading needs READ, anything that changes state needs WRITE."""
    return Permission.READ if method.upper() in SAFE_METHODS else Permission.WRITE


class StartupRefused(ConfigError):
    """The deployment would expose patient data without logins; the message says how to fix it."""


def check_startup(settings: Settings, active_users: int) -> None:
    """Refuse to serve a network-reachable address with authentication off or nobody able to log in."""
    if settings.loopback_only:
        return
    if not settings.authentication_required:
        raise StartupRefused(
            f"refusing to serve on {settings.host}, which other machines can reach, with authentication "
            "off (TESSERA_AUTH_ENABLED=false). Turn authentication on, or bind to 127.0.0.1."
        )
    if active_users == 0:
        raise StartupRefused(
            f"refusing to serve on {settings.host} with authentication on but no active user. Create the "
            "first administrator with: tessera users add NAME --role administrator"
        )
