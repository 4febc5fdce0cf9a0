"""The proxy's HTTP/1.1 client against a raw loopback server that sends crafted answers,
including answers dribbled one byte at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from vllm_canary import procs
from vllm_canary.gateway.h1client import ConnectFailure, Pool, Reset

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[list[bytes], bool], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(answers: list[bytes], dribble: bool = False) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                await reader.readuntil(b"\r\n\r\n")
                if dribble:
                    for i in range(len(answer)):
                        writer.write(answer[i:i + 1])
                        await writer.drain()
                else:
                    writer.write(answer)
                if answer.endswith(b"CLOSE"):
                    break
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\n\r\nuntil the end CLOSE"


@pytest.mark.parametrize("dribble", [False, True])
async def test_framing_and_keep_alive(raw_server, dribble: bool) -> None:  # type: ignore[no-untyped-def]
    port = await raw_server([LENGTH, CHUNKED, CONTINUE, NO_CONTENT, CLOSE_DELIMITED], dribble)
    pool = Pool("127.0.0.1", port)
    expected = [b"hello", b"hello, world", b"hello", b"", b"until the end CLOSE"]
    for i, body in enumerate(expected):
        resp = await pool.request("POST", "/x", {"Host": "h"}, b"{}")
        assert resp.status == (204 if body == b"" else 200)
        assert await resp.read() == body
        if i == 0:
            assert resp.headers.getall("x-a") == ["1", "2"] and resp.content_length == 5
        resp.release()
        if i < 4:
            assert len(pool.idle) == 1  # the one connection went back to the pool
    assert not pool.idle  # a close-delimited answer cannot be followed by another
    pool.close()


async def test_chunks_are_handed_over_as_they_arrive(raw_server) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1])
    resp = await pool.request("GET", "/", {"Host": "h"}, b"")
    chunks = resp.iter_chunks()
    assert await chunks.__anext__() == b"data: "  # before the server finished
    gate.set()
    assert [c async for c in chunks] == []
    resp.release()
    server.close()


async def test_connect_failure_and_reset(raw_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConnectFailure):
        await Pool("127.0.0.1", procs.free_port()).request("GET", "/", {"Host": "h"}, b"")
    port = await raw_server([b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort CLOSE"])
    resp = await Pool("127.0.0.1", port).request("GET", "/", {"Host": "h"}, b"")
    with pytest.raises(Reset):
        await resp.read()
    port = await raw_server([b"CLOSE"])
    with pytest.raises(Reset):
        await Pool("127.0.0.1", port).request("GET", "/", {"Host": "h"}, b"")


async def test_reads_of_one_whole_chunk_and_reads_that_are_not() -> None:
    """A read that is exactly one chunk frame (how SSE servers write) takes a fast path; any
    other shape (split frames, two in one read, extensions) goes through the general parser,
    with the same result; CRLF and UTF-8 inside the data are data."""
    from vllm_canary.gateway.h1client import _Conn

    conn = _Conn(Pool("127.0.0.1", 1))
    head = conn.start(head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (await head)[0] == 200
    events = [b"data: 1\r\n\r\n", b"x" * 0x1a, b"data: \xc3\xa9\n\n"]
    reads = [b"%x\r\n%b\r\n" % (len(e), e) for e in events]
    reads += [b"3;ext=1\r\nabc\r\n", b"2\r\nde\r\n2\r\nfg\r\n", b"4\r\nhi", b"jk\r\n",
              b"5\r\nshort\r\n", b"0\r\n\r\n"]
    for data in reads:
        conn.data_received(data)
    assert list(conn.chunks) == [*events, b"abc", b"de", b"fg", b"hi", b"jk", b"short"]
    assert conn.mode == "done" and conn.error is None
    bad = _Conn(Pool("127.0.0.1", 1))
    bad.start(head_only=False)
    bad.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    bad.data_received(b"zz\r\nabc\r\n")  # not a hex size: the general parser refuses it
    assert isinstance(bad.error, Reset)


async def test_a_sink_gets_each_read_at_once_until_it_is_full() -> None:
    """With a sink (the relay's pipe), what one read completes goes out in one call; a sink
    that is full hands the next pieces back to `next_chunk`, in order; a failing one makes
    `next_chunk` raise its error."""
    from vllm_canary.gateway.h1client import Response, _Conn

    conn = _Conn(Pool("127.0.0.1", 1))
    head = conn.start(head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    resp = Response(conn, *(await head), idle_timeout=None)
    got: list[bytes] = []
    room = [True, True, False]
    assert resp.set_sink(lambda piece: got.append(piece) or room.pop(0))
    conn.data_received(b"1\r\na\r\n")  # one chunk, one read
    conn.data_received(b"1\r\nb\r\n2\r\ncd\r\n3\r\nef")  # two and a part: one call
    conn.data_received(b"g\r\n1\r\nh\r\n")  # the sink is full after this one
    conn.data_received(b"1\r\ni\r\n0\r\n\r\n")
    assert got == [b"a", b"bcdef", b"gh"]
    assert [await resp.next_chunk(), await resp.next_chunk()] == [b"i", None]

    failing = _Conn(Pool("127.0.0.1", 1))
    head = failing.start(head_only=False)
    failing.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    resp = Response(failing, *(await head), idle_timeout=None)

    def gone(piece: bytes) -> bool:
        raise ConnectionResetError("client closed the connection")

    assert resp.set_sink(gone)
    failing.data_received(b"abcd")
    with pytest.raises(ConnectionResetError):
        await resp.next_chunk()
    assert not Response(_Conn(Pool("127.0.0.1", 1)), 200, resp.headers, 5.0).set_sink(gone)
