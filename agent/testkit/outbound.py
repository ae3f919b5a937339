"""A simulated Vobiz for outbound calls: the make-call REST endpoint, and callees who answer, are answering
machines, are busy, do not answer, or cannot be reached.

`OutboundSim.client()` is a `VobizClient` whose requests never leave the process (an httpx mock transport):
`POST /Call/` answers like Vobiz (`201 {"message": "call fired", "request_uuid": …}`) and then plays the call
the way Vobiz reports one (protocol reference §1.1, §4.3, §5.2): `Event=Ring` to the answer URL while it rings,
then either a final hangup callback (`CallStatus` busy / no-answer / failed with the matching `HangupCause`,
`Duration=0`), or an answered call run by the carrier simulator (`CarrierSim.place_call` with the answer URL
the agent gave, so its query comes back; `StartApp`, the stream, after-stream XML and the hangup to hangup_url).
Machine detection follows the request: synchronous (`Machine=true|false` on the answer request) or asynchronous
(`Event=MachineDetection` with `Machine` posted to machine_detection_url shortly after the answer). A machine
plays a greeting (speech-like bursts), then a beep, then records silence.

`DELETE /Call/{uuid}/` hangs a call up (204; 404 once it is over). Requests are authenticated as Vobiz does
(`X-Auth-ID` / `X-Auth-Token` headers, the auth id in the path; 401 otherwise) when the simulator has an
`auth_token`. Two ways in: `client()`, a `VobizClient` whose requests never leave the process (for an agent built
in-process with `create_app(vobiz=…)`), or `serve()`, the same API on a loopback HTTP port, for an agent (or a
`voice-agent campaign run`) in another process that is pointed at it with `VOBIZ_API_URL`. `voice-agent loadtest
--outbound` drives a campaign through an agent that way; nothing here needs an account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.carrier.rest import VobizClient
from agent.testkit.carrier import (
    CallEndedWithoutStream,
    CallerAudio,
    CarrierProtocolError,
    CarrierSim,
    ScriptItem,
    Segment,
    SimCall,
    SimCallOptions,
    vobiz_signature_headers,
)
from agent.testkit.local_server import listening_socket
from agent.waiting import wait_event

Answer = Literal["person", "machine", "busy", "no_answer", "failed"]
ANSWERS: tuple[str, ...] = get_args(Answer)
_FINALS: Mapping[str, tuple[str, str]] = {
    "busy": ("busy", "USER_BUSY"),
    "no_answer": ("no-answer", "NO_ANSWER"),
    "failed": ("failed", "CALL_REJECTED"),
}


@dataclass(frozen=True)
class Callee:
    """How one dial of a number goes."""

    answer: Answer = "person"
    ring_ms: float = 100.0
    talk_ms: float = 1500.0  # a person hangs up this long after answering, unless the agent ends first
    script: Sequence[ScriptItem] = ()  # what a person says (default: listens)
    greeting_ms: float = 1500.0  # a machine's greeting, before its beep
    beep: bool = True
    detect_ms: float = 300.0  # asynchronous detection: the verdict this long after the answer
    machine_timeout_s: float = 30.0  # a machine stops recording after this
    converse: Callable[[SimCall], Awaitable[None]] | None = None
    """What a person does once the call is up (a load-test scenario); default: listen `talk_ms`, hang up. The
    simulator hangs up once it returns, if the agent has not."""


Behaviour = Callable[[str, int], Callee]
"""(number dialled, how many times it has been dialled including this one) → how this dial goes."""


def machine_greeting(greeting_ms: float, beep: bool = True) -> list[Segment]:
    """Speech-like bursts with short pauses, then a 1 kHz beep, then the silence of a recording machine."""
    parts: list[Segment] = []
    left, seed = greeting_ms, 0
    while left > 0:
        burst = min(600.0, left)
        parts.append(CallerAudio.noise(burst, 0.15, seed=seed))
        left -= burst
        seed += 1
        if left > 0:
            pause = min(200.0, left)
            parts.append(CallerAudio.silence(pause))
            left -= pause
    if beep:
        parts.append(CallerAudio.tone(1000, 400, 0.3))
    parts.append(CallerAudio.silence(120_000))
    return parts


@dataclass
class Dial:
    """One make-call request as the simulator received it, and how it went."""

    call_uuid: str
    to: str
    from_: str
    body: dict[str, object]
    nth: int
    callee: Callee
    received: float = field(default_factory=time.monotonic)
    answered: bool = False
    ended: bool = False
    result: str | None = None
    call: SimCall | None = None
    webhooks: list[tuple[str, str, int | None]] = field(default_factory=list)  # (event, url, status)
    reported: bool = False  # its hangup callback went out (or it is over without one)


def _always(callee: Callee) -> Behaviour:
    def behaviour(_number: str, _nth: int) -> Callee:
        return callee

    return behaviour


class OutboundSim:
    def __init__(
        self,
        behaviour: Behaviour | Callee = Callee(),
        *,
        auth_token: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.behaviour: Behaviour = behaviour if callable(behaviour) else _always(behaviour)
        self.auth_token = auth_token
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self.dials: list[Dial] = []
        self.by_uuid: dict[str, Dial] = {}
        self.per_number: Counter[str] = Counter()
        self.live = 0  # calls placed whose hangup callback has not gone out yet
        self.max_live = 0
        self.errors: list[str] = []
        self.refused = 0  # REST requests refused for bad credentials
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._by_hangup_url: dict[str, Dial] = {}
        # A call counts as live until its hangup callback goes out: that is when the agent learns it is over.
        self._http.event_hooks["request"].append(self._on_request)

    async def _on_request(self, request: httpx.Request) -> None:
        dial = self._by_hangup_url.get(str(request.url))
        if dial is not None and b"Event=Hangup" in request.content:
            self._over(dial)

    def _over(self, dial: Dial) -> None:
        if not dial.reported:
            dial.reported = True
            self.live -= 1
            self._by_hangup_url.pop(str(dial.body.get("hangup_url") or ""), None)
            self._notify()

    def client(self, auth_id: str = "MA_SIMULATED", auth_token: str | None = None) -> VobizClient:
        token = auth_token or self.auth_token or "simulated-token"
        return VobizClient(
            auth_id, token, "https://api.vobiz.simulated/api/v1", transport=httpx.MockTransport(self._handle)
        )

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """The REST API on an HTTP port (0: any free one): yields the base URL to give the agent as
        `VOBIZ_API_URL`. The socket listens before this yields, so the agent can dial at once."""

        async def endpoint(request: Request) -> Response:
            status, body = await self._route(request.method, request.url.path, request.headers, await request.body())
            return JSONResponse(body, status_code=status) if body is not None else Response(status_code=status)

        app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST", "DELETE"])])
        sock = listening_socket(host, port)
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", log_config=None))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="outbound-sim-http")
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        try:
            yield f"http://{shown}:{sock.getsockname()[1]}/api/v1"
        finally:
            server.should_exit = True
            await task
            sock.close()

    # --- REST -------------------------------------------------------------------------------------------------

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        status, body = await self._route(request.method, request.url.path, request.headers, request.content)
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status)

    async def _route(
        self, method: str, path: str, headers: Mapping[str, str], content: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        parts = [p for p in path.split("/") if p]
        if "Account" not in parts or parts.index("Account") + 1 >= len(parts):
            return 404, {"error": "not found"}
        account = parts[parts.index("Account") + 1]
        if self.auth_token and (headers.get("x-auth-token") != self.auth_token or headers.get("x-auth-id") != account):
            self.refused += 1
            return 401, {"error": "authentication credentials were not provided or are invalid"}
        if method == "POST" and parts[-1:] == ["Call"]:
            try:
                body = json.loads(content or b"{}")
            except ValueError:
                return 400, {"error": "the body is not JSON"}
            return self._make_call(body if isinstance(body, dict) else {})
        if method == "DELETE" and len(parts) >= 2 and parts[-2] == "Call":
            return self._hangup(parts[-1])
        return 404, {"error": "not found"}

    def _make_call(self, body: dict[str, object]) -> tuple[int, dict[str, Any] | None]:
        missing = [k for k in ("from", "to", "answer_url") if not body.get(k)]
        if missing:
            return 400, {"error": f"missing {', '.join(missing)}"}
        to, sender = str(body["to"]), str(body["from"])
        self.per_number[to] += 1
        nth = self.per_number[to]
        dial = Dial(str(uuid.uuid4()), to, sender, body, nth, self.behaviour(to, nth))
        self.dials.append(dial)
        self.by_uuid[dial.call_uuid] = dial
        if body.get("hangup_url"):
            self._by_hangup_url[str(body["hangup_url"])] = dial
        self.live += 1
        self.max_live = max(self.max_live, self.live)
        task = asyncio.get_running_loop().create_task(self._run(dial), name=f"sim-outbound-{dial.call_uuid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._notify()
        return 201, {"api_id": str(uuid.uuid4()), "request_uuid": dial.call_uuid, "message": "call fired"}

    def _hangup(self, call_uuid: str) -> tuple[int, dict[str, Any] | None]:
        dial = self.by_uuid.get(call_uuid)
        if dial is None or dial.ended:
            return 404, {"error": "call not found"}
        if dial.call is not None:
            call = dial.call
            task = asyncio.get_running_loop().create_task(call.hangup())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return 204, None

    # --- one call ---------------------------------------------------------------------------------------------

    async def _post(self, dial: Dial, url: str, fields: Mapping[str, str], event: str) -> None:
        headers = {"User-Agent": "Vobiz"}
        status: int | None = None
        for retry in range(4):  # like Vobiz: a failed callback is retried up to 3 times, backing off
            if retry:
                await asyncio.sleep(0.1 * 2**retry)
            if self.auth_token:
                headers |= vobiz_signature_headers(self.auth_token, url)  # a fresh nonce for each try
            try:
                response = await self._http.post(url, data=dict(fields), headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                status = None
                error = f"{event} {url}: {exc!r}"
            else:
                error = f"{event} {url}: HTTP {status}"
                if 200 <= status < 300:
                    break
        else:
            self.errors.append(error)
        dial.webhooks.append((event, url, status))

    def _fields(self, dial: Dial, status: str, event: str) -> dict[str, str]:
        return {
            "CallUUID": dial.call_uuid,
            "RequestUUID": dial.call_uuid,
            "From": dial.from_,
            "To": dial.to,
            "Direction": "outbound",
            "CallStatus": status,
            "Event": event,
        }

    async def _run(self, dial: Dial) -> None:
        try:
            await self._play(dial)
        except Exception as exc:  # a simulator failure must show up in the test, not vanish in a task
            self.errors.append(f"{dial.to}: {exc!r}")
        finally:
            dial.ended = True
            self._over(dial)
            self._notify()

    async def _play(self, dial: Dial) -> None:
        body, callee = dial.body, dial.callee
        answer_url = str(body["answer_url"])
        hangup_url = str(body.get("hangup_url") or answer_url)
        await self._post(dial, answer_url, self._fields(dial, "ringing", "Ring"), "Ring")
        await asyncio.sleep(callee.ring_ms / 1000)  # the phone rings (simulated time, not a test wait)
        if callee.answer in _FINALS:
            status, cause = _FINALS[callee.answer]
            fields = self._fields(dial, status, "Hangup") | {
                "HangupCause": cause,
                "HangupSource": "Callee" if callee.answer != "failed" else "Vobiz",
                "Duration": "0",
                "BillDuration": "0",
            }
            dial.result = callee.answer
            await self._post(dial, hangup_url, fields, "Hangup")
            return
        machine = callee.answer == "machine"
        detection = str(body.get("machine_detection") or "")
        detection_url = str(body.get("machine_detection_url") or "")
        extra: dict[str, str] = {}
        if detection and not detection_url:
            extra["Machine"] = "true" if machine else "false"
        script: Sequence[ScriptItem] = machine_greeting(callee.greeting_ms, callee.beep) if machine else callee.script
        options = SimCallOptions(
            direction="outbound",
            from_=dial.from_,
            to=dial.to,
            hangup_url=hangup_url,
            auth_token=self.auth_token,
            extra_fields=extra,
            ring_callback=False,  # the Ring went out above, before the ringing time
            record_frames=False,
        )
        parts = urlsplit(answer_url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        carrier = CarrierSim(f"{parts.scheme}://{parts.netloc}", answer_path=path, http=self._http)
        dial.answered = True
        try:
            call = await carrier.place_call(script, options, call_uuid=dial.call_uuid)
        except CallEndedWithoutStream:
            dial.result = "machine" if machine else "person"  # the agent answered with <Hangup/>
            return
        except CarrierProtocolError as exc:
            self.errors.append(f"{dial.to}: {exc}")
            return
        dial.call = call
        dial.result = "machine" if machine else "person"
        if detection and detection_url:
            await self._detect_later(dial, call, detection_url, machine)
        if callee.converse is not None and not machine:
            try:
                await callee.converse(call)
            finally:
                if not call.ended.is_set():
                    await call.hangup()
            return
        limit = callee.machine_timeout_s if machine else callee.talk_ms / 1000
        if not await wait_event(call.ended, limit):
            await call.hangup()

    async def _detect_later(self, dial: Dial, call: SimCall, url: str, machine: bool) -> None:
        async def report() -> None:
            if await wait_event(call.ended, dial.callee.detect_ms / 1000):
                return
            fields = self._fields(dial, "in-progress", "MachineDetection") | {"Machine": "true" if machine else "false"}
            await self._post(dial, url, fields, "MachineDetection")

        task = asyncio.get_running_loop().create_task(report())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- waiting ----------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:  # noqa: ASYNC109 - a per-wait deadline
        """Wait (no polling) until `predicate()` holds, re-checked whenever a dial starts or ends."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.errors:
                raise AssertionError(f"outbound simulator errors: {self.errors[:5]}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} not reached in {timeout:g} s ({len(self.dials)} dials, {self.live} live)")
            self._changed.clear()
            await wait_event(self._changed, left)

    @property
    def idle(self) -> bool:
        """Every dial is over, its last callback answered."""
        return all(d.ended for d in self.dials)

    def dials_to(self, number: str) -> list[Dial]:
        return [d for d in self.dials if d.to == number]

    async def aclose(self) -> None:
        for dial in self.dials:
            if dial.call is not None and not dial.call.ended.is_set():
                with contextlib.suppress(Exception):
                    await dial.call.hangup()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_http:
            await self._http.aclose()
