"""The OpenAI API under /v1: models, chat completions and completions, as one plain ASGI handler.

Every request that reaches it is bounded, authenticated from memory and checked for its role;
a completion is checked field by field, its model resolved within the key's scope, its rate
limit taken, and it is forwarded to the locked engine. The answer is relayed in OpenAI's shape
under the name the client asked for. A client that hangs up cancels its generation in the
engine, streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from starlette.types import Receive, Scope, Send

from airlock.errors import AirlockError, NotReady
from airlock.access.holders import holder_of_key
from airlock.access.roles import APPROVES, may
from airlock.access.sessions import session_token
from airlock.gateway.auth import check_permission, client_address, guarded_check, key_of_cookie
from airlock.gateway.errors import BadRequest, ModelNotFound, UpstreamError, error_body, from_airlock_error
from airlock.gateway.fields import CHAT_ACCEPTED, COMPLETION_ACCEPTED, refuse_unknown_fields
from airlock.gateway.front import Head, read_body, send_bytes
from airlock.gateway.limits import Budget, check_completion_request, output_budget
from airlock.gateway.metrics import Answer
from airlock.gateway.registry import Snapshot
from airlock.serve.canary import CANDIDATE
from airlock.gateway.shape import EventShaper, Usage, decode_json, encode_json, engine_error, shape_body

log = logging.getLogger("airlock.gateway")

CHAT, COMPLETIONS, MODELS, MODEL = ("/v1/chat/completions", "/v1/completions", "/v1/models",
                                    "/v1/models/{model}")
_ROUTES = {("POST", CHAT): CHAT, ("POST", COMPLETIONS): COMPLETIONS, ("GET", MODELS): MODELS}
_STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def route_of(method: str, path: str) -> str | None:
    if (route := _ROUTES.get((method, path))) is not None:
        return route
    if method == "GET" and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return MODEL
    return None


class OpenAIApi:
    """Called by the front for every /v1 request with the headers it already read."""

    def __init__(self, state: Any) -> None:
        self.state = state  # the FastAPI app's state: settings, registry, limiter, recorder, engine
        self.settings = state.settings
        self.bases = sorted({m.replica.model for m in state.engines.members})  # the served base models
        self._bos: dict[str, int | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send, head: Head) -> None:
        method, path = scope["method"], scope["path"]
        route = route_of(method, path)
        if route is None:
            await send_bytes(send, 404, encode_json(error_body(f"Invalid URL ({method} {path})", 404, None)))
            return
        scope["airlock.route"] = route
        try:
            snapshot = await self.state.registry.current()
            key = self._key(scope, head, snapshot)
            check_permission(self.state.recorder, key, "inference", method, path)
            if route == MODELS:
                await send_bytes(send, 200, encode_json({"object": "list", "data": self._cards(snapshot, key)}))
            elif route == MODEL:
                await send_bytes(send, 200, encode_json(self._card(snapshot, key, path[len("/v1/models/"):])))
            else:
                await self._complete(scope, receive, send, head, route, key, snapshot)
        except AirlockError as exc:
            await from_airlock_error(exc)(scope, receive, send)
        except Exception:
            # The details go to the log only: they may hold paths or internals an app should not see.
            log.exception("unhandled error in the gateway on %s %s", method, path)
            body = error_body("internal error in the gateway; the operator can find it in its log", 500,
                              "internal_error")
            try:
                await send_bytes(send, 500, encode_json(body))
            except RuntimeError:
                pass  # the answer had already started: the server closes the connection

    def _key(self, scope: Scope, head: Head, snapshot: Snapshot) -> dict[str, Any]:
        """The key of an `Authorization: Bearer` header, or of the web UI's session cookie."""
        token = session_token(head.cookie) if head.authorization is None and head.cookie else None
        if token is None:
            return guarded_check(self.state, snapshot.keys, head.authorization, client_address(scope.get("client")),
                                 "v1")
        return key_of_cookie(self.state.sessions, snapshot.keys, token, scope["method"], origin=head.origin,
                             own_origin=f"{scope['scheme']}://{head.host}", csrf=head.csrf)

    # --- models ------------------------------------------------------------------------------

    def _cards(self, snapshot: Snapshot, key: dict[str, Any]) -> list[dict[str, Any]]:
        scope = key.get("models")
        cards = [self._base_card(base) for base in self.bases if scope is None or base in scope]
        return cards + [_alias_card(name, row, self.state.started) for name, row in sorted(snapshot.aliases.items())
                        if name not in self.bases and (scope is None or name in scope) and may_call(key, row)]

    def _card(self, snapshot: Snapshot, key: dict[str, Any], name: str) -> dict[str, Any]:
        scope = key.get("models")
        if scope is None or name in scope:
            if (row := snapshot.aliases.get(name)) is not None and may_call(key, row):
                return _alias_card(name, row, self.state.started)
            if name in self.bases:
                return self._base_card(name)
        raise _not_found(name)

    def _base_card(self, base: str) -> dict[str, Any]:
        return {"id": base, "object": "model", "created": self.state.started, "owned_by": "airlock"}

    # --- completions -------------------------------------------------------------------------

    async def _complete(self, scope: Scope, receive: Receive, send: Send, head: Head, route: str,
                        key: dict[str, Any], snapshot: Snapshot) -> None:
        state, settings = self.state, self.settings
        started = time.perf_counter()
        raw = await read_body(receive, head, settings.max_body_bytes, "AIRLOCK_MAX_BODY_BYTES")
        if raw is None:
            return  # the client hung up while sending: nothing was forwarded, nobody to answer
        body = self._parse(raw, route)
        requested = body["model"]
        if None in body.values():
            # OpenAI's nullable parameters mean "the default" when null; the engine refuses some
            # nulls (n, best_of), so they are left out, as if not sent.
            body = {k: v for k, v in body.items() if v is not None or k == "prompt"}
            raw = b""
        upstream_model, base_model = resolve_model(snapshot, key, self.bases, requested)
        # From here on the model is a served one: its name may label the metrics.
        answer = Answer(requested, base_model, body.get("stream") is True, started)
        if (routed := state.canaries.route(snapshot, requested)) is not None:
            canary, answer.canary = routed  # a canary rollout (gateway/canary.py): which side answers
            if answer.canary == CANDIDATE:
                upstream_model = canary.candidate_id
        try:
            await self._served(scope, receive, send, route, key, snapshot, raw, body, upstream_model, base_model,
                               answer)
        except AirlockError as exc:
            state.metrics.count_completion_error(requested, exc.code)
            if routed is not None and answer.forwarded and exc.http_status >= 500:
                state.canaries.observe(canary, answer.canary, failed=True, seconds=None)
            raise
        # A canary judges what the model's side did: an answer, or a server-side failure once the
        # request went to an engine. A refusal before that (a limit, a sleeping engine), the
        # engine's 4xx (the request's own fault) and a hang-up count for neither side.
        if routed is not None and (answer.answered or answer.status >= 500):
            state.canaries.observe(canary, answer.canary, failed=not answer.answered,
                                   seconds=answer.seconds if answer.answered else None)

    async def _served(self, scope: Scope, receive: Receive, send: Send, route: str, key: dict[str, Any],
                      snapshot: Snapshot, raw: bytes, body: dict[str, Any], upstream_model: str, base_model: str,
                      answer: Answer) -> None:
        state, settings, requested = self.state, self.settings, answer.model
        if snapshot.engine_asleep:
            raise _asleep(requested, snapshot.engine_asleep)
        if route == COMPLETIONS and body["prompt"] is None:
            # OpenAI: "if prompt is not specified the model will generate as if from the beginning
            # of a new document", that is from the beginning-of-sequence token alone.
            body["prompt"] = [self._bos_token(base_model)]
            raw = b""
        named = len(body)
        budget = output_budget(body, route, key, settings)  # may fill in a max_tokens: one field more
        hide_usage = False
        if answer.stream and not _wants_usage(body):
            # The reservation is settled, and the metrics count tokens, with the engine's own
            # count, which a stream carries only when asked; the client, who did not ask, does
            # not see it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            hide_usage = True
        reserved = state.limiter.admit(key, budget.total)
        state.recorder.used(key["id"], upstream_model)  # the adapter (or base model) that answers
        if upstream_model != requested or not raw or len(body) != named or hide_usage:
            body["model"] = upstream_model
            raw = encode_json(body)
        settle = _Settle(state.limiter, key, reserved, budget)
        try:
            await self._forward(scope, receive, send, route, raw, upstream_model, hide_usage, settle, answer)
        finally:
            settle.close()  # a request that failed gives back its whole reservation

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: str, raw: bytes, upstream_model: str,
                       hide_usage: bool, settle: _Settle, answer: Answer) -> None:
        state, requested, metrics = self.state, answer.model, self.state.metrics

        task = asyncio.current_task()
        watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, task))
        member, tried = None, set()
        answer.forwarded = True
        try:
            while True:
                member, resp = await state.engines.post(answer.base, route, raw, tried)
                if resp.status != 404 or upstream_model == requested:
                    break
                # The alias exists but this replica does not hold its adapter: it restarted and
                # the reconciler is still verifying and loading it (or verification failed). vLLM
                # refused before generating anything, so another replica may answer.
                resp.close()
                tried.add(member)
                state.engines.done(member)
                member = None
                if not state.engines.others_left(answer.base, tried):
                    raise _not_loaded(requested)
            answer.engine, answer.status = member.name, resp.status
            try:
                # Which adapter version answered an alias: for tracing an answer back to its run.
                adapter = [(b"x-airlock-adapter", upstream_model.encode())] if upstream_model != requested else []
                if answer.canary is not None:  # which side of a canary rollout answered
                    adapter.append((b"x-airlock-canary", answer.canary.encode()))
                if answer.stream and resp.status == 200:
                    await _relay_stream(resp, send, watcher, adapter, settle, metrics, hide_usage, answer)
                    return
                data = await resp.read()
            finally:
                resp.close()  # unread (a cancelled client) or not, the engine sees the close
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                # The client hung up: its generation was aborted by closing the upstream, after
                # the engine had read the prompt, which is charged.
                settle(settle.budget.prompt)
                if not answer.answered:  # a client may hang up once it has read the whole stream
                    metrics.count_completion_error(requested, "client_disconnected")
                return
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            metrics.count_upstream_error(answer.engine, "transport")
            raise UpstreamError(f"the model server broke off its answer: {type(exc).__name__}") from None
        finally:
            watcher.cancel()
            if member is not None:
                state.engines.done(member)
        if resp.status != 200:
            metrics.count_completion_error(requested, f"engine_{resp.status // 100}xx")
            await send_bytes(send, resp.status, engine_error(resp.status, data))
            return
        data, usage = shape_body(data, requested)
        settle(usage.total)
        # Counted before the last bytes leave: a client that reads /metrics right after its answer
        # must find it there (after the send, its next request could be served first).
        metrics.observe_completion(answer.finished(usage))
        await send_bytes(send, 200, data, adapter)

    def _parse(self, raw: bytes, route: str) -> dict[str, Any]:
        """The request body, checked for what the gateway needs and bounds; vLLM checks the rest."""
        try:
            body = decode_json(raw)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        chat = route == CHAT
        refuse_unknown_fields(body, CHAT_ACCEPTED if chat else COMPLETION_ACCEPTED, self.settings)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter (a string)", param="model")
        if chat and body.get("messages") is None:
            raise BadRequest("you must provide a messages parameter", param="messages")
        if chat and not isinstance(body["messages"], list):
            raise BadRequest("messages must be a list of {role, content} objects", param="messages")
        if not chat and "prompt" not in body:
            raise BadRequest("you must provide a prompt parameter", param="prompt")
        check_completion_request(body, route, self.settings)
        return body

    def _bos_token(self, base_model: str) -> int:
        if base_model not in self._bos:
            self._bos[base_model] = _read_bos(self.settings.model_path(base_model))
        if (token := self._bos[base_model]) is None:
            raise BadRequest(f"prompt is null, and the model {base_model!r} names no beginning-of-sequence "
                             "token to start from; send a prompt", param="prompt")
        return token


