"""The gateway on loopback in front of small upstreams: routing, streaming, cancellation,
mirrors, faults, retries, timeouts, health, limits and header manipulation."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp
import pytest

from tests.fixtures.gateway import HOST, FakeUpstream, StartGateway, vs_yaml
from vllm_canary.gateway.server import Gateway

BODY = json.dumps({"prompt": "hello", "max_tokens": 5})


def to(subset: str) -> str:
    return f"{{destination: {{host: {HOST}, subset: {subset}}}}}"


async def post(gw: Gateway, body: str = BODY, path: str = "/v1/completions",
               **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(
        gw.url() + path, data=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def sample(gw: Gateway, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for metric in gw.registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def wait_for_sample(gw: Gateway, name: str, **labels: str) -> None:
    """Wait (bounded, 5 s) until the gateway has counted a matching sample."""
    for _ in range(100):
        if sample(gw, name, **labels):
            return
        await asyncio.sleep(0.05)


async def test_seed_traffic_split_and_header_route(start_gateway: StartGateway,
                                                   upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway()
    seen = Counter()
    for _ in range(200):
        status, headers, _ = await post(gw)  # no content-type, as the seed's curl sends it
        assert status == 200
        seen[headers["x-model-version"]] += 1
    assert 8 <= seen["v2"] <= 40 and seen["v1"] + seen["v2"] == 200
    for _ in range(30):
        status, headers, _ = await post(gw, x_ab_test="v2")
        assert (status, headers["x-model-version"]) == (200, "v2")
    assert sample(gw, "istio_requests_total", destination_version="v2",
                  response_code="200", response_flags="-") == seen["v2"] + 30


async def test_sse_chunks_arrive_before_the_upstream_finished(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway()
    up = upstreams["v2"]
    up.chunks, up.chunk_gap = 6, 0.3
    body = json.dumps({"prompt": "hi", "stream": True})
    async with aiohttp.ClientSession() as s, s.post(
        gw.url() + "/v1/completions", data=body, headers={"x-ab-test": "v2"}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        first = await resp.content.readline()
        assert first.startswith(b"data: {")
        assert not up.stream_done.is_set()  # the first chunk came through unbuffered
        rest = await resp.read()
    assert rest.rstrip().endswith(b"data: [DONE]")


async def test_client_disconnect_cancels_the_upstream(start_gateway: StartGateway,
                                                      upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway()
    up = upstreams["v2"]
    up.chunks, up.chunk_gap = 100, 0.1
    body = json.dumps({"prompt": "hi", "stream": True})
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.url() + "/v1/completions", data=body, headers={"x-ab-test": "v2"})
        await resp.content.readline()
        resp.close()  # the user hits Ctrl-C
    await asyncio.wait_for(up.cancelled.wait(), 10)
    assert not up.stream_done.is_set()
    await wait_for_sample(gw, "istio_requests_total", response_flags="DC")
    assert sample(gw, "istio_requests_total", response_flags="DC") == 1


async def test_upstream_dying_mid_stream_truncates_the_answer(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway()
    upstreams["v2"].break_after = 2
    body = json.dumps({"prompt": "hi", "stream": True})
    async with aiohttp.ClientSession() as s, s.post(
        gw.url() + "/v1/completions", data=body, headers={"x-ab-test": "v2"}
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # no clean end of stream: the client knows it is incomplete
    await wait_for_sample(gw, "istio_requests_total", response_flags="UC")
    assert sample(gw, "istio_requests_total", response_code="200", response_flags="UC") == 1


async def test_mirror_copies_reach_the_target(start_gateway: StartGateway,
                                              upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route: [{to('v1')}]
      mirror: {{host: {HOST}, subset: v2}}
      mirrorPercentage: {{value: 100}}"""))
    for _ in range(10):
        status, headers, _ = await post(gw)
        assert (status, headers["x-model-version"]) == (200, "v1")
    for _ in range(50):
        if len(upstreams["v2"].requests) == 10:
            break
        await asyncio.sleep(0.05)
    assert len(upstreams["v1"].requests) == 10 and len(upstreams["v2"].requests) == 10
    assert all(r["headers"]["host"].split(":")[0].endswith("-shadow")
               for r in upstreams["v2"].requests)
    assert sample(gw, "vllm_canary_gateway_mirror_requests_total", destination_version="v2",
                  response_code="200") == 10
    assert sample(gw, "istio_requests_total", destination_version="v2") == 0


