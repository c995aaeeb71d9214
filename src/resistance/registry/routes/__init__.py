"""HTTP routes of the registry, one module per part of the API.

Every module here parses, authorizes, calls one service or use case and
shapes the answer, nothing else; what they share (the registry, rate limits,
who is asking, error bodies) is in :mod:`resistance.registry.routes.deps`,
whose names are also importable from here.
"""

from __future__ import annotations

from resistance.registry.routes.deps import (
    ERRORS,
    AdminDep,
    OperatorDep,
    PrincipalDep,
    ProbeDep,
    RegistryDep,
    admin,
    public_rate,
)

__all__ = [
    "ERRORS",
    "AdminDep",
    "OperatorDep",
    "PrincipalDep",
    "ProbeDep",
    "RegistryDep",
    "admin",
    "public_rate",
]
