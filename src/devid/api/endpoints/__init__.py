"""Every admin API resource's routes, in the order the OpenAPI document lists them.

A new resource is a module exporting `ROUTES` and one line here.
"""

from __future__ import annotations

from devid.api.endpoints import (
    api_tokens,
    audit_events,
    cas,
    certificates,
    devices,
    enrollments,
    gateways,
    hubs,
    manufacturers,
    revocations,
)
from devid.api.routes import Route

ROUTES: list[Route] = [
    *cas.ROUTES,
    *devices.ROUTES,
    *certificates.ROUTES,
    *revocations.ROUTES,
    *manufacturers.ROUTES,
    *enrollments.ROUTES,
    *hubs.ROUTES,
    *gateways.ROUTES,
    *audit_events.ROUTES,
    *api_tokens.ROUTES,
]
