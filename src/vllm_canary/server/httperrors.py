"""aiohttp's server, with malformed HTTP answered the way the rest of the API answers.

aiohttp answers a request it cannot parse (a bad request line, an unknown method, more than
its 128 headers, a header line over its limit) with a plain-text body and logs the parser's
exception with a traceback at ERROR. The sim front (aiohttp) uses `JsonErrorsRunner` instead
of `web.AppRunner`: the same status, an OpenAI-style JSON body
`{"error": {"message", "type", "param", "code"}}`, the connection closed, and one INFO line.
Over-long heads are 431, as the gateway's own front (gateway/h1server.py) answers them.
Failures of the server itself (5xx) keep aiohttp's handling and its traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("vllm_canary.server")


def _describe(exc: BaseException | None, message: str | None) -> str:
    text = getattr(exc, "message", None) or message or str(exc or "") or "malformed request"
    return " ".join(str(text).split())[:300]  # one line, bounded (it may quote the input)


def expect_handler(max_bytes: int) -> Callable[[web.Request], Awaitable[web.Response | None]]:
    """An aiohttp route `expect_handler`: `Expect: 100-continue` with a declared body over
    `max_bytes` is a JSON 413 at once (aiohttp's default sends `100 Continue` whatever the
    size, and the client then uploads a body that will be refused)."""

    async def expect(request: web.Request) -> web.Response | None:
        if request.version != HttpVersion11:
            return None
        if request.headers.get("expect", "").lower() != "100-continue":
            body = {"error": {"message": f"unsupported Expect: {request.headers['expect']!r}",
                              "type": "invalid_request_error", "param": None,
                              "code": "expectation_failed"}}
            return web.json_response(body, status=417)
        if (request.content_length or 0) > max_bytes:
            body = {"error": {"message": f"request body exceeds {max_bytes} bytes",
                              "type": "invalid_request_error", "param": None,
                              "code": "request_too_large"}}
            resp = web.json_response(body, status=413)
            resp.force_close()
            return resp
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    return expect


class _JsonErrors(RequestHandler):
    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        too_long = isinstance(exc, LineTooLong) or "too many headers" in str(exc).lower()
        status = 431 if too_long else status
        reason = _describe(exc, message)
        log.info("rejected a request from %s: %d %s", request.remote, status, reason)
        if request.writer.output_size > 0:  # as aiohttp: nothing more can be sent
            raise ConnectionError("response already started; cannot send the error")
        code = "request_header_fields_too_large" if too_long else "bad_request"
        body = {"error": {"message": f"bad request: {reason}", "type": "invalid_request_error",
                          "param": None, "code": code}}
        resp = web.Response(status=status, body=json.dumps(body).encode(),
                            content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer malformed HTTP with JSON (see above).

    Its head limits are at least the gateway's (60 KiB of head, 100 headers, plus the few
    headers the gateway adds), so what the gateway forwards, this server reads: a request
    line or header line up to 64 KiB (aiohttp: 8 KiB), up to 128 headers (aiohttp's)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", 64 * 1024)
        kwargs.setdefault("max_field_size", 64 * 1024)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorsServer  # same object and state; only __call__ differs
        return server
