"""``tessera users ...`` and ``tessera audit ...``: accounts, tokens and the audit chain from a shell.

Every change made here is itself recorded in the audit trail (as the operating-system user).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from server.archive.archive import Archive
from server.config import Settings
from server.security.accounts import AccountError
from server.security.audit import (
    SECURITY_ALERT,
    SECURITY_ROLES_CHANGED,
    USER_SECURITY_ATTRIBUTES_CHANGED,
    AuditFilter,
    AuditRecord,
    csv_header,
    to_csv_row,
    to_json_line,
)
from server.security.groups import RULE_KINDS, GroupError
from server.security.policy import Role
from server.security.service import SecurityService


def add_commands(subparsers: Any) -> None:
    users = subparsers.add_parser("users", help="manage users, roles and API tokens")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    add = users_sub.add_parser("add", help="create a user (the first one: --role administrator)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--full-name", default="")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=run_users_add)

    lst = users_sub.add_parser("list", help="list users with their role and live sessions/tokens")
    lst.set_defaults(func=run_users_list)

    disable = users_sub.add_parser("disable", help="disable a user: sessions end, tokens stop working")
    disable.add_argument("username")
    disable.set_defaults(func=run_users_disable, disabled=True)
    enable = users_sub.add_parser("enable", help="enable a disabled user again")
    enable.add_argument("username")
    enable.set_defaults(func=run_users_disable, disabled=False)

    password = users_sub.add_parser("password", help="set a new password (ends the user's sessions)")
    password.add_argument("username")
    password.add_argument("--password-stdin", action="store_true")
    password.set_defaults(func=run_users_password)

    logout = users_sub.add_parser("logout", help="end every login session of a user")
    logout.add_argument("username")
    logout.set_defaults(func=run_users_logout)

    token = users_sub.add_parser("token", help="create an API bearer token (printed once), list or revoke")
    token.add_argument("username", nargs="?", help="the user the new token acts as")
    token.add_argument("--label", default="", help="what the token is for")
    token.add_argument("--expires-days", type=int, default=None)
    token.add_argument("--list", action="store_true", help="list tokens (of USERNAME, or all)")
    token.add_argument("--revoke", type=int, metavar="ID", help="revoke the token with this id")
    token.set_defaults(func=run_users_token)

    groups = users_sub.add_parser(
        "groups", help="limit a user to study groups (no group name: sees every study again)"
    )
    groups.add_argument("username")
    groups.add_argument("group", nargs="*", help="study group names (see tessera groups list)")
    groups.set_defaults(func=run_users_groups)

    ae_title = users_sub.add_parser(
        "ae-title", help="let a calling DICOM AE title act as a user (its role and groups apply)"
    )
    ae_title.add_argument("ae_title", nargs="?", help="the calling AE title")
    ae_title.add_argument("username", nargs="?", help="the account it acts as")
    ae_title.add_argument("--remove", action="store_true", help="forget the AE title (it is then refused)")
    ae_title.add_argument("--list", action="store_true", help="list AE titles and their accounts")
    ae_title.set_defaults(func=run_users_ae_title)

    study_groups = subparsers.add_parser(
        "groups", help="define study groups (access limited to their studies)"
    )
    groups_sub = study_groups.add_subparsers(dest="groups_command", required=True, metavar="ACTION")
    group_set = groups_sub.add_parser(
        "set",
        help="create or replace a group",
        description=(
            "Rules (all named ones must match; any value of one will do): --modality CT, --sop-class UID, "
            "--institution NAME, --department NAME, --issuer ISSUER, --study UID; each may be repeated."
        ),
    )
    group_set.add_argument("name")
    group_set.add_argument("--description", default="")
    for flag, key in (
        ("--modality", "modalities"),
        ("--sop-class", "sop_classes"),
        ("--institution", "institutions"),
        ("--department", "departments"),
        ("--issuer", "issuers"),
        ("--study", "studies"),
    ):
        group_set.add_argument(flag, dest=key, action="append", default=[])
    group_set.set_defaults(func=run_groups_set)
    group_list = groups_sub.add_parser("list", help="list groups with their rules and members")
    group_list.set_defaults(func=run_groups_list)
    group_remove = groups_sub.add_parser("remove", help="remove a group (its users lose it)")
    group_remove.add_argument("name")
    group_remove.set_defaults(func=run_groups_remove)

    audit = subparsers.add_parser("audit", help="verify or export the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check the hash chain of the whole audit trail")
    verify.set_defaults(func=run_audit_verify)
    export = audit_sub.add_parser("export", help="write the audit trail as JSON lines or CSV")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", default="-", help="file (default: standard output)")
    export.set_defaults(func=run_audit_export)


def _service(settings: Settings) -> SecurityService:
    Archive(settings).close()  # brings the schema up to date
    return SecurityService(settings)


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _record(service: SecurityService, event_type: str, detail: str, outcome: int = 0) -> None:
    service.record(
        AuditRecord(
            SECURITY_ALERT,
            "E",
            event_type=event_type,
            outcome=outcome,
            outcome_detail=detail,
            username=_operator(),
            auth_method="cli",
            client_address="local",
            resource="tessera " + " ".join(sys.argv[1:3]),
        )
    )


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise AccountError("the two passwords differ")
    return first


def _fail(exc: Exception) -> int:
    print(f"tessera users: {exc}", file=sys.stderr)
    return 1


def run_users_add(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        service.accounts.add_user(
            args.username, Role(args.role), _read_password(args.password_stdin), args.full_name
        )
        _record(service, SECURITY_ROLES_CHANGED, f"user {args.username} added with role {args.role}")
    except AccountError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"user {args.username} ({args.role}) created")
    return 0


def run_users_groups(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        given = service.groups.set_user_groups(args.username, args.group)
        _record(
            service, SECURITY_ROLES_CHANGED, f"study groups of {args.username} set to [{', '.join(given)}]"
        )
    except (AccountError, GroupError) as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"{args.username}: " + (", ".join(given) if given else "every study (no group limit)"))
    return 0


def run_users_ae_title(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        if args.list or not args.ae_title:
            for title, username in service.accounts.ae_titles().items():
                print(f"{title:<16} {username}")
            return 0
        if args.remove:
            service.accounts.unmap_ae_title(args.ae_title)
            _record(service, SECURITY_ROLES_CHANGED, f"AE title {args.ae_title} removed")
            print(f"AE title {args.ae_title} removed: its associations are now rejected")
            return 0
        if not args.username:
            return _fail(AccountError("name the account the AE title acts as"))
        service.accounts.map_ae_title(args.ae_title, args.username)
        _record(service, SECURITY_ROLES_CHANGED, f"AE title {args.ae_title} acts as {args.username}")
        print(f"AE title {args.ae_title} acts as {args.username}")
        return 0
    except AccountError as exc:
        return _fail(exc)
    finally:
        service.close()


def run_groups_set(args: argparse.Namespace, settings: Settings) -> int:
    rules = {key: getattr(args, key) for key in RULE_KINDS if getattr(args, key)}
    service = _service(settings)
    try:
        info = service.groups.save_group(args.name, rules, args.description)
        _record(service, SECURITY_ROLES_CHANGED, f"study group {info.name} set to {info.rules}")
    except GroupError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"study group {info.name}: {info.rules}")
    return 0


def run_groups_list(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        groups = service.groups.list_groups()
    finally:
        service.close()
    for group in groups:
        rules = "; ".join(f"{k}={','.join(v)}" for k, v in group.rules.items())
        print(f"{group.name:<24} {rules}  members: {', '.join(group.members) or '-'}")
    return 0


def run_groups_remove(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        service.groups.delete_group(args.name)
        _record(service, SECURITY_ROLES_CHANGED, f"study group {args.name} removed")
    except GroupError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"study group {args.name} removed")
    return 0


def run_users_list(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        users = service.accounts.list_users()
    finally:
        service.close()
    print(f"{'USER':<24} {'ROLE':<14} {'STATE':<9} {'SESSIONS':>8} {'TOKENS':>6}  CREATED")
    for u in users:
        state = "disabled" if u.disabled else "active"
        created = u.created_at.strftime("%Y-%m-%d %H:%MZ")
        print(
            f"{u.username:<24} {u.role.value:<14} {state:<9} {u.active_sessions:>8} {u.active_tokens:>6}  {created}"
        )
    return 0


def run_users_disable(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        service.accounts.set_disabled(args.username, args.disabled)
        verb = "disabled" if args.disabled else "enabled"
        _record(service, USER_SECURITY_ATTRIBUTES_CHANGED, f"user {args.username} {verb}")
    except AccountError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"user {args.username} {verb}")
    return 0


def run_users_password(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        service.accounts.set_password(args.username, _read_password(args.password_stdin))
        _record(service, USER_SECURITY_ATTRIBUTES_CHANGED, f"password of {args.username} changed")
    except AccountError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"password of {args.username} changed; their sessions have ended")
    return 0


def run_users_logout(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        ended = service.accounts.revoke_sessions(args.username)
        _record(service, USER_SECURITY_ATTRIBUTES_CHANGED, f"{ended} sessions of {args.username} revoked")
    except AccountError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(f"{ended} sessions of {args.username} ended")
    return 0


def run_users_token(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        if args.list:
            print(f"{'ID':>5} {'USER':<20} {'STATE':<8} {'EXPIRES':<17} {'LAST USED':<17} LABEL")
            for t in service.accounts.list_tokens(args.username):
                expires = t.expires_at.strftime("%Y-%m-%d %H:%MZ") if t.expires_at else "never"
                used = t.last_used_at.strftime("%Y-%m-%d %H:%MZ") if t.last_used_at else "-"
                state = "revoked" if t.revoked else "active"
                print(f"{t.id:>5} {t.username:<20} {state:<8} {expires:<17} {used:<17} {t.label}")
            return 0
        if args.revoke is not None:
            owner = service.accounts.revoke_token(args.revoke)
            _record(service, USER_SECURITY_ATTRIBUTES_CHANGED, f"API token {args.revoke} of {owner} revoked")
            print(f"token {args.revoke} of {owner} revoked")
            return 0
        if not args.username:
            return _fail(AccountError("give the USERNAME the new token acts as (or --list / --revoke ID)"))
        token_id, secret = service.accounts.create_token(args.username, args.label, args.expires_days)
        _record(
            service, USER_SECURITY_ATTRIBUTES_CHANGED, f"API token {token_id} created for {args.username}"
        )
    except AccountError as exc:
        return _fail(exc)
    finally:
        service.close()
    print(
        f"token {token_id} for {args.username} (shown once; send it as 'Authorization: Bearer <token>'):",
        file=sys.stderr,
    )
    print(secret)
    return 0


def run_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        report = service.audit.verify()
    finally:
        service.close()
    if report.ok:
        print(f"audit trail intact: {report.records} records; head {report.head_hash}")
        return 0
    print(
        f"audit trail BROKEN at record {report.first_bad_seq}: {report.problem} "
        f"({report.records} records verified before it)",
        file=sys.stderr,
    )
    return 1


def run_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    try:
        if args.format == "csv":
            out.write(csv_header())
        for document in service.audit.iterate(AuditFilter()):
            out.write(to_csv_row(document) if args.format == "csv" else to_json_line(document))
    finally:
        if out is not sys.stdout:
            out.close()
        service.close()
    return 0
