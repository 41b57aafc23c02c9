"""Who may do what through the admin API and the dashboard: four roles over a handful of permissions.

Each route names one permission; each role is a set of permissions. Keeping the matrix here, as
data, makes it the single place to read (and test) what a token of a given role can reach.

| permission        | admin | operator | factory | auditor | gateway |
|-------------------|:-----:|:--------:|:-------:|:-------:|:-------:|
| cas:read          |   x   |    x     |    x    |    x    |         |
| devices:read      |   x   |    x     |    x    |    x    |         |
| devices:write     |   x   |    x     |         |         |         |
| certificates:read |   x   |    x     |    x    |    x    |         |
| registry:read     |   x   |    x     |         |    x    |         |
| registry:write    |   x   |    x     |         |         |         |
| audit:read        |   x   |          |         |    x    |         |
| tokens:read       |   x   |          |         |    x    |         |
| tokens:write      |   x   |          |         |         |         |
| sightings:write   |   x   |          |         |         |    x    |

`factory` is deliberately narrow: a production line needs the trust anchors it provisions against
and to read back the devices and IDevIDs it made. The store does not record which token made a
device (the line issues through the authority, not the API), so "its devices" cannot be told apart
from others; factory tokens therefore read devices and certificates but change nothing.
`gateway` is narrower still: an edge gateway reports the certificates its sessions presented
(for `devid health`'s revoked-still-connected check) and reads nothing.
`registry` covers manufacturers, enrollment groups, individual enrollments and hubs.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    FACTORY = "factory"
    AUDITOR = "auditor"
    GATEWAY = "gateway"


class Permission(StrEnum):
    CAS_READ = "cas:read"
    DEVICES_READ = "devices:read"
    DEVICES_WRITE = "devices:write"
    CERTIFICATES_READ = "certificates:read"
    REGISTRY_READ = "registry:read"
    REGISTRY_WRITE = "registry:write"
    AUDIT_READ = "audit:read"
    TOKENS_READ = "tokens:read"
    TOKENS_WRITE = "tokens:write"
    SIGHTINGS_WRITE = "sightings:write"


P = Permission
MATRIX: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {P.CAS_READ, P.DEVICES_READ, P.DEVICES_WRITE, P.CERTIFICATES_READ, P.REGISTRY_READ, P.REGISTRY_WRITE}
    ),
    Role.FACTORY: frozenset({P.CAS_READ, P.DEVICES_READ, P.CERTIFICATES_READ}),
    Role.AUDITOR: frozenset(p for p in Permission if p.value.endswith(":read")),
    Role.GATEWAY: frozenset({P.SIGHTINGS_WRITE}),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in MATRIX[role]


def roles_with(permission: Permission) -> list[Role]:
    """The roles holding `permission`, for the OpenAPI description of each route."""
    return [role for role in Role if permission in MATRIX[role]]
