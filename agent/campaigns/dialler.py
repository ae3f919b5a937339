"""Placing outbound calls: one at a time (`place_one`) or a campaign's numbers by the database's rules (`Dialler`).

Every replica may run a dialler; they coordinate only through the database (`CampaignStore.claim`), so a number is
dialled by exactly one of them. A dialler that stops (SIGTERM, a rolling deploy) gives back the claims it had not
sent yet; calls already placed are settled by Vobiz's callbacks on whichever replica receives them. A dialler that
dies leaves leases behind that any other dialler reconciles (`CampaignStore.reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from agent.campaigns.store import CampaignStore, Claim, new_id
from agent.campaigns.windows import normalise_number
from agent.carrier.rest import VobizClient
from agent.carrier.rest_errors import (
    VobizApiError,
    VobizAuthError,
    VobizPaymentRequired,
    VobizRateLimited,
    VobizServerError,
    VobizTransportError,
    VobizUnexpectedResponse,
)
from agent.config import Settings
from agent.prompts.library import PromptLibrary
from agent.prompts.loader import Prompt, PromptError
from agent.waiting import wait_event, within

log = logging.getLogger("agent.campaigns")

HANGUP_PATH = "/vobiz/outbound/hangup"
MACHINE_PATH = "/vobiz/outbound/machine"
_MAX_VAR_CHARS = 500  # per variable on the answer URL; Vobiz sends it back with every answer request


class DialError(Exception):
    """A single call that could not be placed; `status` is the HTTP status the API route answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Placed:
    attempt_id: str
    call_id: str


def call_urls(public_url: str, claim: Claim, prompt: Prompt, tag: str | None) -> dict[str, Any]:
    """The make-call fields that bring the call back to this service: the answer URL carries the prompt, its
    variables and the attempt (the answer webhook reads `prompt`, `var_*` and `tag_*`), the hangup URL the
    attempt, and the prompt's answering-machine choice becomes Vobiz's machine-detection fields."""
    query: dict[str, str] = {"prompt": claim.prompt}
    query |= {f"var_{k}": str(v)[:_MAX_VAR_CHARS] for k, v in claim.variables.items()}
    if tag:
        query["tag_campaign"] = tag
    query["tag_attempt"] = claim.attempt_id
    fields: dict[str, Any] = {
        "answer_url": f"{public_url}/vobiz/answer?{urlencode(query)}",
        "hangup_url": f"{public_url}{HANGUP_PATH}?{urlencode({'attempt': claim.attempt_id})}",
    }
    extra: dict[str, Any] = {}
    machine = prompt.meta.answering_machine
    if machine is not None:
        fields["machine_detection"] = "true"
        extra["machine_detection_time"] = machine.detection_time_ms
        if machine.detection == "async":
            extra["machine_detection_url"] = f"{public_url}{MACHINE_PATH}?{urlencode({'attempt': claim.attempt_id})}"
            extra["machine_detection_method"] = "POST"
    if prompt.meta.max_call_duration_s:
        fields["time_limit"] = int(prompt.meta.max_call_duration_s) + 120  # the agent's own wrap-up comes first
    fields["extra"] = extra
    return fields


Verdict = Literal["placed", "refused", "unknown", "released", "systemic"]


async def send(
    store: CampaignStore,
    vobiz: VobizClient,
    public_url: str,
    claim: Claim,
    prompt: Prompt,
    *,
    call_lease_s: float,
    tag: str | None = None,
) -> tuple[Verdict, str]:
    """Mark the attempt `placing`, ask Vobiz for the call and record what came of it; (verdict, detail)."""
    if not await store.placing(claim.attempt_id, call_lease_s):
        return "released", "the claim was given back before it was sent"
    fields = call_urls(public_url, claim, prompt, tag)
    machine_detection = fields.pop("machine_detection", None)
    extra = fields.pop("extra")
    try:
        response = await vobiz.make_call(
            claim.from_number, claim.number, machine_detection=machine_detection, extra=extra, **fields
        )
    except (VobizRateLimited, VobizAuthError, VobizPaymentRequired) as exc:
        # Vobiz refused before placing anything: the number is not charged an attempt.
        retry_at = time.time() + (exc.retry_after or 5.0) if isinstance(exc, VobizRateLimited) else None
        await store.release([claim.attempt_id], retry_at=retry_at, sent=True)
        return ("released" if isinstance(exc, VobizRateLimited) else "systemic"), str(exc)
    except (VobizServerError, VobizTransportError, VobizUnexpectedResponse) as exc:
        # The call may exist: its callbacks (or the lease running out) settle it; dialling again could double it.
        log.warning("make-call for attempt %s has an unknown outcome: %s", claim.attempt_id, exc)
        return "unknown", str(exc)
    except VobizApiError as exc:  # 400 and friends: Vobiz refused this number
        await store.settle(claim.attempt_id, "", "failed", cause=f"api_{exc.status}", error=str(exc)[:500])
        return "refused", str(exc)
    call_id = response.request_uuids[0] if response.request_uuids else ""
    await store.placed(claim.attempt_id, call_id)
    return "placed", call_id