def may_call(key: dict[str, Any], row: dict[str, Any]) -> bool:
    """A staging name is for its candidate's author, approvers and admins only; an alias for any
    key whose scope names it."""
    return row.get("audience") is None or holder_of_key(key) == row["audience"] \
        or may(key, APPROVES)


def resolve_model(snapshot: Snapshot, key: dict[str, Any], bases: list[str], name: str) -> tuple[str, str]:
    """(the model name the engine knows, its base model). A model outside the key's scope is
    answered exactly like one that does not exist: no oracle for what is served."""
    scope = key.get("models")
    if scope is None or name in scope:
        if (row := snapshot.aliases.get(name)) is not None and may_call(key, row):
            if row.get("revoked_note"):
                raise _revoked(name, row["revoked_note"])
            return row["lora_name"], row["base_model"]
        if name in bases:
            return name, name
    raise _not_found(name)


def _not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model {name!r} does not exist or you do not have access to it; "
                         "GET /v1/models lists the models you can call")


def _not_loaded(name: str) -> NotReady:
    exc = NotReady(f"the model {name!r} is not loaded in the engine right now (it is being verified "
                   "and restored); retry shortly")
    exc.retry_after = 2
    return exc


def _revoked(name: str, note: str) -> NotReady:
    return NotReady(f"the model {name!r} is not served: {note}; an admin promotes another candidate or "
                    "rolls the alias back (`airlock serve rollback`)")


