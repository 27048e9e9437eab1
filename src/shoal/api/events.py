"""``GET /events``: the local engine's events (its own stream, proxied) merged with the swarm's events
(services, nodes, networks, secrets, configs; see :mod:`shoal.manager.events`), with Docker's
``filters``, ``since`` and ``until``. The engine checks the filters; swarm events are matched here the
way moby's event filter does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import datetime

from aiohttp import web

from shoal.aio import drain
from shoal.api.filters import parse_filters
from shoal.api.proxy import engine_path
from shoal.api.server import Ctx, error_response, route
from shoal.api.stream import cut_off, write
from shoal.model.errors import BadRequest

OUT_BACKLOG = 256  # lines merged for one client and not yet written to it
NAME_FILTERS = ("daemon", "container", "plugin", "volume", "network", "service", "node", "secret", "config")


def parse_timestamp(value: str | None) -> int | None:
    """``since``/``until`` as the API takes them (Unix seconds with an optional fraction, or RFC 3339)
    → Unix nanoseconds."""
    if not value:
        return None
    sec, dot, frac = value.partition(".")
    if sec.lstrip("-").isdigit() and (not dot or frac.isdigit()):
        return int(sec) * 1_000_000_000 + (int((frac + "000000000")[:9]) if dot else 0)
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1_000_000_000)
    except ValueError:
        raise BadRequest(f"failed to parse value {value} as a timestamp") from None


def parse_event_filters(raw: str | None) -> dict[str, list[str]]:
    """The events endpoint takes any filter key (unknown ones match nothing)."""
    return parse_filters(raw, None)


def _exact(f: dict[str, list[str]], key: str, value: str) -> bool:
    return key not in f or value in f[key]


def _fuzzy(f: dict[str, list[str]], key: str, value: str) -> bool:
    return key not in f or any(value.startswith(w) for w in f[key])


def matches(f: dict[str, list[str]], ev: dict) -> bool:
    """moby's daemon/events filter, for swarm events."""
    actor = ev["Actor"]
    attrs = actor.get("Attributes") or {}
    if not (_exact(f, "event", ev["Action"]) and _exact(f, "type", ev["Type"]) and _exact(f, "scope", ev["scope"])):
        return False
    for key in NAME_FILTERS:
        if key in f and not (_fuzzy(f, key, actor["ID"]) or _fuzzy(f, key, attrs.get("name", ""))):
            return False
    if "image" in f:
        return False  # swarm events name no image actor
    for want in f.get("label", []):
        k, sep, v = want.partition("=")
        if k not in attrs or (sep and attrs[k] != v):
            return False
    return True


@route("GET", "/events", manager=False)
async def events(ctx: Ctx, request: web.Request) -> web.StreamResponse:
    local = ctx.control.local()
    if local.state != "active" or local.role != "manager":
        return await ctx.proxy.handle(request)
    q = request.rel_url.query
    since, until = parse_timestamp(q.get("since")), parse_timestamp(q.get("until"))
    f = parse_event_filters(q.get("filters"))
    recorder = ctx.manager.events
    sub = recorder.subscribe()  # before reading the history: nothing falls between the two
    try:
        path = engine_path(request.path, ctx.proxy.engine_api)
        engine = await ctx.proxy.session.get(f"http://docker{path}", params=dict(q))
        if engine.status != 200:
            body = await engine.read()
            engine.release()
            try:
                return error_response(json.loads(body)["message"], engine.status)
            except (ValueError, KeyError, TypeError):
                return error_response(body.decode(errors="replace"), engine.status)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)

        def wanted(ev: dict) -> bool:
            t = ev["timeNano"]
            return (since is None or t >= since) and (until is None or t <= until) and matches(f, ev)

        out: asyncio.Queue[bytes] = asyncio.Queue(maxsize=OUT_BACKLOG)

        async def from_engine() -> None:
            async for line in engine.content:
                if line.strip():
                    await out.put(line if line.endswith(b"\n") else line + b"\n")

        async def from_swarm() -> None:
            while True:
                ev = await sub.get()
                if ev is None:  # this client fell too far behind the swarm's events
                    cut_off(request, "too far behind the swarm's events")
                    engine_task.cancel()
                    return
                if wanted(ev):
                    await out.put((json.dumps(ev) + "\n").encode())

        async def until_deadline() -> None:
            if until is not None:
                await asyncio.sleep(max(0.0, (until - time.time_ns()) / 1e9))
                await engine_task  # the engine's own answer ends at `until` too

        engine_task = asyncio.create_task(from_engine())
        swarm_task = asyncio.create_task(from_swarm())
        deadline = asyncio.create_task(until_deadline())
        try:
            if since is not None:
                for ev in list(recorder.history):
                    if wanted(ev):
                        await write(request, resp, (json.dumps(ev) + "\n").encode())
            async for data in drain(out, {engine_task, deadline} if until is not None else {engine_task}):
                await write(request, resp, data)
        except ConnectionError:  # the client went away, or was cut off
            return resp
        finally:
            for t in (engine_task, swarm_task, deadline):
                t.cancel()
            for t in (engine_task, swarm_task, deadline):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            engine.close()
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
    finally:
        recorder.unsubscribe(sub)
