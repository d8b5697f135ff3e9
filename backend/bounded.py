"""Reading what a lab or a peer sends, never more than we mean to.

A lab decides what its readiness probe answers and what its ``lab.json``
holds; a misbehaving or hostile one could send an endless body. Every such
read streams the response and stops at a byte limit, and asks for the body
unencoded (``Accept-Encoding: identity``), so a small compressed answer cannot
grow into a large one in memory.

The other way round, every service refuses a request body over 1 MiB
(:class:`BodyLimit`) before it reads it whole.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.exceptions import HTTPException as StarletteHTTPException

IDENTITY = {"Accept-Encoding": "identity"}
# told of each request a client made: the request, its seconds, its error or None
Observer = Callable[[httpx.Request, float, "str | None"], None]

# requests of one client let into httpx's connection pool at once (below its 100
# connections, so no request waits inside the pool)
REQUESTS_AT_ONCE = 32


class TakingTurns(httpx.AsyncBaseTransport):
    """httpx's transport, with at most ``limit`` requests in it at once; the others wait
    here for their turn, in order.

    httpx's pool takes time that grows with the square of the requests waiting in it:
    a backend that re-attached 1000 labs sent 1000 readiness probes at once, every one
    ran into its timeout and the retries kept the pool full (no lab re-attached in a
    minute). Waiting here costs nothing per waiter; the timeouts of a request count
    from its turn. A streamed response holds its connection until it is closed, not
    its turn."""

    def __init__(
        self, limit: int = REQUESTS_AT_ONCE, observe: Observer | None = None, **transport: Any
    ):
        self._inner = httpx.AsyncHTTPTransport(**transport)
        self._turns = asyncio.Semaphore(limit)
        self._observe = observe

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self._turns:
            if self._observe is None:
                return await self._inner.handle_async_request(request)
            began = time.perf_counter()
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError:
                self._observe(request, time.perf_counter() - began, "transport")
                raise
            error = "status_5xx" if response.status_code >= 500 else None
            self._observe(request, time.perf_counter() - began, error)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def turn_taking_client(
    *, verify: Any = True, observe: Observer | None = None, **client: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (no proxies from the environment) whose requests take
    turns (:class:`TakingTurns`); ``verify`` as httpx takes it; ``observe`` is told of
    each request's seconds (from its turn to its answer's head) and its error, if any
    (``transport``, ``status_5xx``)."""
    return httpx.AsyncClient(
        transport=TakingTurns(verify=verify, observe=observe), trust_env=False, **client
    )


async def read_at_most(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of a streamed response's body, and whether it had more
    (the rest is not read: the caller closes the response)."""
    if resp.is_stream_consumed:  # read already (a test's mock transport does)
        return resp.content[:limit], len(resp.content) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


# the largest request body a service takes (its answer to more is 413)
MAX_BODY = 1024 * 1024


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(
            413, f"The request body is over {limit // 1024} KiB, the most this service takes."
        )


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413, before
    it is read whole: at once when its Content-Length says so, else as soon as the
    bytes received pass the limit (a chunked body). The answer is
    ``{key: "<sentence>"}`` (``errorMessage`` for a UNICORE double)."""

    def __init__(self, app: Any, limit: int = MAX_BODY, key: str = "detail"):
        self.app = app
        self.limit = limit
        self.key = key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.strip().isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({self.key: BodyTooLarge(self.limit).detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