async def test_fault_abort_percentage(start_gateway: StartGateway,
                                      upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route: [{to('v1')}]
      fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}"""))
    codes = Counter()
    for _ in range(100):
        status, _, body = await post(gw)
        codes[status] += 1
        if status == 503:
            assert json.loads(body)["error"]["message"] == "fault filter abort"
    assert 30 <= codes[503] <= 70 and codes[503] + codes[200] == 100
    assert len(upstreams["v1"].requests) == codes[200]
    assert sample(gw, "istio_requests_total", response_flags="FI") == codes[503]


async def test_retries_recover_from_failures(start_gateway: StartGateway,
                                             upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route: [{to('v1')}]
      retries: {{attempts: 3, retryOn: "5xx"}}"""))
    upstreams["v1"].fail_next = 2
    status, _, _ = await post(gw)
    assert status == 200 and len(upstreams["v1"].requests) == 3
    assert [r["headers"]["x-envoy-attempt-count"] for r in upstreams["v1"].requests] == \
        ["1", "2", "3"]
    upstreams["v1"].fail_next = 10
    status, _, _ = await post(gw)
    assert status == 503
    assert sample(gw, "istio_requests_total", response_code="503", response_flags="URX") == 1


async def test_no_retry_when_not_retriable(start_gateway: StartGateway,
                                           upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route: [{to('v1')}]
      retries: {{attempts: 3, retryOn: "gateway-error"}}"""))
    upstreams["v1"].fail_next, upstreams["v1"].fail_status = 1, 500
    status, _, _ = await post(gw)
    assert status == 500 and len(upstreams["v1"].requests) == 1


async def test_retries_recover_from_a_restarted_upstream(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"    - route: [{to('v1')}]"))
    up = upstreams["v1"]
    assert (await post(gw))[0] == 200  # leaves a pooled keep-alive connection to the old process
    await up.stop()
    await up.start(up.port)
    status, headers, _ = await post(gw)  # Istio's default policy retries the reset connection
    assert status == 200 and headers["x-model-version"] == "v1"


async def test_refused_connection_is_503_uf(start_gateway: StartGateway,
                                            upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"    - route: [{to('v1')}]"), health_path="")
    await upstreams["v1"].stop()
    status, _, body = await post(gw)
    assert status == 503 and "connection failure" in json.loads(body)["error"]["message"]
    assert sample(gw, "istio_requests_total", response_flags="UF,URX") == 1


async def test_unhealthy_subset_is_no_healthy_upstream(
        start_gateway: StartGateway, upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway()
    upstreams["v2"].healthy = False
    for _ in range(100):
        if not any(e.healthy for e in gw.endpoints.all if e.version == "v2"):
            break
        await asyncio.sleep(0.05)
    status, _, body = await post(gw, x_ab_test="v2")
    assert status == 503 and json.loads(body)["error"]["message"] == "no healthy upstream"
    assert sample(gw, "istio_requests_total", response_flags="UH", destination_version="v2") == 1
    assert sample(gw, "vllm_canary_gateway_upstream_healthy", destination_version="v2") == 0


async def test_route_timeout_is_504_ut(start_gateway: StartGateway,
                                       upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route: [{to('v1')}]
      timeout: 200ms"""))
    upstreams["v1"].delay = 5.0
    status, _, body = await post(gw)
    assert status == 504 and json.loads(body)["error"]["message"] == "upstream request timeout"
    assert sample(gw, "istio_requests_total", response_code="504", response_flags="UT") == 1


