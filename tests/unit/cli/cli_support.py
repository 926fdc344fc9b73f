"""A scripted Elastin API for the CLI's unit tests, served through ``httpx.MockTransport``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from elastin.client.http import Client

URL = "http://elastin.test"


class FakeApi:
    """Answers per (method, path), in order, the last one repeated; records every request.
    An answer is JSON data, an ``httpx.Response``, or an exception to raise (a transport
    error stands for a server that cannot be reached)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[Any]] = {}
        self.requests: list[httpx.Request] = []
        self.on_request: Callable[[httpx.Request], None] = lambda _: None

    def on(self, method: str, path: str, *answers: Any) -> None:
        self.answers[(method, path)] = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.on_request(request)
        queue = self.answers.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"message": f"no route {request.url.path}"})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def client(self) -> Client:
        return Client(URL, "tok", transport=httpx.MockTransport(self))