def _asleep(name: str, asleep: dict[str, Any]) -> NotReady:
    exc = NotReady(f"the model {name!r} is not served right now: its engine sleeps while run "
                   f"{asleep['run_id']} trains on its GPU; retry after the time in Retry-After")
    exc.retry_after = asleep["retry_after_s"]
    return exc


def _alias_card(name: str, row: dict[str, Any], default: int) -> dict[str, Any]:
    try:
        created = int(datetime.fromisoformat(row["updated_at"]).timestamp())
    except (TypeError, ValueError):
        created = default
    return {"id": name, "object": "model", "created": created, "owned_by": "airlock",
            "parent": row["base_model"]}


def _read_bos(folder: Path) -> int | None:
    for name in ("generation_config.json", "config.json"):
        try:
            token = json.loads((folder / name).read_text()).get("bos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if type(token) is int:
            return token
    return None


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task) -> None:
    """Cancel `task` when the client disconnects (the body has been read, so the next message
    can only be the disconnect); the task's upstream response closes, and the engine aborts."""
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class _Settle:
    """A completion's token reservation, settled once: with the answer's usage, or with nothing
    (all of it given back) when the request ends without one."""

    def __init__(self, limiter: Any, key: dict[str, Any], reserved: int, budget: Budget) -> None:
        self.limiter, self.key, self.reserved, self.budget = limiter, key, reserved, budget
        self.done = not reserved

    def __call__(self, used: int) -> None:
        if not self.done:
            self.done = True
            self.limiter.settle(self.key, self.reserved, used)

    def close(self) -> None:
        self(0)


