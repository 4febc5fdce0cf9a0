"""The one relay core, shared by the gateway's proxy and the model server's relay front: the
headers a hop forwards, and an upstream answer piped to the client chunk by chunk, unbuffered,
bytes unchanged. What each adds (routing and Istio telemetry; the seed's metrics and the
request log) sits around it as a policy or as an observer of the chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from multidict import CIMultiDict

from vllm_canary.gateway.h1client import ProtocolError, Response, Silent, UpstreamError
from vllm_canary.gateway.h1server import Incoming

# RFC 9110 §7.6.1 hop-by-hop fields, plus the framing a hop recomputes (content-length).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "content-length",
})


def forwardable(headers: Iterable[tuple[str, str]], extra_hop: str = "") -> CIMultiDict[str]:
    """A copy without hop-by-hop headers (and those the Connection header names)."""
    drop = HOP_BY_HOP | {h.strip().lower() for h in extra_hop.split(",") if h.strip()} \
        if extra_hop else HOP_BY_HOP
    return CIMultiDict([(k, v) for k, v in headers if k.lower() not in drop])


async def pipe(request: Incoming, resp: Response, headers: Mapping[str, str],
               on_chunk: Callable[[bytes], None] | None = None) -> str:
    """Answer `request` with `resp`'s status, `headers` and body, each chunk written as it
    arrives (with back-pressure) and shown to `on_chunk` first.

    Pieces go from the upstream's socket to the client's in the read callback, with no task
    switch, while the client keeps up (h1client `set_sink`); a full client socket hands them
    back to the loop below, which waits (back-pressure).

    Returns "" on a clean end, "UC" when the upstream broke mid-answer ("UPE" when what it
    sent was not HTTP/1.1, e.g. a bad chunk size), "SI" when it stayed
    silent past the pool's `idle_timeout` or "UT" past the caller's (`Response.expire`), and "DC"
    when the client went away (Envoy's flags); in all but the first
    the client's connection is cut, so it sees a truncated answer, never a clean end. The
    upstream response is released or closed either way; a cancellation (the client
    disconnected) closes it, which cancels the upstream request.
    """
    try:
        whole = resp.whole()
        if whole is not None:  # all there already: head and body in one write
            if on_chunk is not None and whole:
                on_chunk(whole)
            resp.release()
            request.respond(resp.status, headers, whole,
                            resp.content_length if request.head_only else None)
            return ""
        request.start(resp.status, headers, resp.content_length)

        def sink(chunk: bytes) -> bool:  # straight from the upstream's read to the client's
            if on_chunk is not None:
                on_chunk(chunk)
            return request.write_nowait(chunk)

        while True:
            # Whenever nothing is queued the sink takes over again; not where an idle timer
            # must see each piece (the gateway's pools): there this loop does it all.
            resp.set_sink(sink)
            chunk = await resp.next_chunk()
            if chunk is None:
                break
            if on_chunk is not None:
                on_chunk(chunk)
            if resp.complete:  # the last piece: written with the end, in one write
                resp.release()
                request.end(chunk)
                return ""
            await request.write(chunk)
        resp.release()
        request.end()
    except TimeoutError:  # the pool's idle timeout (an OSError: caught first)
        resp.close()
        request.abort()
        return "SI"
    except (UpstreamError, OSError) as exc:
        resp.close()
        request.abort()
        if isinstance(exc, UpstreamError):
            return "UT" if isinstance(exc, Silent) else \
                "UPE" if isinstance(exc, ProtocolError) else "UC"
        return "DC"
    except BaseException:
        resp.close()
        raise
    return ""
