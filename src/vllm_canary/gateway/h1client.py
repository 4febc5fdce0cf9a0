"""A lean pooled HTTP/1.1 client for the proxy's hot path.

aiohttp's client costs ~280 µs of CPU per request here; a proxy needs much less of it (no
cookies, redirects, decompression or URL handling), so this speaks HTTP/1.1 on an asyncio
Protocol directly: keep-alive pools per upstream, Content-Length/chunked/close framing, body
chunks handed over as they arrive (SSE stays unbuffered), back-pressure on slow readers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping

from multidict import CIMultiDict

HIGH_WATER = 1 << 20
MAX_HEAD = 60 * 1024  # an answer's status line and headers (Envoy's max_response_headers_kb)
MAX_HEADERS = 100  # Envoy's max_headers_count


class UpstreamError(Exception):
    """The upstream did not give a complete answer."""


class ConnectFailure(UpstreamError):
    """No connection could be made (Envoy: UF)."""


class Reset(UpstreamError):
    """The connection broke (Envoy: UC)."""


class ProtocolError(Reset):
    """The answer is not HTTP/1.1, or its head is over MAX_HEAD bytes or MAX_HEADERS headers
    (Envoy: 502, flag UPE). A Reset, so callers that only know Reset treat it as one."""


class Silent(UpstreamError):
    """The upstream sent nothing for too long (`Response.expire`)."""


class _Conn(asyncio.Protocol):
    """One connection and the parser for the answer it is reading."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buf = bytearray()
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.waiter: asyncio.Future[None] | None = None
        self.head: asyncio.Future[tuple[int, CIMultiDict[str]]] | None = None
        self.mode = "head"  # head, length, chunked, close, done
        self.remaining = 0
        self.error: Exception | None = None
        self.paused = False
        self.keep_alive = True
        self.need_crlf = False
        self.head_only = False
        self.last = time.monotonic()  # when the upstream last sent bytes (Response.idle_for)
        self.reused = False  # taken from the pool's idle list
        # Body pieces go straight to the sink while it takes them (Response.set_sink), with no
        # wake-up of the reader per piece; it returns False when it cannot take more now.
        self.sink: Callable[[bytes], bool] | None = None
        self.batch: list[bytes] | None = None  # pieces of one read, for one sink call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.mode == "close":
            self.mode = "done"
        elif self.mode != "done" and self.error is None:
            self.error = Reset("upstream closed the connection")
        if self.head is not None and not self.head.done():
            self.head.set_exception(Reset("upstream closed the connection before answering"))
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _wake_reader(self) -> None:
        """Wake the reader when it has something to do: a piece queued (no sink), the end, or
        an error."""
        if self.sink is None or self.mode == "done" or self.error is not None:
            self._wake()

    def start(self, head_only: bool) -> asyncio.Future[tuple[int, CIMultiDict[str]]]:
        self.head = asyncio.get_running_loop().create_future()
        self.head_only, self.mode, self.need_crlf, self.error = head_only, "head", False, None
        self.buf.clear()
        self.sink = None
        self.last = time.monotonic()
        return self.head

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.mode == "chunked" and self.remaining < 0 and not self.buf and \
                not self.need_crlf and self._one_chunk(data):
            return
        self.buf += data
        if self.sink is not None:
            self.batch = []  # what this read completes goes to the sink at once (one write)
        try:
            try:
                self._parse()
            finally:
                batch, self.batch = self.batch, None
            if batch:
                self._emit(batch[0] if len(batch) == 1 else b"".join(batch))
        except (ProtocolError, ValueError, IndexError) as exc:
            self.error = exc if isinstance(exc, ProtocolError) else \
                ProtocolError("upstream sent a malformed answer")
            if self.head is not None and not self.head.done():
                self.head.set_exception(self.error)
            if self.transport is not None:
                self.transport.close()
        self._wake_reader()
        if self.queued > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _one_chunk(self, data: bytes) -> bool:
        """The common case of a streamed answer, fast: a read that is exactly one whole chunk
        (`<hex size>\\r\\n<data>\\r\\n`, one SSE event as a server writes it), taken without
        the buffer. False (nothing taken) for anything else, which `_parse` then does."""
        end = data.find(b"\r\n", 0, 18)
        if end <= 0 or not data.endswith(b"\r\n"):
            return False
        head = data[:end]
        if not head.isalnum():  # chunk extensions (";") or junk: the general parser
            return False
        try:
            size = int(head, 16)
        except ValueError:
            return False
        if size == 0 or len(data) != end + 4 + size:
            return False
        self._emit(data[end + 2:-2])
        self._wake_reader()
        if self.queued > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        return True

    def _emit(self, data: bytes | bytearray) -> None:
        if not data:
            return
        sink = self.sink
        if sink is not None and not self.chunks:
            if self.batch is not None:
                self.batch.append(bytes(data))
                return
            try:
                if sink(bytes(data)):
                    return
            except Exception as exc:  # e.g. the client went away: the reader raises it
                self.error = exc
            self.sink = None  # full (the piece was taken) or failed: the reader takes over
            self._wake()
            return
        self.chunks.append(bytes(data))
        self.queued += len(data)

    def _parse(self) -> None:
        while self.buf:
            if self.mode == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0 and len(self.buf) <= MAX_HEAD:
                    return
                if end < 0 or end > MAX_HEAD:  # what the gateway's front takes from a client
                    raise ProtocolError(f"upstream answer head over {MAX_HEAD} bytes")
                lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                if len(lines) > MAX_HEADERS + 1:
                    raise ProtocolError(f"upstream answer with over {MAX_HEADERS} headers")
                del self.buf[:end + 4]
                status = int(lines[0].split(" ", 2)[1])
                if 100 <= status < 200:
                    continue  # 100 Continue and friends precede the real answer
                headers: CIMultiDict[str] = CIMultiDict()
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers.add(name.strip(), value.strip())
                if "close" in headers.get("connection", "").lower():
                    self.keep_alive = False
                if self.head_only or status in (204, 304):
                    self.mode = "done"
                elif "chunked" in headers.get("transfer-encoding", "").lower():
                    self.mode, self.remaining = "chunked", -1
                elif "content-length" in headers:
                    self.remaining = int(headers["content-length"])
                    self.mode = "length" if self.remaining else "done"
                else:
                    self.mode, self.keep_alive = "close", False
                assert self.head is not None
                if not self.head.done():
                    self.head.set_result((status, headers))
            elif self.mode == "length":
                take = bytes(self.buf[:self.remaining])
                del self.buf[:len(take)]
                self._emit(take)
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.mode = "done"
            elif self.mode == "close":
                self._emit(self.buf)
                self.buf.clear()
            elif self.mode == "chunked":
                if self.need_crlf:  # the CRLF that ends a chunk's data
                    if len(self.buf) < 2:
                        return
                    del self.buf[:2]
                    self.need_crlf, self.remaining = False, -1
                if self.remaining < 0:  # a size line
                    end = self.buf.find(b"\r\n")
                    if end < 0:
                        return
                    size = int(bytes(self.buf[:end]).split(b";", 1)[0], 16)
                    del self.buf[:end + 2]
                    if size == 0:
                        self.mode = "trailer"
                        continue
                    self.remaining = size
                take = bytes(self.buf[:self.remaining])
                del self.buf[:len(take)]
                self._emit(take)
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.need_crlf = True
            elif self.mode == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                del self.buf[:end + 2]
                if end == 0:
                    self.mode = "done"
            else:  # bytes after a complete answer: the connection cannot be reused
                self.keep_alive = False
                self.buf.clear()

    async def next_chunk(self, idle_timeout: float | None) -> bytes | None:
        """The next body bytes, or None at the end of the answer."""
        while not self.chunks:
            if self.error is not None:  # first: a sink may have failed on the last piece
                raise self.error
            if self.mode == "done":
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, idle_timeout)
            finally:
                self.waiter = None
        data = self.chunks.popleft()
        self.queued -= len(data)
        if self.paused and self.queued < HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


