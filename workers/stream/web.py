"""The worker's HTTP routes: ``/health``, ``/ready``, ``/dispatch`` (and its shortcuts ``/route``,
``/predict``, ``/graph/{session}/edges``). A request for a session another worker owns is forwarded
to the owner; a write is produced to its topic and answered once applied (:meth:`Runtime.write`).
"""
from __future__ import annotations

from typing import Any

import faust
import orjson
from aiohttp import web as aiohttp_web

from workers.errors import VerbError
from workers.state.limits import check_request
from workers.stream import faust_internals
from workers.stream.http_guard import RAW_BODY, Guard, forwarded
from workers.stream.runtime import OwnerUnknown, Runtime
from workers.verbs.surface import REGISTRY, envelope_error, parse_request, session_key_of

__all__ = ("install_routes", "json_response")

# A read while this worker recovers (or rebalances) is answered 503 with this Retry-After.
_RECOVERING_RETRY_AFTER_S = 1
_UNKNOWN = object()  # no assignment yet: which worker owns a session is not known (OwnerUnknown)


def json_response(web: Any, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    return web.bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json",
                     status=status, headers=headers)


def install_routes(app: faust.App, rt: Runtime, guard: Guard) -> None:
    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        # partitions of the input topics (co-partitioned, so one topic's numbers say it all); none between a
        # revocation and the next assignment (faust's assignor kept listing them: two workers seemed to own one)
        assigned = rt.active_partitions
        try:
            standby = sorted({tp.partition for tp in app.assignor.assigned_standbys()
                              if tp.topic == rt.changelog_topic}) if assigned else []
        except Exception:  # noqa: BLE001 - before the first assignment
            standby = []
        return json_response(web, {"status": "ok", "worker": rt.settings.worker_id or str(rt.settings.web_port),
                                   "ready": rt.is_ready(), "broker_reachable": rt.broker_health.reachable(),
                                   "active_partitions": assigned, "standby_partitions": standby,
                                   # as the group lists it (kafka-consumer-groups --describe); "" while joining
                                   "member_id": faust_internals.member_id(app)})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = rt.is_ready()
        out: dict[str, Any] = {"ready": ok}
        if not rt.broker_health.reachable():
            out["reason"] = f"broker unreachable for {rt.broker_health.unreachable_for():.0f} s"
        return json_response(web, out, 200 if ok else 503)

    def _owner_now(sk: str) -> str | None | object:
        """The session's owner as this worker sees it now (None: this one), or _UNKNOWN between assignments."""
        try:
            return rt.owner_url(sk)
        except OwnerUnknown:
            return _UNKNOWN

    async def verb_request(web: Any, request: Any, req: Any, raw: bytes | None = None) -> Any:
        parsed = parse_request(req)
        if isinstance(parsed, dict):
            return json_response(web, parsed, 400)
        name, body = parsed
        try:
            sk = session_key_of(body)
        except VerbError as exc:
            return json_response(web, envelope_error(name, str(exc)), 400)
        denied = guard.deny(request, name, sk, REGISTRY[name].writes)
        if denied is not None:
            return denied
        try:
            owner = rt.owner_url(sk)
        except OwnerUnknown:  # not yet in the group: a write produced here may be applied by another worker
            return json_response(web, envelope_error(name, "partition owner unknown (this worker is joining); "
                                                           "retry"), 503, {"Retry-After": "1"})
        if owner is not None:
            if forwarded(request):
                return json_response(web, envelope_error(name, "partition owner unknown (rebalancing); retry"), 503,
                                     {"Retry-After": "1"})
            return await guard.forward(app.http_client, owner, {"verb": name, "body": body}, name, raw,
                                       moved=lambda: _owner_now(sk) not in (owner, _UNKNOWN))
        if REGISTRY[name].writes:
            try:  # a configuration whose state could outgrow the session limit never reaches the log
                check_request(name, body, rt.processor.sessions.limits)
            except VerbError as exc:
                return json_response(web, envelope_error(name, str(exc)), 400)
            out, status = await rt.write(name, body, sk)
            if status == 504:  # in the log, its result not here: a retry with the same key answers it
                return json_response(web, out, status, {"Retry-After": "1"})
        elif not rt.is_ready():
            # Recovering or rebalancing: the tables may not hold the session's value yet, and an
            # empty answer would be wrong. Never answered from (nor cached from) a partial value.
            return json_response(web, envelope_error(name, "recovering: state not available yet; retry"), 503,
                                 {"Retry-After": str(_RECOVERING_RETRY_AFTER_S)})
        else:
            out = await rt.read(name, body, sk)
            status = 200 if out["ok"] else 422
        return json_response(web, out, status)

    @app.page("/dispatch")
    class Dispatch(faust.web.View):
        async def post(self, request: Any) -> Any:
            req = await guard.read_json(request, "?")
            if isinstance(req, aiohttp_web.Response):
                return req
            return await verb_request(self.web, request, req, request.get(RAW_BODY))

    def shortcut(path: str, verb_name: str) -> None:
        class Shortcut(faust.web.View):
            async def post(self, request: Any) -> Any:
                body = await guard.read_json(request, verb_name)
                if isinstance(body, aiohttp_web.Response):
                    return body
                if not isinstance(body, dict):
                    return json_response(self.web, envelope_error(verb_name, "parse: the body must be a JSON object"), 400)
                raw = request.get(RAW_BODY)
                return await verb_request(self.web, request, {"verb": verb_name, "body": body},
                                          None if raw is None else b'{"verb":"%s","body":%s}' % (verb_name.encode(), raw))
        Shortcut.__name__ = f"Shortcut_{verb_name}"
        app.page(path)(Shortcut)

    shortcut("/route", "route")
    shortcut("/predict", "predict")

    @app.page("/graph/{session}/edges")
    class GraphEdges(faust.web.View):
        async def get(self, request: Any, session: str) -> Any:
            q = request.query
            body: dict[str, Any] = {"session_key": session}
            for name in ("src", "t"):  # both required: a missing one is the request's fault (400), as any bad one
                if name not in q:
                    return json_response(self.web, envelope_error("query_at", f"query parameter {name} required"), 400)
            body["src"] = q["src"]
            for name in ("t", "known_at", "limit"):
                if name in q:
                    try:
                        body[name] = int(q[name])
                    except ValueError:
                        return json_response(self.web, envelope_error(
                            "query_at", f"query parameter {name} must be an integer, got {q[name][:40]!r}"), 400)
            return await verb_request(self.web, request, {"verb": "query_at", "body": body})
