"""A lean HTTP/1.1 server front for the proxy port: an asyncio Protocol around httptools.

aiohttp's server side was most of the gateway's CPU per request; a proxy needs none of its
routing, middlewares or request objects. This one parses with httptools (the C parser uvicorn
uses) and hands each complete request to one handler at a time per connection, so pipelined
requests are answered in order. Bodies are read whole (Content-Length or chunked) up to a size
limit; answers are written as they come (whole, Content-Length or chunked) with back-pressure;
a client that goes away cancels its handler's task.

Limits, as Envoy's HTTP connection manager has them, each answered by the front itself with an
OpenAI-style JSON error, one INFO log line and a closed connection (never a traceback):
- a request head over MAX_HEAD (60 KiB, Envoy's `max_request_headers_kb`) or with more than
  MAX_HEADERS (100, Envoy's `max_headers_count`) headers: 431;
- malformed HTTP (a bad request line, an unknown method, bad framing): 400;
- a head not complete HEAD_TIMEOUT after its first byte, or a body that stops arriving for
  BODY_IDLE_TIMEOUT (slowloris): 408, as Envoy's `request_headers_timeout` answers;
- a declared body over the limit: the handler answers at once (413), without waiting for the
  body or sending `100 Continue`.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate

import httptools

log = logging.getLogger("vllm_canary.gateway")

MAX_PIPELINED = 16  # parsed requests waiting behind the active one before reading pauses
MAX_HEAD = 60 * 1024  # request line plus headers (Envoy's max_request_headers_kb default)
MAX_HEADERS = 100  # Envoy's max_headers_count default
HEAD_TIMEOUT = 30.0  # seconds from a request's first byte to the end of its head
BODY_IDLE_TIMEOUT = 30.0  # seconds a request body may go without a byte
KEEPALIVE_S = 75.0  # an idle keep-alive connection is closed after this long (aiohttp's default)
REASONS = {int(s): s.phrase for s in http.HTTPStatus}
JSON_HEADERS = {"content-type": "application/json"}


def error_body(status: int, message: str, code: str) -> bytes:
    """The OpenAI-style error body the gateway answers with itself."""
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code}}).encode()


class _Date:
    """The Date header, formatted once a second."""

    second, text = 0, ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.text = second, formatdate(second, usegmt=True)
        return cls.text


class Incoming:
    """One request (method, target, headers, body) and the way to answer it."""

    __slots__ = ("body", "chunked", "conn", "done", "head_only", "headers", "host",
                 "keep_alive", "lower", "method", "path", "query_string", "remote", "started",
                 "target", "too_large", "version")
    scheme = "http"

    def __init__(self, conn: _Conn, method: str, target: str, version: str,
                 headers: list[tuple[str, str]], keep_alive: bool) -> None:
        self.conn, self.method, self.target, self.version = conn, method, target, version
        self.headers, self.keep_alive = headers, keep_alive
        self.lower = {k.lower(): v for k, v in headers}  # the last of repeated names wins
        self.body, self.too_large, self.started, self.done, self.chunked = b"", False, \
            False, False, False
        self.head_only = method == "HEAD"
        self.remote = conn.remote
        self.host = self.lower.get("host") or conn.local
        path, _, self.query_string = target.partition("?")
        if not path.startswith("/"):  # absolute form: http://host/path?query
            url = httptools.parse_url(target.encode("latin-1"))
            path = (url.path or b"/").decode("latin-1")
            self.query_string = (url.query or b"").decode("latin-1")
            self.target = path + ("?" + self.query_string if self.query_string else "")
        self.path = urllib.parse.unquote(path) if "%" in path else path

    @property
    def path_qs(self) -> str:
        return self.target

    def query(self) -> dict[str, str]:
        """Query parameters, the first value of each (as aiohttp's `request.query[k]`)."""
        out: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(self.query_string, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    def _head(self, status: int, headers: Mapping[str, str] | None, framing: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"]
        if headers:
            lines += [f"{k}: {v}\r\n" for k, v in headers.items()]
            if "date" not in headers:
                lines.append(f"date: {_Date.now()}\r\n")
        else:
            lines.append(f"date: {_Date.now()}\r\n")
        lines.append(framing)
        if not self.keep_alive:
            lines.append("connection: close\r\n")
        elif self.version == "1.0":
            lines.append("connection: keep-alive\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            return text.encode("utf-8")

    def respond(self, status: int, headers: Mapping[str, str] | None, body: bytes,
                length: int | None = None) -> None:
        """The whole answer in one write (`length` overrides Content-Length for HEAD)."""
        self.started = self.done = True
        size = len(body) if length is None else length
        head = self._head(status, headers, f"content-length: {size}\r\n")
        self.conn.write(head if self.head_only else head + body)

    def start(self, status: int, headers: Mapping[str, str] | None,
              length: int | None = None) -> None:
        """Send the status line and headers of an answer whose body follows in `write`s."""
        self.started = True
        if length is not None:
            framing = f"content-length: {length}\r\n"
        elif self.head_only or status in (204, 304):
            framing = ""
        elif self.version == "1.1":
            self.chunked, framing = True, "transfer-encoding: chunked\r\n"
        else:  # an HTTP/1.0 client: the end of the answer is the end of the connection
            self.keep_alive, framing = False, ""
        self.conn.write(self._head(status, headers, framing))

    async def write(self, data: bytes) -> None:
        """One body piece, on the wire now; waits while the client's socket is full."""
        if self.head_only or not data:
            return
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        conn = self.conn
        conn.write(data)
        if conn.drain is not None:
            await conn.drain

    def write_nowait(self, data: bytes) -> bool:
        """One body piece, on the wire now, without waiting: False when the client's socket
        is full (wait with `write` before the next). Raises ConnectionResetError when the
        client has gone."""
        if self.head_only or not data:
            return True
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.conn.write(data)
        return self.conn.drain is None

    def end(self, last: bytes = b"") -> None:
        """A clean end of the answer (the last chunk when chunked), after `last`, the final
        body piece, in the same write (one system call fewer per answer)."""
        if not self.head_only:
            if self.chunked:
                self.conn.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last) if last
                                else b"0\r\n\r\n")
            elif last:
                self.conn.write(last)
        self.done = True

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated answer, not a clean end."""
        self.keep_alive = False
        self.conn.close()


Handler = Callable[[Incoming], Awaitable[None]]


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing a request the front refuses."""


class _Conn(asyncio.Protocol):
    """One client connection: parser callbacks, the request queue and the write side."""

    def __init__(self, handler: Handler, max_body: int, conns: set[_Conn],
                 error_headers: Mapping[str, str] = JSON_HEADERS) -> None:
        self.handler, self.max_body, self.conns = handler, max_body, conns
        self.error_headers = error_headers  # of the answers this front gives itself
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = self.local = "127.0.0.1"
        self.queue: deque[Incoming] = deque()
        self.task: asyncio.Task[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.closed = self.ignore = self.reading_paused = self.in_head = self.in_body = False
        self.head_bytes = self.queued_bytes = self.header_count = 0
        self.last_active = self.head_started = time.monotonic()
        self.rejection: tuple[int, str, str] | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.incoming: Incoming | None = None

    # -- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conns.add(self)
        peer, sock = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if peer:
            self.remote = str(peer[0])
        if sock:
            self.local = f"{sock[0]}:{sock[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conns.discard(self)
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()  # the client went away: stop its upstream request too
        if self.drain is not None and not self.drain.done():
            self.drain.set_exception(ConnectionResetError("client closed the connection"))
            self.drain.exception()  # retrieved here, so an unawaited one is not logged

    def pause_writing(self) -> None:
        if self.drain is None:
            self.drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.ignore:
            return
        self.last_active = time.monotonic()
        if self.in_head:  # a head spread over reads: bound it before the parser buffers more
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self.ignore = True
                return self._reject(431, f"request line and headers exceed {MAX_HEAD} bytes",
                                    "request_header_fields_too_large")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.ignore = True  # no protocol switch: answer what was asked, then close
            for inc in self.queue:
                inc.keep_alive = False
            if self.incoming is not None:
                self.incoming.keep_alive = False
        except (httptools.HttpParserError, _Rejected) as exc:
            self.ignore = True
            if self.rejection is not None:
                self._reject(*self.rejection)
            else:
                self._bad_request(str(exc) or "malformed HTTP request")

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("client closed the connection")
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- parser callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.parts, self.size = b"", [], [], 0
        self.in_head, self.head_bytes, self.header_count = True, 0, 0
        self.head_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > MAX_HEADERS:
            self.rejection = (431, f"more than {MAX_HEADERS} request headers",
                              "request_header_fields_too_large")
            raise _Rejected
        self._count_head(len(name) + len(value) + 4)
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD:
            self.rejection = (431, f"request line and headers exceed {MAX_HEAD} bytes",
                              "request_header_fields_too_large")
            raise _Rejected

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.in_body = True  # until on_message_complete (at once when there is no body)
        if self.ignore:  # pipelined behind a request that ends the connection
            return
        parser = self.parser
        inc = self.incoming = Incoming(
            self, parser.get_method().decode("latin-1"), self.url.decode("latin-1"),
            parser.get_http_version(), self.headers, parser.should_keep_alive())
        length = inc.lower.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.max_body:
            self._too_large(inc)
        elif inc.lower.get("expect", "").lower() == "100-continue" and self.task is None \
                and not self.closed:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        inc = self.incoming
        if inc is None or inc.too_large:
            return
        self.size += len(body)
        if self.size > self.max_body:
            self._too_large(inc)
        else:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        inc, self.incoming = self.incoming, None
        if inc is None or inc.too_large:
            return
        parts = self.parts
        inc.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._dispatch(inc)

    # -- requests in order
    def _too_large(self, inc: Incoming) -> None:
        """Answered without the rest of its body, so the connection closes after it."""
        inc.too_large, inc.keep_alive, self.ignore = True, False, True
        self.parts = []
        self._dispatch(inc)

    def _bad_request(self, reason: str) -> None:
        self._reject(400, f"bad request: {reason}", "bad_request")

    def _reject(self, status: int, message: str, code: str) -> None:
        """Answer `status` with a JSON error and close (after the requests already parsed)."""
        self.ignore = True
        log.info("rejected a request from %s: %d %s", self.remote, status, message)
        inc = Incoming(self, "GET", "/", "1.1", [], False)
        if self.task is None:
            if not self.closed:
                inc.respond(status, self.error_headers, error_body(status, message, code))
            self.close()
        else:  # answer the requests already parsed, then close
            self.queue.clear()

    def check_timeouts(self, now: float) -> None:
        """Slowloris: a head or body that arrives too slowly is a 408 (called every second)."""
        if self.ignore or self.closed or self.reading_paused:
            return
        if self.in_head and now - self.head_started > HEAD_TIMEOUT:
            self._reject(408, f"request headers not received within {HEAD_TIMEOUT:g}s",
                         "request_timeout")
        elif self.in_body and self.incoming is not None and \
                now - self.last_active > BODY_IDLE_TIMEOUT:
            self._reject(408, f"request body stalled for {BODY_IDLE_TIMEOUT:g}s",
                         "request_timeout")

    def _dispatch(self, inc: Incoming) -> None:
        if self.task is not None:
            self.queue.append(inc)
            self.queued_bytes += len(inc.body)
            if (len(self.queue) >= MAX_PIPELINED or self.queued_bytes > self.max_body) \
                    and self.transport is not None:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        self.task = asyncio.get_running_loop().create_task(self._run(inc))

    async def _run(self, inc: Incoming) -> None:
        while True:
            try:
                await self.handler(inc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gateway handler failed on %s %s", inc.method, inc.target)
                if not inc.started and not self.closed:
                    inc.keep_alive = False
                    inc.respond(500, self.error_headers, error_body(500, "internal gateway error",
                                                              "internal"))
                inc.done = False
            if self.closed:
                break
            if not (inc.done and inc.keep_alive):
                self.close()
                break
            if not self.queue:
                if self.ignore:  # the rest of the input was unusable
                    self.close()
                break
            inc = self.queue.popleft()
            self.queued_bytes -= len(inc.body)
            if self.reading_paused and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
        self.task = None


class H1Server:
    """Listens on host:port; each request goes to `handler`, which answers through it."""

    def __init__(self, handler: Handler, max_body: int,
                 error_headers: Mapping[str, str] = JSON_HEADERS) -> None:
        """`error_headers`: of the errors the server answers itself (malformed HTTP, 431, 408,
        500), e.g. the model server's `x-model-version` beside the JSON content type."""
        self.handler, self.max_body, self.error_headers = handler, max_body, error_headers
        self.conns: set[_Conn] = set()
        self.server: asyncio.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int, backlog: int = 1024) -> H1Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Conn(self.handler, self.max_body, self.conns, self.error_headers), host, port,
            reuse_address=True, backlog=backlog)
        self.port = int(self.server.sockets[0].getsockname()[1])
        self._reaper = asyncio.create_task(self._reap_idle())
        return self

    async def _reap_idle(self) -> None:
        """Once a second: 408 for heads and bodies that arrive too slowly, and close
        keep-alive connections idle for KEEPALIVE_S (one sweep for all of them)."""
        while self.server is not None:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            cutoff = now - KEEPALIVE_S
            for conn in list(self.conns):
                if conn.in_head or conn.in_body:
                    conn.check_timeouts(now)
                elif conn.task is None and conn.last_active < cutoff:
                    conn.close()

    async def close(self) -> None:
        """Stop listening and drop every connection (their handlers are cancelled)."""
        if self._reaper is not None:
            self._reaper.cancel()
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.conns):
            conn.abort()  # not close(): that would wait for a stalled client to read
        tasks = [c.task for c in self.conns if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self.conns.clear()