async def _relay_stream(resp: aiohttp.ClientResponse, send: Send, watcher: asyncio.Task,
                        headers: list[tuple[bytes, bytes]], settle: _Settle, metrics: Any, hide_usage: bool,
                        answer: Answer) -> None:
    """The engine's events as they arrive, reshaped; a broken upstream ends the stream with an
    error event. The reservation is settled with the stream's usage, or, when it broke off
    before that, with the prompt's estimate and one token for each event passed on."""
    await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS + headers})
    shaper = EventShaper(answer.model, hide_usage)

    def answered() -> None:
        # Counted once, before the stream's last event leaves: a client that has read it may hang
        # up (cancelling this task) or read /metrics at once, before the engine's stream ends.
        if not answer.answered:
            metrics.observe_completion(answer.finished(shaper.usage or Usage(settle.budget.prompt, shaper.events)))

    try:
        async for chunk in resp.content.iter_any():
            if out := shaper.feed(chunk):
                if answer.first_token_s is None:
                    answer.first_token_s = time.perf_counter() - answer.started
                if shaper.done:
                    answered()
                await send({"type": "http.response.body", "body": out, "more_body": True})
        answered()
    except (TimeoutError, aiohttp.ClientError) as exc:
        metrics.count_upstream_error(answer.engine, "transport")
        metrics.count_completion_error(answer.model, UpstreamError.code)
        log.warning("stream from the engine broke off: %s", exc)
        err = error_body(f"the model server broke off the stream: {type(exc).__name__}", 502, UpstreamError.code)
        await send({"type": "http.response.body", "body": b"data: " + encode_json(err) + b"\n\n", "more_body": True})
    finally:
        settle(shaper.usage.total if shaper.usage is not None else settle.budget.prompt + shaper.events)
    # Stop watching before the last message: once the response is complete, the server reports
    # a disconnect to whoever still listens, and that must not cancel a finished request.
    watcher.cancel()
    await send({"type": "http.response.body", "body": shaper.flush(), "more_body": False})