class Response:
    """Status, headers and a body to read whole or chunk by chunk; release() when done."""

    def __init__(self, conn: _Conn, status: int, headers: CIMultiDict[str],
                 idle_timeout: float | None) -> None:
        self._conn: _Conn | None = conn
        self.status = status
        self.headers = headers
        self.idle_timeout = idle_timeout
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def next_chunk(self) -> bytes | None:
        """The next body bytes as they arrived, or None at the end of the answer; raises
        UpstreamError when the answer broke off (or was `expire`d)."""
        conn = self._conn
        assert conn is not None
        return await conn.next_chunk(self.idle_timeout)

    def whole(self) -> bytes | None:
        """The whole body when all of it has arrived already (then the answer is read), else
        None (nothing is taken)."""
        conn = self._conn
        if conn is None or conn.mode != "done":
            return None
        data = b"".join(conn.chunks)
        conn.chunks.clear()
        conn.queued = 0
        return data

    @property
    def complete(self) -> bool:
        """All of the body arrived and was read (the next `next_chunk` is None)."""
        conn = self._conn
        return conn is not None and conn.mode == "done" and not conn.chunks

    def set_sink(self, sink: Callable[[bytes], bool]) -> bool:
        """From now on hand body pieces to `sink` as they are parsed (in the protocol's
        callback: no task wake-up per piece) until it returns False (it took that piece but
        cannot take more now) or raises (`next_chunk` then raises that). `next_chunk` returns
        None at the end as before, and queued pieces again once the sink stepped back.
        Only without an idle timeout (whose timer would not see the pieces); False then."""
        conn = self._conn
        if conn is None or self.idle_timeout is not None or conn.chunks or conn.mode == "done":
            return False
        conn.sink = sink
        return True

    def idle_for(self, now: float) -> float:
        """Seconds since the upstream last sent bytes (`now` from time.monotonic())."""
        return 0.0 if self._conn is None else now - self._conn.last

    def expire(self, message: str) -> None:
        """Give up on a silent upstream: the reader gets Silent(message), the connection
        closes (which cancels the upstream request)."""
        conn = self._conn
        if conn is None or conn.mode == "done":
            return
        conn.error = Silent(message)
        conn._wake()
        if conn.transport is not None:
            conn.transport.close()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None
        while (data := await conn.next_chunk(self.idle_timeout)) is not None:
            yield data

    async def read(self) -> bytes:
        conn = self._conn
        if conn is not None and conn.mode == "done" and not conn.paused and len(conn.chunks) < 2:
            data = conn.chunks.popleft() if conn.chunks else b""  # all there already
            conn.queued -= len(data)
            return data
        return b"".join([c async for c in self.iter_chunks()])

    def release(self) -> None:
        """Back to the pool if the answer was read to its end, else close."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.sink = None
        if conn.mode == "done" and conn.keep_alive and not conn.closed and not conn.chunks:
            conn.pool.put(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()


class Pool:
    """Keep-alive connections to one upstream host:port.

    `idle_timeout` bounds each wait for body bytes (None: no timer; the caller may watch with
    `Response.idle_for` instead). With `retry_stale`, a request on a pooled connection that the
    upstream closed before answering (its keep-alive timeout raced our reuse; uvicorn's is 5 s)
    is sent once more on a new connection, as urllib3 and aiohttp do.
    """

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0,
                 idle_timeout: float | None = 300.0, max_idle: int = 512,
                 tls: bool = False, retry_stale: bool = False) -> None:
        self.host, self.port, self.tls, self.retry_stale = host, port, tls, retry_stale
        self.connect_timeout, self.idle_timeout, self.max_idle = (
            connect_timeout, idle_timeout, max_idle)
        self.idle: list[_Conn] = []

    def put(self, conn: _Conn) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    async def _get(self, reuse: bool = True) -> _Conn:
        while self.idle and reuse:
            conn = self.idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self), self.host, self.port,
                                       ssl=self.tls or None),
                self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailure(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return conn

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes) -> Response:
        """Send one request; returns once the status line and headers arrived."""
        head = [f"{method} {target} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        reuse = True
        while True:
            conn = await self._get(reuse)
            waiter = conn.start(head_only=method == "HEAD")
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                status, resp_headers = await waiter
            except Reset:
                if conn.transport is not None:
                    conn.transport.close()
                if not (self.retry_stale and conn.reused and not conn.buf):
                    raise
                reuse = False
                continue
            except BaseException:
                if conn.transport is not None:
                    conn.transport.close()
                raise
            return Response(conn, status, resp_headers, self.idle_timeout)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()