async def place_one(
    store: CampaignStore,
    vobiz: VobizClient,
    settings: Settings,
    prompts: PromptLibrary,
    number: str,
    prompt_name: str,
    variables: Mapping[str, str],
    from_number: str | None = None,
) -> Placed:
    """One outbound call outside any campaign (`POST /calls`, `voice-agent dial`); raises DialError."""
    sender = from_number or settings.outbound_from_number
    if not sender:
        raise DialError(400, "no caller ID: pass a from number or set AGENT_OUTBOUND_FROM_NUMBER")
    try:
        to, sender = normalise_number(number), normalise_number(sender)
    except ValueError as exc:
        raise DialError(400, str(exc)) from None
    bad = [k for k in variables if not k.isidentifier()]
    if bad:
        raise DialError(400, f"variable names must be identifiers: {bad}")
    try:
        prompt = prompts.get(prompt_name).render({"caller": sender, "called": to} | dict(variables))
    except PromptError as exc:
        raise DialError(400, str(exc)) from None
    attempt_id, allowed = await store.single(to, prompt_name, variables)
    if not allowed:
        raise DialError(409, f"{to} is on the do-not-call list")
    claim = Claim(attempt_id, None, None, to, 1, prompt_name, sender, dict(variables))
    verdict, detail = await send(store, vobiz, settings.public_url, claim, prompt, call_lease_s=3600.0)
    if verdict == "placed":
        return Placed(attempt_id, detail)
    if verdict == "unknown":
        raise DialError(502, f"Vobiz did not confirm the call (it may still ring): {detail}")
    if verdict in ("released", "systemic"):
        await store.settle(attempt_id, "", "failed", cause="not_placed", error=detail[:500])
    raise DialError(502, f"Vobiz refused the call: {detail}")


def default_owner() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{new_id('')[:6]}"


class Dialler:
    """Claims and dials the numbers of running campaigns until stopped.

    `only` limits it to some campaigns (the CLI dials its own); otherwise every running campaign is served.
    """

    def __init__(
        self,
        store: CampaignStore,
        vobiz: VobizClient,
        settings: Settings,
        prompts: PromptLibrary,
        *,
        only: set[str] | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.vobiz = vobiz
        self.settings = settings
        self.prompts = prompts
        self.only = only
        self.owner = owner or default_owner()
        self.poll_s = settings.campaign_poll_s
        self.dialled = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._names: dict[str, str] = {}
        self._next_reconcile = 0.0
        self.should_claim: Callable[[], bool] = lambda: True  # e.g. not while the replica drains

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="campaign-dialler")
        return self._task

    def wake(self) -> None:
        """Something freed a slot or made a number due (a callback here): look again now."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                busy = await self._pass()
            except Exception as exc:  # the database or Vobiz hiccuped: keep the dialler alive, try again soon
                log.error("campaign dialler pass failed: %r", exc)
                busy = False
            if busy or self._stopping:
                continue
            self._wake.clear()
            await wait_event(self._wake, self.poll_s)

    async def _pass(self) -> bool:
        now = time.time()
        if now >= self._next_reconcile:
            self._next_reconcile = now + max(self.poll_s * 10, 5.0)
            released, closed = await self.store.reconcile()
            if released or closed:
                log.warning("leases ran out: %d never-sent claims released, %d attempts closed", released, closed)
        if not self.should_claim():
            return False
        ids = sorted(self.only) if self.only is not None else await self.store.running()
        claimed = False
        for campaign_id in ids:
            if self._stopping:
                break
            claims = await self.store.claim(
                campaign_id, self.owner, limit=50, lease_s=self.settings.campaign_claim_lease_s
            )
            for claim in claims:
                task = asyncio.create_task(self._send(claim), name=f"dial-{claim.attempt_id}")
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            claimed |= bool(claims)
            if not claims:
                await self.store.complete_finished(campaign_id)
        return claimed

    async def _send(self, claim: Claim) -> None:
        if self._stopping:
            await self.store.release([claim.attempt_id])
            return
        try:
            prompt = self.prompts.get(claim.prompt).render({"called": claim.number} | claim.variables)
        except PromptError as exc:
            log.error("campaign %s: prompt %s unusable: %s", claim.campaign_id, claim.prompt, exc)
            await self.store.release([claim.attempt_id])
            if claim.campaign_id:
                with contextlib.suppress(Exception):
                    await self.store.set_state(claim.campaign_id, "pause")
            return
        tag = await self._name(claim.campaign_id)
        verdict, detail = await send(
            self.store,
            self.vobiz,
            self.settings.public_url,
            claim,
            prompt,
            call_lease_s=self.settings.campaign_call_lease_s,
            tag=tag,
        )
        if verdict == "placed":
            self.dialled += 1
        elif verdict == "systemic" and claim.campaign_id:
            log.error("campaign %s paused: Vobiz refused to place calls: %s", claim.campaign_id, detail)
            with contextlib.suppress(Exception):
                await self.store.set_state(claim.campaign_id, "pause")
        elif verdict == "refused":
            self.wake()

    async def _name(self, campaign_id: str | None) -> str | None:
        if campaign_id is None:
            return None
        if campaign_id not in self._names:
            self._names[campaign_id] = str((await self.store.find(campaign_id))["name"])[:200]
        return self._names[campaign_id]

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Stop claiming, give back what was claimed but not sent, let in-flight make-calls finish."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await within(timeout_s, asyncio.shield(self._task))
        if self._sends:
            await asyncio.wait(list(self._sends), timeout=timeout_s)
        for task in list(self._sends):
            task.cancel()  # past the deadline: the lease and Vobiz's callbacks settle these attempts
