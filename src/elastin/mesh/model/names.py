"""Structured names of the mesh (pure): ``ClusterName``, a service port ``app.service.port``.

A mesh cluster is one named port of one service of one application. Its name is built here
and only here (``str(ClusterName(...))``), and read back here and only here
(``ClusterName.parse``): the mesh model names its clusters with it, HAProxy's statistics are
read back into it (``mesh.haproxy.stats``), the agent's DNS answers and the metrics carry its
three parts as labels.

The parts are the spec's names (application, service, port: lower-case letters, digits and
``-``, see ``model.spec``); a part may not contain a dot, which is what makes the joined form
unambiguous. The mesh model's identifier rules (``types.NAME``) still apply to the whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PART = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, order=True)
class ClusterName:
    """``<app>.<service>.<port>``: a service port, the name of its mesh cluster."""

    app: str
    service: str
    port: str

    def __post_init__(self) -> None:
        for kind, value in (("app", self.app), ("service", self.service), ("port", self.port)):
            if not PART.match(value):
                raise ValueError(
                    f"a mesh cluster's {kind} name {value!r} must match [A-Za-z0-9_-]+"
                )

    def __str__(self) -> str:
        return f"{self.app}.{self.service}.{self.port}"

    @classmethod
    def parse(cls, text: str) -> ClusterName:
        """``"shop.api.http"`` -> ``ClusterName("shop", "api", "http")``; ValueError when
        ``text`` is not three dot-separated names."""
        parts = text.split(".")
        if len(parts) != 3:
            raise ValueError(f"{text!r} is not a mesh cluster name (<app>.<service>.<port>)")
        return cls(*parts)

    @property
    def labels(self) -> dict[str, str]:
        """The metric labels of this service port, in the order they are exported."""
        return {"app": self.app, "service": self.service, "port": self.port}
