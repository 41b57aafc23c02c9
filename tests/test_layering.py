"""Dependencies point one way: each package (or top-level module) of devid imports only from
layers below its own, so no two packages import each other, directly or round a cycle.

Every import counts, also one inside a function or under TYPE_CHECKING. A new package gets a
layer here; a new dependency that points up means the code is in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import devid

#: Layer of each package and top-level module under `devid`: imports go to lower numbers only.
LAYERS = {
    "errors": 0,
    "clock": 1,
    "fsutil": 1,
    "config": 2,
    "pki": 2,
    "keys": 3,
    "store": 3,
    "authority": 4,
    "registry": 5,
    "factory": 5,
    # CRLs, OCSP responses, the revocation filter, allowlists: built from the store, signed by the authority.
    "revocation": 5,
    # The handlers' HTTP toolkit (peer certificate, error mapping).
    "web": 6,
    # Protocol layers: thin handlers over the authority.
    "est": 7,
    "scep": 7,
    # EST over secure CoAP (RFC 9148), beside EST over HTTPS.
    "coap": 7,
    "tokens": 7,
    "api": 7,
    # Status publication over HTTP (OCSP, CRL, filter, allowlist) and the enforcing edge gateway.
    "publish": 7,
    "gateway": 7,
    "ui": 7,
    "device": 8,
    # Where the application is assembled and run.
    "server": 8,
    "sim": 9,
    "bench": 10,
    # The demo's HTML report (reads the store through the dashboard's queries and charts).
    "report": 10,
    "cli": 11,
}
SRC = Path(devid.__file__).parent


def import_edges() -> dict[str, set[str]]:
    """Which units each unit of `devid` imports (excluding itself)."""
    edges: dict[str, set[str]] = {}
    for file in SRC.rglob("*.py"):
        unit = file.relative_to(SRC).parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "devid" and len(parts) > 1 and parts[1] != unit:
                    edges.setdefault(unit, set()).add(parts[1])
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        path.append(unit)
        for dep in sorted(edges.get(unit, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[unit] = 2
        return None

    for unit in sorted(edges):
        if unit not in state and (found := visit(unit)) is not None:
            return found
    return None


def test_every_package_has_a_layer() -> None:
    units = {
        p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert units - {"__init__"} <= set(LAYERS), (
        f"give these a layer: {sorted(units - set(LAYERS) - {'__init__'})}"
    )


def test_imports_point_down_and_form_no_cycle() -> None:
    edges = import_edges()
    upward = sorted(
        f"{unit} ({LAYERS[unit]}) imports {dep} ({LAYERS[dep]})"
        for unit, deps in edges.items()
        for dep in deps
        if LAYERS[dep] >= LAYERS[unit]
    )
    assert not upward, upward
    assert cycle(edges) is None, " -> ".join(cycle(edges) or [])


def test_cycle_finder_finds_one() -> None:
    assert cycle({"est": {"web"}, "web": {"registry", "est"}, "registry": set()}) == ["est", "web", "est"]
    assert cycle({"est": {"web"}, "web": {"registry"}}) is None
