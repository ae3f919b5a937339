"""Two replicas sharing PostgreSQL behind a round-robin load balancer without affinity (as a Kubernetes Service
is): every webhook and stream of a call may reach either one, and each call must still go right, open exactly
one model session, and be stored once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.engine import RealtimeServer, RealtimeSimConfig
from agent.storage import CallStore, Database, sweep_expired
from agent.storage.call_state import AnswerContext, CallStates
from agent.testkit.carrier import CallerAudio, CarrierSim, SimCall, SimCallOptions
from agent.testkit.local_server import serve_app
from agent.web.app import create_app
from agent.web.state import AppState
from tests.harness import VobizTransferApi, replica_settings
from tests.postgres import scratch_database

TOKEN = "vobiz-token-for-the-replica-tests"
SPEAK_THEN_LISTEN = [CallerAudio.silence(900), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(8000)]


class RoundRobin:
    """A TCP balancer with no affinity: each new connection goes to the next replica, whatever it carries."""

    def __init__(self) -> None:
        self.backends: list[int] = []
        self.sent_to: list[int] = []
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.sent_to) % len(self.backends)
        self.sent_to.append(index)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backends[index])
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()


@dataclass
class Cluster:
    engine: RealtimeServer
    replicas: list[FastAPI]
    carrier: CarrierSim
    database_url: str
    balancer: RoundRobin
    vobiz: VobizTransferApi

    def state(self, index: int) -> AppState:
        state: AppState = self.replicas[index].state.agent
        return state

    def ran(self, call: SimCall) -> int:
        """Which replica held the call's stream."""
        return next(i for i in (0, 1) if self.ran_here(i, call))

    def ran_here(self, index: int, call: SimCall) -> bool:
        record = self.state(index).registry.records.get(call.call_uuid)
        return record is not None and bool(record.stream_id)

    def metric(self, name: str, **labels: str) -> float:
        return sum(self.state(i).metrics.value(name, **labels) for i in (0, 1))


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this module's own, dropped afterwards."""
    with scratch_database("agent_replicas") as url:
        yield url


@contextlib.asynccontextmanager
async def cluster(pg_url: str, tmp_path: Path, *, own_urls: bool = False) -> AsyncIterator[Cluster]:
    """Two replicas on one database and one stream secret; `own_urls` gives each its own public URL (a
    StatefulSet pod behind a headless Service), so streams come back to the replica that answered."""
    balancer = RoundRobin()
    public_url = await balancer.start()
    api = VobizTransferApi()  # both replicas' REST client: Vobiz fetches the transfer XML through the balancer

    engine = RealtimeServer(RealtimeSimConfig(reply_ms=300))
    await engine.start()
    apps: list[FastAPI] = []

    def make_app(index: int) -> Any:
        def make(base_url: str) -> FastAPI:
            settings = replica_settings(
                engine.http_base_url,
                public_url,
                pg_url,
                tmp_path,
                index,
                TOKEN,
                replica_public_url=base_url if own_urls else None,
                transfer_number="+15550002222",
            )
            app = create_app(settings, vobiz=api.client())
            apps.append(app)
            return app

        return make

    http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))  # a new connection a request
    try:
        async with serve_app(make_app(0)) as first, serve_app(make_app(1)) as second:
            balancer.backends = [int(first.rsplit(":", 1)[1]), int(second.rsplit(":", 1)[1])]
            carrier = CarrierSim(public_url, http=http)
            stack = Cluster(engine, apps, carrier, pg_url, balancer, api)
            try:
                yield stack
            finally:
                await carrier.aclose()
                await api.aclose()
    finally:
        await http.aclose()
        await balancer.aclose()
        await engine.stop()


async def end_with_goodbye(stack: Cluster, call: SimCall, session_index: int) -> None:
    session = await stack.engine.wait_for_session(session_index)
    await session.wait_for_server_event("response.done", timeout=5)  # the greeting
    session.queue_tool_call("end_call", {"reason": "done"})
    session.queue_reply(reply_ms=400, transcript="Goodbye.")
    await call.wait_ended(timeout=10)