async def test_route_timeout_cuts_a_long_stream(start_gateway: StartGateway,
                                                upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route: [{to('v1')}]
      timeout: 500ms"""))
    upstreams["v1"].chunks, upstreams["v1"].chunk_gap = 100, 0.1
    async with aiohttp.ClientSession() as s, s.post(
        gw.url() + "/v1/completions", data=json.dumps({"stream": True})
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await wait_for_sample(gw, "istio_requests_total", response_flags="UT")
    assert sample(gw, "istio_requests_total", response_code="200", response_flags="UT") == 1


async def test_per_try_timeout_retries_elsewhere(start_gateway: StartGateway,
                                                 upstreams: dict[str, FakeUpstream]) -> None:
    slow, fast = upstreams["v1"], upstreams["v2"]
    slow.delay = 5.0
    gw = await start_gateway(
        vs_yaml(f"""    - route: [{to('v1')}]
      retries: {{attempts: 1, perTryTimeout: 200ms, retryOn: gateway-error}}"""),
        upstream=[f"v1={slow.url}", f"v1={fast.url}"])
    status, headers, _ = await post(gw)
    assert status == 200 and headers["x-model-version"] == "v2"  # second pod of subset v1


async def test_no_route_is_404_nr(start_gateway: StartGateway) -> None:
    gw = await start_gateway(vs_yaml(f"""    - match: [{{uri: {{prefix: /v2}}}}]
      route: [{to('v1')}]"""))
    status, _, body = await post(gw)
    assert status == 404 and "no http route" in json.loads(body)["error"]["message"]
    assert sample(gw, "istio_requests_total", response_code="404", response_flags="NR") == 1


async def test_request_size_limit_is_413(start_gateway: StartGateway,
                                         upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(max_request_bytes=2048)
    status, _, body = await post(gw, body=json.dumps({"prompt": "x" * 5000}))
    assert status == 413 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert not upstreams["v1"].requests and not upstreams["v2"].requests


async def test_header_manipulation_and_hop_by_hop(start_gateway: StartGateway,
                                                  upstreams: dict[str, FakeUpstream]) -> None:
    gw = await start_gateway(vs_yaml(f"""    - route:
        - destination: {{host: {HOST}, subset: v1}}
          headers: {{response: {{set: {{x-served-by: v1}}}}}}
      headers:
        request: {{set: {{x-canary: "yes"}}, add: {{x-trace: b}}, remove: [x-secret]}}
        response: {{remove: [x-upstream-seen-host]}}"""))
    status, headers, _ = await post(gw, x_secret="s", x_trace="a", connection="x-drop, keep-alive",
                                    x_drop="1")
    assert status == 200
    got = upstreams["v1"].requests[0]["headers"]
    assert got["x-canary"] == "yes" and "x-secret" not in got and "x-drop" not in got
    assert got["x-trace"] == "a, b"  # `add` appends
    assert got["x-forwarded-for"] == "127.0.0.1" and got.get("x-request-id")
    assert headers["x-served-by"] == "v1" and "x-upstream-seen-host" not in headers


async def test_outlier_detection_ejects_a_failing_pod(start_gateway: StartGateway,
                                                      upstreams: dict[str, FakeUpstream]) -> None:
    bad, good = upstreams["v1"], upstreams["v2"]
    bad.fail_next, bad.fail_status = 1000, 500
    gw = await start_gateway(
        vs_yaml(f"""    - route: [{to('v1')}]
      retries: {{attempts: 0}}""", dr_extra="""  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 50}
"""),
        upstream=[f"v1={bad.url}", f"v1={good.url}"], health_path="")
    codes = [(await post(gw))[0] for _ in range(12)]
    assert codes[-6:] == [200] * 6  # after two 500s the failing pod is ejected
    assert len(bad.requests) == 2


@pytest.mark.parametrize("path", ["/metrics", "/stats/prometheus"])
async def test_metrics_endpoint_serves_istio_names(start_gateway: StartGateway,
                                                   path: str) -> None:
    gw = await start_gateway()
    await post(gw)
    async with aiohttp.ClientSession() as s, s.get(gw.url("metrics") + path) as resp:
        text = await resp.text()
    for name in ("istio_requests_total", "istio_request_duration_milliseconds_bucket",
                 "istio_request_bytes_bucket", "istio_response_bytes_bucket"):
        assert name in text
    assert 'le="0.5"' in text and 'le="3.6e+06"' in text  # Istio's duration buckets
    assert 'destination_service_name="vllm-service"' in text and 'reporter="destination"' in text


async def test_a_head_too_big_to_forward_is_431_not_sent(start_gateway: StartGateway,
                                                         upstreams: dict[str, FakeUpstream]
                                                         ) -> None:
    """The front takes 100 headers; with x-forwarded-for/-proto, x-request-id and
    x-envoy-attempt-count added they would be over the limit the gateway holds an upstream
    to (and a sidecar in the mesh holds it to), so it answers 431 itself."""
    gw = await start_gateway()

    async def send(extra: int) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports["gateway"])
        head = "".join(f"x-h{i}: v\r\n" for i in range(extra))
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{head}Connection: close"
                     f"\r\nContent-Length: {len(BODY)}\r\n\r\n{BODY}".encode())
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]

    status, body = await send(96)  # 99 at the front, 102 once forwarded
    assert status == 431, body
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and "to forward" in error["message"]
    assert not upstreams["v1"].requests and not upstreams["v2"].requests
    assert (await send(90))[0] == 200
