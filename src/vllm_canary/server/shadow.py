"""How a model server's front recognises a mirrored (shadow) request, and how it counts one.

A mirrored request is the gateway's (or Envoy's) fire-and-forget copy of a served request: its
answer never reaches a client. Envoy marks it by appending `-shadow` to the host part of
`Host`/`:authority`, before any port (`shadowAppendedHost` in Envoy's
source/common/router/shadow_writer_impl.cc; the port is found by
`HeaderUtility::getPortStart`: the last `:` that is not inside an IPv6 `[...]`). The copy keeps
every other header, `x-request-id` included, so v2's shadow answer joins v1's served answer by
request id.

Istio: up to 1.27 every mirror is marked so. Istio 1.28 added the istiod variable
`DISABLE_SHADOW_HOST_SUFFIX`, default `true` (no suffix; istio/istio#57530, PR #57708,
pilot/pkg/features/pilot.go); our `k8s/istio-demo.yaml` sets it to `"false"` so mirrors stay
recognisable in the mesh. There is deliberately no header that marks a shadow: a client could
send it and hide its own requests from the served series. (A service whose own name ends in
`-shadow` would be taken for a mirror: do not name one so.)

Shadow answers are counted in their own series, `vllm_shadow_*` (same `version`/`model`
labels, same buckets as the served ones), never in `vllm_requests_total` and the other served
series: dashboards, alerts, HPA custom metrics and the rollout's queries about users'
experience select the served names and stay right without a `traffic` filter.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram

from vllm_canary.server.metrics import LATENCY_BUCKETS, TTFT_BUCKETS

SUFFIX = "-shadow"
LABELS = ("version", "model")


def port_start(host: str) -> int:
    """Index of the `:` before a port, or -1 (Envoy's `HeaderUtility::getPortStart`)."""
    i = host.rfind(":")
    if i < 0:
        return -1
    v6_end = host.rfind("]")
    if v6_end < 0 or v6_end < i:
        return i
    return -1


def host_name(authority: str) -> str:
    """The host part of a Host/:authority value (without any port)."""
    i = port_start(authority)
    return authority if i < 0 else authority[:i]


def shadow_host(authority: str) -> str:
    """The Host Envoy sends a mirror with: `-shadow` appended before any port."""
    i = port_start(authority)
    return authority + SUFFIX if i < 0 else authority[:i] + SUFFIX + authority[i:]


def is_shadow(headers: Mapping[str, str]) -> bool:
    """True for a mirrored request: its Host (or `:authority`) ends in `-shadow` before any
    port. `headers`: aiohttp's case-insensitive headers, or a dict with lower-case names."""
    host = headers.get("host") or headers.get(":authority") or ""
    return host_name(host.strip()).lower().endswith(SUFFIX)


class ShadowMetrics:
    """The series of shadow answers, apart from served traffic (names `vllm_shadow_*`).

    `vllm_shadow_requests_total{version,model,status}`, `vllm_shadow_request_latency_seconds`,
    `vllm_shadow_time_to_first_token_seconds`, `vllm_shadow_prompt_tokens_total`,
    `vllm_shadow_generation_tokens_total`; buckets equal the served histograms' so the rollout
    compares them bucket by bucket."""

    def __init__(self, registry: CollectorRegistry, version: str, model: str) -> None:
        self._labels = {"version": version, "model": model}
        self.requests = Counter("vllm_shadow_requests",
                                "Mirrored (shadow) requests answered, by HTTP status; never sent "
                                "to a client and not in vllm_requests_total.",
                                [*LABELS, "status"], registry=registry)
        self.latency = Histogram("vllm_shadow_request_latency_seconds",
                                 "End-to-end latency of shadow requests.", LABELS,
                                 buckets=LATENCY_BUCKETS, registry=registry).labels(**self._labels)
        self.ttft = Histogram("vllm_shadow_time_to_first_token_seconds",
                              "Time to first token of shadow requests.", LABELS,
                              buckets=TTFT_BUCKETS, registry=registry).labels(**self._labels)
        self.prompt_tokens = Counter("vllm_shadow_prompt_tokens", "Prompt tokens of shadow "
                                     "requests.", LABELS, registry=registry).labels(**self._labels)
        self.generation_tokens = Counter("vllm_shadow_generation_tokens",
                                         "Output tokens generated for shadow requests.", LABELS,
                                         registry=registry).labels(**self._labels)
        for status in ("200", "400", "499", "500", "503"):  # so increase() sees the first ones
            self.requests.labels(status=status, **self._labels)

    def record(self, status: int, latency_s: float, ttft_s: float | None,
               prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Count one shadow answer (seconds; token counts None when unknown)."""
        self.requests.labels(status=str(status), **self._labels).inc()
        self.latency.observe(latency_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self.generation_tokens.inc(completion_tokens)
