"""HTTP face of the simulator: the API at ``POST /`` and the test hooks under ``/_sim/``.

The API handler is deliberately thin (read the body, call
:meth:`~watcher.simulator.simulator.Simulator.handle`, apply the reply's delay/drop, write the
bytes) and logs nothing per request, so the simulator is never a benchmark's bottleneck.
The ``/_sim/`` hooks are unauthenticated JSON endpoints for local tools and tests: bind the
simulator to loopback. Hook errors answer HTTP 400 ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from watcher.simulator.runs import GroupFields

if TYPE_CHECKING:
    from watcher.simulator.simulator import Simulator

_Hook = Callable[["Simulator", dict[str, Any]], Any]


def _number(body: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _group_fields(body: dict[str, Any]) -> GroupFields:
    durations = body.get("durations")
    if durations is not None:
        if not isinstance(durations, list) or len(durations) != 3:
            raise ValueError("durations must be [queued, initializing, running] seconds")
        durations = (float(durations[0]), float(durations[1]), float(durations[2]))
    return GroupFields(
        durations=durations,
        run_group_id=_opt_str(body, "run_group_id"),
        project_id=_opt_str(body, "project_id"),
        application_id=_opt_str(body, "application_id"),
        kind=_opt_str(body, "kind"),
        outcome=_opt_str(body, "outcome"),
    )


def _submit(sim: Simulator, body: dict[str, Any]) -> Any:
    fields = _group_fields(body)
    run_uuid = sim.submit_run(
        run_uuid=_opt_str(body, "run_uuid"),
        user_defined_id=_opt_str(body, "user_defined_id"),
        **fields,
    )
    return web.json_response({"run_uuid": run_uuid}, status=201)


def _group(sim: Simulator, body: dict[str, Any]) -> Any:
    fields = _group_fields(body)
    count = body.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError("count must be an integer")
    spread = _number(body, "spread_seconds", required=False) or 0.0
    uuids = sim.submit_group(count, spread_seconds=spread, **fields)
    group = sim.group_of(uuids[0])
    return web.json_response({"run_group_id": group, "run_uuids": uuids}, status=201)


def _list_lag(sim: Simulator, body: dict[str, Any]) -> Any:
    sim.set_list_lag(_number(body, "seconds") or 0.0)
    return {"list_lag_seconds": sim.stats(timeline=False)["list_lag_seconds"]}


def _network(sim: Simulator, body: dict[str, Any]) -> Any:
    share = _number(body, "uplink_share", required=False)
    sim.set_network(
        rtt_ms=_number(body, "rtt_ms") or 0.0,
        jitter_ms=_number(body, "jitter_ms", required=False) or 0.0,
        uplink_share=0.5 if share is None else share,
    )
    return {"network": sim.stats(timeline=False)["network"]}


def _rate_limit(sim: Simulator, body: dict[str, Any]) -> Any:
    sim.set_rate_limit(int(_number(body, "limit") or 0), action=_opt_str(body, "action"))
    return {"rate_limits": sim.stats(timeline=False)["rate_limits"]}


def _faults(sim: Simulator, body: dict[str, Any]) -> Any:
    kinds = body.get("kinds")
    if kinds is not None and not (
        isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)
    ):
        raise ValueError("kinds must be a list of fault kind names")
    sim.set_faults(_number(body, "rate") or 0.0, kinds)
    stats = sim.stats(timeline=False)
    return {"fault_rate": stats["fault_rate"], "fault_kinds": stats["fault_kinds"]}


def _clock(sim: Simulator, body: dict[str, Any]) -> Any:
    sim.set_clock_offset(_number(body, "offset_seconds") or 0.0)
    return {"clock_offset": sim.stats(timeline=False)["clock_offset"]}


def _max_filter_values(sim: Simulator, body: dict[str, Any]) -> Any:
    sim.set_max_filter_values(int(_number(body, "limit") or 0))
    return {"max_filter_values": int(_number(body, "limit") or 0)}


def _issue(sim: Simulator, body: dict[str, Any]) -> Any:
    token = body.get("token", True)
    cred = sim.issue_credential(ttl=_number(body, "ttl", required=False), token=bool(token))
    return web.json_response(
        {
            "secret_id": cred.secret_id,
            "secret_key": cred.secret_key,
            "token": cred.token,
            "expires_at": cred.expires_at,
        },
        status=201,
    )


def _expire(sim: Simulator, body: dict[str, Any]) -> Any:
    sim.expire_credentials(
        secret_id=_opt_str(body, "secret_id"), at=_number(body, "at", required=False)
    )
    return {"ok": True}


def _rotate(sim: Simulator, body: dict[str, Any]) -> Any:
    token = sim.rotate_token(
        secret_id=_opt_str(body, "secret_id"),
        token=_opt_str(body, "token"),
        expires_at=_number(body, "expires_at", required=False),
    )
    return {"token": token}


def _reset(sim: Simulator, body: dict[str, Any]) -> Any:
    sim.reset_stats()
    return {"ok": True}


HOOKS: dict[str, _Hook] = {
    "/_sim/runs": _submit,
    "/_sim/groups": _group,
    "/_sim/list-lag": _list_lag,
    "/_sim/network": _network,
    "/_sim/rate-limit": _rate_limit,
    "/_sim/faults": _faults,
    "/_sim/clock": _clock,
    "/_sim/max-filter-values": _max_filter_values,
    "/_sim/credentials": _issue,
    "/_sim/credentials/expire": _expire,
    "/_sim/credentials/rotate-token": _rotate,
    "/_sim/stats/reset": _reset,
}


def _hook_handler(
    sim: Simulator, hook: _Hook
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result = hook(sim, body)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result)

    return handler


def build_app(sim: Simulator) -> web.Application:
    async def api(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        uplink, downlink = sim.network_delays()
        if uplink > 0:  # the request is still on its way: the server counts it on arrival
            await asyncio.sleep(uplink)
        reply = sim.handle(request.headers, host=request.headers.get("Host", ""), body=body)
        if reply.delay + downlink > 0:  # a slow answer, then the way back
            await asyncio.sleep(reply.delay + downlink)
        if reply.drop:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never written: the connection is gone
        return web.Response(
            body=reply.body, status=reply.status, headers={"Content-Type": reply.content_type}
        )

    async def stats(request: web.Request) -> web.StreamResponse:
        with_timeline = request.query.get("timeline", "1") not in ("0", "false", "no")
        return web.json_response(sim.stats(timeline=with_timeline))

    async def timeline(request: web.Request) -> web.StreamResponse:
        run_uuid = request.query.get("run_uuid")
        try:
            changes = sim.timeline(run_uuid)
        except KeyError:
            return web.json_response({"error": f"unknown run {run_uuid}"}, status=404)
        rows = [
            {"run_uuid": t.run_uuid, "from": t.previous, "to": t.status, "at": t.at}
            for t in changes
        ]
        return web.json_response(rows)

    async def runs(request: web.Request) -> web.StreamResponse:
        return web.json_response({"project_id": sim.project_id, "runs": sim.run_uuids})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/", api)
    app.router.add_get("/_sim/stats", stats)
    app.router.add_get("/_sim/timeline", timeline)
    app.router.add_get("/_sim/runs", runs)
    for path, hook in HOOKS.items():
        app.router.add_post(path, _hook_handler(sim, hook))
    return app
