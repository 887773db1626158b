"""Users, roles, login sessions, API tokens and the tamper-evident audit trail (docs/security.md)."""
