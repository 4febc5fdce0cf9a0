"""The admin API (loopback, bearer token): read routes, set weights atomically, reload.

`GET /routes`, `PUT /weights` with `{"weights": {"v1": 75, "v2": 25}}` (optionally
`?route=NAME`), `POST /reload`. Weights are relative as in Istio >= 1.15 (`{"v1": 3, "v2": 1}`
is 75/25); answers give `weights` as percent of traffic and `configured` as written.
Errors are OpenAI-style JSON bodies with a 4xx status.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from vllm_canary.gateway.istio import RoutesError
from vllm_canary.gateway.routing import percentages
from vllm_canary.gateway.store import RouteStore, WeightError
from vllm_canary.server import jsonlimits

log = logging.getLogger("vllm_canary.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, kind: str = "invalid_request_error",
          param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def admin_app(store: RouteStore, token: str) -> web.Application:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/healthz":
            # aiohttp keeps undecodable header bytes as surrogate escapes: encode them back, so
            # a malformed Authorization is a wrong token (401), not an encoding error (500).
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected):
                return error(401, "missing or wrong admin token: send "
                             "`Authorization: Bearer <token>`", "authentication_error",
                             code="unauthorized")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason, code=exc.reason.lower().replace(" ", "_"))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "generation": store.snapshot.generation})

    async def get_routes(request: web.Request) -> web.Response:
        return web.json_response(store.view())

    async def put_weights(request: web.Request) -> web.Response:
        try:
            body: Any = jsonlimits.loads(await request.read() or b"null")  # limits: 400, never 500
        except ValueError:
            return error(400, "body is not JSON; send {\"weights\": {\"v1\": 90, \"v2\": 10}}",
                         code="invalid_json")
        weights = body.get("weights") if isinstance(body, dict) else None
        if not isinstance(weights, dict) or not weights:
            return error(400, "body needs \"weights\": a mapping of subset to weight, e.g. "
                         "{\"v1\": 90, \"v2\": 10}", param="weights", code="invalid_weights")
        route = request.query.get("route")
        try:
            snap = store.set_weights(weights, route)
        except WeightError as exc:
            return error(400, str(exc), param=exc.param, code="invalid_weights")
        log.info("weights set to %s (generation %d)", weights, snap.generation)
        return web.json_response({"weights": store.current_weights() if route is None
                                  else percentages(weights), "configured": weights,
                                  "generation": snap.generation})

    async def reload(request: web.Request) -> web.Response:
        try:
            snap = store.reload()
        except RoutesError as exc:
            return error(422, f"routes file rejected, the previous table stays: {exc.message}",
                         param="routes", code="invalid_routes")
        return web.json_response({"generation": snap.generation,
                                  "weights": store.current_weights()})

    async def put_mirror(request: web.Request) -> web.Response:
        """`PUT /mirror` `{"subset": "v2", "percent": 100}` (0 removes it): dark launch."""
        from vllm_canary.gateway import mirror

        try:
            body: Any = jsonlimits.loads(await request.read() or b"null")  # limits: 400, never 500
        except ValueError:
            body = None
        if not isinstance(body, dict) or "percent" not in body:
            return error(400, "body needs {\"subset\": \"v2\", \"percent\": 100} (0 removes "
                         "the mirror)", param="percent", code="invalid_mirror")
        try:
            snap = mirror.set_mirror(store, str(body.get("subset", "v2")), body["percent"],
                                     request.query.get("route"))
        except WeightError as exc:
            return error(400, str(exc), param=exc.param, code="invalid_mirror")
        log.info("mirror set to %s (generation %d)", mirror.mirror_of(store), snap.generation)
        return web.json_response({"mirror": mirror.mirror_of(store),
                                  "weights": store.current_weights(),
                                  "generation": snap.generation})

    app = web.Application(middlewares=[guard])
    app.router.add_put("/mirror", put_mirror)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/routes", get_routes)
    app.router.add_put("/weights", put_weights)
    app.router.add_post("/reload", reload)
    return app
