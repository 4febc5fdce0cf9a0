"""Routes for LoRA versions on one machine are the chart's: `share_pods` of the packaged
routes equals what the chart renders with `versions[].lora`; `lora load`/`unload` add and
remove a version the way the gateway can then weight."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from tests.unit.test_k8s_lora import LORA
from vllm_canary.errors import UserError
from vllm_canary.gateway.compiler import compile_table
from vllm_canary.gateway.istio import parse_documents
from vllm_canary.gateway.loraroutes import adapters_in, add_version, remove_version, share_pods


def _packaged() -> list[dict]:
    text = resources.files("vllm_canary").joinpath("data/routes.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def _specs(docs) -> dict[str, dict]:
    return {d["kind"]: d["spec"] for d in docs
            if d.get("kind") in ("VirtualService", "DestinationRule")}


def _compile(docs):
    return compile_table(parse_documents(yaml.safe_dump_all(docs), "test"))


def test_share_pods_equals_the_chart_with_a_lora_version(render):
    chart = _specs([m.obj for m in render(LORA).manifests])
    assert _specs(share_pods(_packaged(), {"v2": "v1"})) == chart


def test_add_then_remove_a_third_version():
    docs = share_pods(_packaged(), {"v2": "v1"})
    three = add_version(docs, "v3", "v1")
    assert adapters_in(three) == {"v2", "v3"}
    table = _compile(three)
    canary = next(r for r in table.virtual_hosts[0].routes if r.name == "canary")
    weights = {d.subset: d.weight for d in canary.destinations}
    assert weights == {"v1": 90, "v2": 10, "v3": 0}
    v3 = next(d for d in canary.destinations if d.subset == "v3")
    assert v3.headers.request.set == (("x-canary-version", "v3"),)
    assert table.services["vllm-service.default.svc.cluster.local"].subsets["v3"] == {
        "version": "v1"}
    ab = next(r for r in table.virtual_hosts[0].routes if r.name == "ab-test")
    assert [d.subset for d in ab.destinations] == ["v2"]  # single routes are left alone
    assert add_version(three, "v3", "v1") == three  # idempotent
    assert _specs(remove_version(three, "v3")) == _specs(docs)


def test_remove_refuses_while_the_version_has_weight():
    docs = share_pods(_packaged(), {"v2": "v1"})
    with pytest.raises(UserError, match="'ab-test' sends all its traffic to v2"):
        remove_version(docs, "v2")
    three = add_version(docs, "v3", "v1")
    for dest in three[0]["spec"]["http"][1]["route"]:
        dest["weight"] = {"v1": 90, "v2": 0, "v3": 10}[dest["destination"]["subset"]]
    with pytest.raises(UserError, match="v3 still has weight 10 on route 'canary'"):
        remove_version(three, "v3")


def test_a_mirror_to_an_adapter_is_refused():
    docs = _packaged()
    docs[0]["spec"]["http"][1]["mirror"] = {"host": "vllm-service.default.svc.cluster.local",
                                            "subset": "v2"}
    with pytest.raises(UserError, match="mirror cannot set"):
        share_pods(docs, {"v2": "v1"})
    with pytest.raises(UserError, match="no subset 'v9'"):
        share_pods(_packaged(), {"v2": "v9"})


def test_remove_can_repoint_a_route_that_sends_everything_to_it():
    docs = share_pods(_packaged(), {"v2": "v1"})
    for dest in docs[0]["spec"]["http"][1]["route"]:
        dest["weight"] = 100 if dest["destination"]["subset"] == "v1" else 0
    out = remove_version(docs, "v2", repoint="v1")
    ab = out[0]["spec"]["http"][0]["route"]
    assert ab == [{"destination": {"host": "vllm-service.default.svc.cluster.local",
                                   "subset": "v1"}, "headers": {"request": {"remove": [
                                       "x-canary-version"]}}}]
    assert [s["name"] for s in out[1]["spec"]["subsets"]] == ["v1"]
    _compile(out)  # still routes Istio accepts