async def stored_calls(stack: Cluster) -> CallStore:
    for i in (0, 1):
        await stack.state(i).records.flush()
    return CallStore(Database(stack.database_url))


async def test_two_replicas_behind_round_robin_serve_every_call_right(pg_url: str, tmp_path: Path) -> None:
    async with cluster(pg_url, tmp_path) as stack:
        options = SimCallOptions(auth_token=TOKEN, extra_fields={"tag_campaign": "spring", "var_name": "Asha"})
        goodbye = await stack.carrier.place_call(SPEAK_THEN_LISTEN, options)
        await end_with_goodbye(stack, goodbye, 0)
        # The stream landed on the replica that did not answer, yet the call ended as decided: a hang-up after
        # the goodbye, whichever replica Vobiz asked what to do after the stream.
        assert [a.verb for a in goodbye.after_stream] == ["Redirect", "Hangup"]
        assert stack.balancer.sent_to[0] != stack.ran(goodbye)

        stack.vobiz.call = transfer = await stack.carrier.place_call(SPEAK_THEN_LISTEN, options)
        session = await stack.engine.wait_for_session(1)
        await session.wait_for_server_event("response.done", timeout=5)
        session.queue_tool_call("transfer_call", {})
        session.queue_reply(reply_ms=400)
        await transfer.wait_ended(timeout=10)
        # Vobiz fetched the transfer URL through the balancer: the human's number came from the shared state.
        assert [a.verb for a in transfer.after_stream] == ["Transfer", "Dial"]
        assert "+15550002222" in str(transfer.after_stream[-1])

        # One model session per call: nobody pre-warmed a session that no stream would use.
        assert len(stack.engine.sessions) == 2
        assert stack.metric("agent_shared_state_failures_total") == 0
        store = await stored_calls(stack)
        try:
            for call, reason in ((goodbye, "agent_end_call"), (transfer, "agent_transfer")):
                stored = await store.get_call(call.call_uuid)
                assert stored is not None
                assert stored.record.end_reason == reason
                assert stored.record.from_number == options.from_ and stored.record.tags == {"campaign": "spring"}
        finally:
            await store.db.aclose()
        # A stream for a finished call is refused by both replicas (the balancer alternates).
        for _ in (0, 1):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(goodbye.stream_url):
                    pass
            assert refused.value.response.status_code == 403


async def test_replicas_with_their_own_urls_keep_the_prewarm_and_one_session(pg_url: str, tmp_path: Path) -> None:
    async with cluster(pg_url, tmp_path, own_urls=True) as stack:
        options = SimCallOptions(auth_token=TOKEN)
        calls = []
        for index in range(2):
            call = await stack.carrier.place_call(SPEAK_THEN_LISTEN, options)
            await end_with_goodbye(stack, call, index)
            calls.append(call)
        # Each stream went straight to the replica that answered, which had the session open already.
        for call in calls:
            record = stack.state(stack.ran(call)).registry.records[call.call_uuid]
            kinds = [e.kind for e in record.events]
            assert "answer_webhook" in kinds and "prewarm_started" in kinds
        assert len(stack.engine.sessions) == 2


async def test_shared_call_state_expires_after_two_days(pg_url: str, tmp_path: Path) -> None:
    db = Database(pg_url)
    await db.migrate()
    states, store = CallStates(db), CallStore(db)
    try:
        await states.answered(AnswerContext("expiring-call", "default", "+911", "+912", "inbound", {"name": "A"}))
        stored = await states.get("expiring-call")
        assert stored is not None and stored.answer is not None and stored.answer.variables == {"name": "A"}
        soon = time.time() + 2 * 86400 - 3600
        await sweep_expired(store, tmp_path, 30, now=soon, states=states)
        assert await states.get("expiring-call") is not None  # still within two days
        await sweep_expired(store, tmp_path, 30, now=soon + 7200, states=states)
        assert await states.get("expiring-call") is None
    finally:
        await db.aclose()
