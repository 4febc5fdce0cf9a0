"""Build the actuator and the metric source a rollout uses, from flags or the local stack's
state file, and record them in the rollout state so a restarted controller rebuilds them."""

from __future__ import annotations

import argparse
from typing import Any

from vllm_canary import stackstate
from vllm_canary.errors import NotRunningError, UserError
from vllm_canary.gateway.adminclient import add_token_flags, token_from_args
from vllm_canary.rollout.actuators import ACTUATORS, ActuatorError
from vllm_canary.rollout.actuators.base import Actuator
from vllm_canary.rollout.metrics import SOURCES
from vllm_canary.rollout.metrics.base import MetricSource


def add_target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target (default: the local stack recorded by `vllm-canary up`)")
    g.add_argument("--target", choices=["gateway", "kubernetes"], default="gateway")
    g.add_argument("--admin-url", help="gateway admin API, e.g. http://127.0.0.1:15000")
    add_token_flags(g)
    g.add_argument("--namespace", default="default")
    g.add_argument("--virtualservice", default="vllm")
    g.add_argument("--context", help="kubeconfig context")
    g.add_argument("--prometheus", metavar="URL", help="read metrics through Prometheus")
    g.add_argument("--version-metrics", choices=["istio", "front"],
                   help="per-version traffic from Istio's destination_version or from the "
                   "servers' own series (default: front when versions share pods, i.e. LoRA)")
    g.add_argument("--scrape", nargs="*", metavar="URL",
                   help="scrape these /metrics: the gateway's, then VERSION=URL per server "
                        "(a version repeated once per pod; default: the local stack's)")


def target_from_args(args: argparse.Namespace, actuator_needed: bool = True) -> dict[str, Any]:
    """A plain dict describing actuator + metric source (persisted with the rollout)."""
    stack = stackstate.load()
    if not actuator_needed:
        actuator: dict[str, Any] = {"kind": "none"}
    elif args.target == "kubernetes":
        actuator = {"kind": "kubernetes", "namespace": args.namespace,
                    "name": args.virtualservice, "context": args.context}
    else:
        url = args.admin_url or (stack.admin_url if stack else None)
        token = token_from_args(args) or (stack.admin_token if stack else "")
        if not url:
            raise NotRunningError("no local stack is running: start it with `vllm-canary up`, "
                                  "or pass --admin-url (token: $VLLM_CANARY_ADMIN_TOKEN or "
                                  "--admin-token-file)")
        actuator = {"kind": "gateway", "admin_url": url, "token": token}
    prom = args.prometheus or (stack.prometheus_url if stack and args.scrape is None else None)
    # LoRA versions share their base's pods: Istio counts their requests as the base's.
    front = (getattr(args, "version_metrics", None) or
             ("front" if stack and stack.lora and not args.prometheus and not args.scrape
              else "istio")) == "front"
    if prom:
        source: dict[str, Any] = {"kind": "prometheus", "url": prom}
        if front:
            source["traffic"] = "front"
    elif args.scrape:
        servers: dict[str, Any] = {}
        for i, item in enumerate(args.scrape[1:]):
            version, sep, url = item.partition("=")
            key, url = (version, url) if sep else (f"server{i}", item)
            if key in servers:  # one version on several pods: v2=URL1 v2=URL2
                servers[key] = [*([servers[key]] if isinstance(servers[key], str)
                                  else servers[key]), url]
            else:
                servers[key] = url
        source = {"kind": "scrape", "gateway": None if front else args.scrape[0],
                  "servers": servers}
    elif stack:
        source = {"kind": "scrape", "gateway": None if front else stack.gateway_metrics_url,
                  "servers": {v: s.metrics_url for v, s in stack.servers.items()}}
    else:
        raise UserError("no metric source: pass --prometheus URL or --scrape URL...")
    return {"actuator": actuator, "source": source}


def build_actuator(target: dict[str, Any]) -> Actuator:
    """The actuator a target dict names: ACTUATORS[kind](**the rest)."""
    a = dict(target["actuator"])
    try:
        return ACTUATORS[a.pop("kind")](**a)
    except ActuatorError as exc:  # e.g. no Kubernetes credentials
        raise UserError(str(exc)) from None


def build_source(target: dict[str, Any]) -> MetricSource:
    """The metric source a target dict names: SOURCES[kind](**the rest)."""
    s = dict(target["source"])
    return SOURCES[s.pop("kind")](**s)
