"""The gateway's replicas of each base model: a request goes to the replica in rotation with the
fewest requests outstanding; a replica whose connect fails leaves the rotation at once and the
request goes to another (nothing of it reached the failed one, so it cannot run twice); a replica
out of rotation is asked for /health every HEALTH_EVERY_S and comes back when it answers and
holds every adapter the aliases of its base model name (the worker's reconciler loads them,
verified, into a replica that restarted), unless it is the only replica of its model that could
serve at all. A request for an alias that reaches a replica without its adapter (vLLM answers 404
before generating anything) is sent to another replica of the base model.

A failure after the request was sent (the engine died mid-answer, or a pooled connection broke
under it, which may be the same) is never retried elsewhere: the engine may have started
generating, and the client sees the error; the replica leaves the rotation all the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from airlock.config import Settings
from airlock.errors import NotReady
from airlock.gateway.metrics import Metrics
from airlock.gateway.proxy import Engine, EngineDown
from airlock.serve.fleet import Replica, replica_settings

log = logging.getLogger("airlock.gateway")

HEALTH_EVERY_S = 1.0


@dataclass(eq=False)
class Member:
    replica: Replica
    engine: Engine
    outstanding: int = 0
    in_rotation: bool = True
    left_at: float | None = None  # time.monotonic() when it left the rotation
    history: list[tuple[float, bool]] = field(default_factory=list)  # (when, in rotation) changes

    @property
    def name(self) -> str:
        return self.replica.name

    def leave(self, why: str) -> None:
        if self.in_rotation:
            self.in_rotation, self.left_at = False, time.monotonic()
            self.history.append((self.left_at, False))
            log.warning("engine replica %s left the rotation: %s", self.name, why)

    def rejoin(self) -> None:
        if not self.in_rotation:
            self.in_rotation, self.left_at = True, None
            self.history.append((time.monotonic(), True))
            log.warning("engine replica %s is back in the rotation", self.name)


class EnginePool:
    def __init__(self, settings: Settings, metrics: Metrics, replicas: list[Replica],
                 adapters_of: Callable[[str], Awaitable[set[str]]] | None = None) -> None:
        self.members = [Member(r, Engine(replica_settings(settings, r), metrics)) for r in replicas if r.local]
        self.adapters_of = adapters_of  # base model -> the adapter names its aliases serve now
        for member in self.members:
            member.engine.name = member.name  # the metrics' engine label: the replica
        self._health: asyncio.Task | None = None

    def of_model(self, model: str) -> list[Member]:
        return [m for m in self.members if m.replica.model == model]

    def open(self) -> None:
        for member in self.members:
            member.engine.open()
        self._health = asyncio.get_running_loop().create_task(self._check_health())

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
        for member in self.members:
            await member.engine.close()

    def pick(self, model: str, tried: set[Member]) -> Member:
        """The replica of `model` in rotation with the fewest outstanding requests (ties: the first)."""
        candidates = [m for m in self.of_model(model) if m.in_rotation and m not in tried]
        if not candidates:
            raise NotReady(f"no replica of the engine serving {model!r} is reachable right now; "
                           "it may be starting or restarting, try again shortly")
        return min(candidates, key=lambda m: m.outstanding)

    def others_left(self, model: str, tried: set[Member]) -> bool:
        return any(m.in_rotation and m not in tried for m in self.of_model(model))

    async def post(self, model: str, path: str, content: bytes,
                   tried: set[Member] | None = None) -> tuple[Member, aiohttp.ClientResponse]:
        """Send to a replica of `model` not in `tried`; the caller calls `done(member)` once the
        answer is relayed. A replica whose connect failed is added to `tried`."""
        tried = set() if tried is None else tried
        while True:
            member = self.pick(model, tried)
            member.outstanding += 1
            try:
                return member, await member.engine.post(path, content)
            except EngineDown as exc:
                member.outstanding -= 1
                member.leave(str(exc))
                tried.add(member)
                if not exc.unsent:  # it may have reached the replica that died: never run twice
                    raise
            except BaseException:
                member.outstanding -= 1
                raise

    @staticmethod
    def done(member: Member) -> None:
        member.outstanding -= 1

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            for member in self.members:
                if not member.in_rotation and await _healthy(member.engine) and await self._ready(member):
                    member.rejoin()

    async def _ready(self, member: Member) -> bool:
        """Whether a healthy replica may take traffic: it holds every adapter served on its base
        model, or no other replica of that model is in rotation (base-model requests and the
        aliases it holds are then better served than refused)."""
        wanted = await self.adapters_of(member.replica.model) if self.adapters_of else set()
        if not wanted or not self.others_left(member.replica.model, {member}):
            return True
        missing = wanted - await _loaded(member.engine)
        if missing:
            log.info("engine replica %s waits for its adapters before it rejoins: %s", member.name,
                     ", ".join(sorted(missing)))
        return not missing


async def _loaded(engine: Engine) -> set[str]:
    """The model names a replica serves now (empty if it does not answer)."""
    try:
        for _ in range(2):
            async with engine.session.get(engine.url("/v1/models"), headers=engine.headers,
                                          timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 401:  # restarted with a new secret (vLLM's /health needs none)
                    engine.reload_secret()
                    continue
                return {m["id"] for m in (await resp.json()).get("data", [])} if resp.status == 200 else set()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        pass
    return set()


async def _healthy(engine: Engine) -> bool:
    try:
        async with engine.session.get(engine.url("/health"), headers=engine.headers,
                                      timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status == 401:
                engine.reload_secret()  # a restarted engine has a new secret
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
