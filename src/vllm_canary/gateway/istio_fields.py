"""Field names per level of the Istio objects: what the local gateway executes, and what the
Istio schema (customresourcedefinitions.gen.yaml, v1.30) has but the gateway refuses."""

from __future__ import annotations

VS_SPEC = frozenset({"hosts", "gateways", "exportTo", "http"})
VS_SPEC_ISTIO = frozenset({"tcp", "tls"})
HTTP_ROUTE = frozenset({
    "name", "match", "route", "mirror", "mirrors", "mirrorPercentage", "mirrorPercent",
    "mirror_percent", "timeout", "retries", "fault", "headers",
})
HTTP_ROUTE_ISTIO = frozenset({"corsPolicy", "delegate", "directResponse", "redirect", "rewrite"})
MATCH = frozenset({
    "name", "uri", "ignoreUriCase", "method", "authority", "headers", "withoutHeaders",
    "queryParams",
})
MATCH_ISTIO = frozenset({
    "gateways", "port", "scheme", "sourceLabels", "sourceNamespace", "statPrefix",
})
STRING_MATCH = frozenset({"exact", "prefix", "regex"})
ROUTE_DEST = frozenset({"destination", "weight", "headers"})
DESTINATION = frozenset({"host", "subset", "port"})
PORT = frozenset({"number"})
MIRRORS_ITEM = frozenset({"destination", "percentage"})
PERCENT = frozenset({"value"})
RETRIES = frozenset({"attempts", "perTryTimeout", "retryOn", "backoff"})
RETRIES_ISTIO = frozenset({"retryIgnorePreviousHosts", "retryRemoteLocalities"})
FAULT = frozenset({"delay", "abort"})
DELAY = frozenset({"fixedDelay", "percentage", "percent"})
DELAY_ISTIO = frozenset({"exponentialDelay"})
ABORT = frozenset({"httpStatus", "percentage"})
ABORT_ISTIO = frozenset({"grpcStatus", "http2Error"})
HEADERS = frozenset({"request", "response"})
HEADER_EDIT = frozenset({"set", "add", "remove"})

DR_SPEC = frozenset({"host", "subsets", "trafficPolicy", "exportTo"})
DR_SPEC_ISTIO = frozenset({"workloadSelector"})
SUBSET = frozenset({"name", "labels"})
SUBSET_ISTIO = frozenset({"trafficPolicy"})
TRAFFIC_POLICY = frozenset({"loadBalancer", "outlierDetection"})
TRAFFIC_POLICY_ISTIO = frozenset({
    "connectionPool", "portLevelSettings", "proxyProtocol", "tls", "tunnel", "retryBudget",
})
LOAD_BALANCER = frozenset({"simple"})
LOAD_BALANCER_ISTIO = frozenset({
    "consistentHash", "localityLbSetting", "warmup", "warmupDurationSecs",
})
LB_SIMPLE = frozenset({"UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"})
OUTLIER = frozenset({
    "consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
    "maxEjectionPercent",
})
OUTLIER_ISTIO = frozenset({
    "consecutiveErrors", "consecutiveLocalOriginFailures", "minHealthPercent",
    "splitExternalLocalOriginErrors",
})

# Istio's supportedRetryOnPolicies (pkg/config/validation/agent/validation.go) that the proxy
# executes. refused-stream (an HTTP/2 REFUSED_STREAM), http3-post-connect-failure and the gRPC
# ones (they read a grpc-status answer header) never fire on the HTTP/1.1 OpenAI upstreams the
# gateway relays to, exactly as in Envoy, so they are accepted and do nothing.
RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
# Valid in Istio, but the local gateway does not execute them: refused at load time.
RETRY_ON_NOT_EXECUTED = frozenset({"retriable-headers", "reset-before-request",
                                   "envoy-ratelimited"})
