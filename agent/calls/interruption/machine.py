"""What the caller heard of the bot, kept true through barge-ins, early clears, dropped streams and new sessions.

Two state machines live here, and only here.

The line (`Line`): PLAYING, bot audio reaches the caller as it arrives; HELD, the local onset detector heard the
caller start to talk and the line was cleared on that hunch, the unheard audio kept, until the model's VAD
confirms it (`speech_started`: a barge-in, back to PLAYING) or does not in time (the held audio plays on, back to
PLAYING, and onsets are ignored for a while); LOST, the carrier stream dropped and Vobiz may reconnect (back to
PLAYING on resume).

Each bot item (`Fate`): PLAYING while its audio plays as it arrives; DROPPED once its audio must never be heard
again (a barge-in on its response, a lost stream, a replaced session); TRUNCATED or DELETED once the model has
been told how much of it was heard, exactly once; RETRIED when the server refused that truncate as too long and
it was sent once more at the server's length, never twice.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.audio.speech_onset import SpeechOnset
from agent.calls.context import CallContext
from agent.calls.interruption.adaptive import AdaptiveTurns
from agent.calls.interruption.states import Audio, Fate, Line, Spawn
from agent.protocol.realtime import client_commands, session_config
from agent.records.record import BargeIn
from agent.waiting import wait_event

EARLY_BACKOFF_S = 3.0  # after an early clear the VAD did not confirm, onsets are not trusted for this long
_SHORTER_THAN = re.compile(r"Audio content of (\d+)ms is already shorter than (\d+)ms")


@dataclass
class _Item:
    response_id: str
    received_ms: float = 0.0
    audio_done: bool = False
    fate: Fate = Fate.PLAYING


@dataclass
class _EarlyClear:
    clear_ms: float = 0.0  # measured once the clear is sent
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class Interruption:
    def __init__(self, ctx: CallContext, clear_line: Callable[[], Awaitable[None]], spawn: Spawn) -> None:
        self._ctx = ctx
        self._clear_line = clear_line
        self._spawn = spawn
        self.mode = ctx.settings.interruption_mode
        agent_turns = self.mode == "adaptive"
        self._server_cancels = session_config.server_cancels_on_barge_in(ctx.prompt, agent_turns=agent_turns)
        self.adaptive = AdaptiveTurns(ctx, self, spawn) if agent_turns else None
        self._line = Line.PLAYING
        self._early: _EarlyClear | None = None  # set exactly while the line is HELD
        self._onsets_ignored_until = 0.0
        self._items: dict[str, _Item] = {}  # in order of first audio
        self._by_response: dict[str, list[str]] = {}
        self._dropped_responses: set[str] = set()
        self._admit: Callable[[str], bool] = lambda _response_id: True
        self.barge_ins = 0

    # --- questions -----------------------------------------------------------------------------------------

    @property
    def line(self) -> Line:
        return self._line

    def fate(self, item_id: str) -> Fate | None:
        item = self._items.get(item_id)
        return None if item is None else item.fate

    def items_of(self, response_id: str | None) -> list[str]:
        """A response's audio items, in order; empty for a response that produced none."""
        return list(self._by_response.get(response_id or "", []))

    def received_ms(self, item_id: str) -> float:
        item = self._items.get(item_id)
        return 0.0 if item is None else item.received_ms

    def wants_words(self, item_id: str) -> bool:
        """Whether an item's transcript still counts: not for an item the caller stopped hearing."""
        item = self._items.get(item_id)
        return item is None or item.fate is Fate.PLAYING

    def mid_answer(self) -> bool:
        """The active response has audio still streaming in."""
        return any(not self._items[i].audio_done for i in self.items_of(self._ctx.responses.active_id))

    # --- bot audio -----------------------------------------------------------------------------------------

    def audio(self, item_id: str, response_id: str, ms: float) -> Audio:
        """An audio delta arrived: count it, unless it belongs to what was interrupted."""
        item = self._items.get(item_id)
        if response_id not in self._dropped_responses and not self._admit(response_id):
            self._dropped_responses.add(response_id)  # cancelled once; its audio never plays
            self._spawn(self._ctx.link.send(client_commands.response_cancel(response_id)), "refused-response")
        if response_id in self._dropped_responses or (item is not None and item.fate is not Fate.PLAYING):
            return Audio.DROP
        if item is None:
            item = self._items[item_id] = _Item(response_id)
            self._by_response.setdefault(response_id, []).append(item_id)
            item.received_ms = ms
            return Audio.FIRST
        item.received_ms += ms
        return Audio.MORE

    def audio_done(self, item_id: str) -> bool:
        """The item's audio is complete; True when it is still to be played to its end."""
        item = self._items.get(item_id)
        if item is not None:
            item.audio_done = True
        return self.wants_words(item_id)

    # --- early barge-in (the line goes PLAYING → HELD → PLAYING) -----------------------------------------

    async def on_onset(self, *, caller_speaking: bool, voiced: bool = True) -> None:
        """The caller seems to start talking over the bot: silence it now, keep what was not heard, and let the
        model's VAD confirm (a barge-in) or not (the bot carries on from where it stopped)."""
        if self.adaptive is not None:
            await self.adaptive.on_onset(caller_speaking=caller_speaking, voiced=voiced)
            return
        ctx, playout = self._ctx, self._ctx.playout
        if self._line is not Line.PLAYING or ctx.ending.closing or caller_speaking:
            return
        if playout.clock() < self._onsets_ignored_until:
            return
        if not self.hold_line("early_clear"):
            return
        early = self._hold()
        self._spawn(self._await_confirmation(early), "early-clear")
        early.clear_ms = await self.send_clear()

    def listen(self, detector: SpeechOnset) -> None:
        """The caller's line detector: the adaptive policy reads the sound's length, voicing and end from it."""
        if self.adaptive is not None:
            self.adaptive.local = detector

    def on_local_sound(self, loud: bool) -> None:
        if self.adaptive is not None:
            self.adaptive.on_local_sound(loud)

    def hold_line(self, kind: str) -> bool:
        """PLAYING → HELD on a hunch: nothing more plays, what was not heard is kept (`release_held` plays it on).
        All bookkeeping, no await: a speech_started handled while the clear is being sent finds the line HELD."""
        ctx, playout = self._ctx, self._ctx.playout
        if self._line is not Line.PLAYING or ctx.ending.closing or playout.held or not playout.is_audible():
            return False
        started = playout.clock()
        heard = playout.hold()
        if ctx.recorder is not None:
            ctx.recorder.cut(started)
        if ctx.echo is not None:
            ctx.echo.cut(started)
        self._line = Line.HELD
        ctx.metrics.early_clears.inc()
        ctx.record.event(kind, heard={k: round(v) for k, v in heard.items()})
        return True

    async def send_clear(self) -> float:
        """Tell the carrier to drop its queue; how long that took (ms)."""
        started = time.monotonic()
        await self._clear_line()
        return (time.monotonic() - started) * 1000

    def release_held(self) -> None:
        """HELD → PLAYING, not an interruption: the held audio plays on from the sample where it stopped."""
        if self._line is Line.HELD:
            self._line = Line.PLAYING
            self._ctx.playout.release()

    async def cut_held(self, reason: str, paused_ms: float, clear_ms: float, transcript: str | None) -> None:
        """HELD → PLAYING, a real interruption: the held audio is dropped, the answer cancelled, and the model
        forgets what the caller did not hear (the caller heard nothing since the hold)."""
        ctx = self._ctx
        if self._line is not Line.HELD:
            return
        self._line = Line.PLAYING
        ctx.metrics.clear_latency.observe(clear_ms / 1000)
        ctx.metrics.barge_ins.inc()
        self.barge_ins += 1
        heard = await self._drop_answer(ctx.playout.clear())
        self._record_barge_in(heard, clear_ms, reason=reason, paused_ms=paused_ms, transcript=transcript)

    async def cut_playing(self, reason: str, paused_ms: float, transcript: str | None) -> None:
        """A provisional resume was a real interruption after all: quiet now, the answer cut to what was heard
        (the part played on included). With nothing audible any more, only an answer still on its way goes."""
        ctx = self._ctx
        if self._line is not Line.PLAYING:
            return
        if self.hold_line("pause"):
            clear_ms = await self.send_clear()
            await self.cut_held(reason, paused_ms, clear_ms, transcript)
            return
        if ctx.responses.active:
            ctx.metrics.barge_ins.inc()
            self.barge_ins += 1
            heard = await self._drop_answer(ctx.playout.clear())
            self._record_barge_in(heard, 0.0, reason=reason, paused_ms=paused_ms, transcript=transcript)

    async def cancel_unheard_answer(self) -> None:
        """The caller talks while the bot is silent: an answer being prepared (none of it heard) is dropped."""
        await self._drop_answer({})

    def _hold(self) -> _EarlyClear:
        self._early = _EarlyClear()
        return self._early

    def _unhold(self) -> _EarlyClear | None:
        """Leave HELD (for PLAYING): the early clear, if one was pending, needs no confirmation any more."""
        early, self._early = self._early, None
        if early is not None:
            self._line = Line.PLAYING
            early.confirmed.set()
        return early

    async def _await_confirmation(self, early: _EarlyClear) -> None:
        if await wait_event(early.confirmed, self._ctx.settings.early_barge_in_confirm_ms / 1000):
            return
        if self._early is not early:
            return
        # No speech_started: a cough, a door, a click. The bot picks up where it was.
        self._unhold()
        playout = self._ctx.playout
        playout.release()
        # Echo or a noisy line would cut the bot again and again: trust only the model's VAD for a while.
        self._onsets_ignored_until = playout.clock() + EARLY_BACKOFF_S
        self._ctx.metrics.early_clear_false_alarms.inc()
        self._ctx.record.event("early_clear_released")

    # --- barge-in --------------------------------------------------------------------------------------------

    async def on_speech_started(self, item_id: str = "", audio_start_ms: int = 0) -> None:
        """The model's VAD heard the caller: if the bot was audible (or held on a hunch), it is a barge-in (the
        adaptive policy pauses instead, and decides)."""
        ctx, playout = self._ctx, self._ctx.playout
        if self.adaptive is not None:
            await self.adaptive.on_speech_started(item_id, audio_start_ms)
            return
        if ctx.ending.closing:
            return
        started = time.monotonic()
        held = playout.held
        early = self._unhold()
        early = early if held else None  # else the held audio was already cleared for good
        audible = early is not None or playout.is_audible(started)
        clear_ms = 0.0
        if early is not None:
            clear_ms = early.clear_ms  # the caller was already not hearing the bot: that clear was the barge-in
        elif audible:
            # First and before anything else: the caller must stop hearing the bot.
            await self._clear_line()
            clear_ms = (time.monotonic() - started) * 1000
        if audible:
            ctx.metrics.clear_latency.observe(clear_ms / 1000)
            ctx.metrics.barge_ins.inc()
            self.barge_ins += 1
        heard = playout.clear() if audible else {}  # after an early clear: nothing has played since
        if audible and ctx.recorder is not None:
            ctx.recorder.cut()  # queued bot audio that was never heard stays out of the recording
        heard = await self._drop_answer(heard, cancel=not self._server_cancels)
        if audible:
            self._record_barge_in(heard, clear_ms)

    def _record_barge_in(
        self,
        heard: dict[str, float],
        clear_ms: float,
        *,
        reason: str = "vad",
        paused_ms: float = 0.0,
        transcript: str | None = None,
    ) -> None:
        record = self._ctx.record
        record.event("barge_in", heard={k: round(v) for k, v in heard.items()})
        cut = next((k for k, v in reversed(heard.items()) if v < self.received_ms(k) - 1), None)
        heard_ms = round(heard.get(cut, 0.0) if cut else 0.0)
        barge = BargeIn(time.time(), cut, heard_ms, round(clear_ms, 2), True, reason, round(paused_ms), transcript)
        record.barge_ins.append(barge)

    # --- the caller's turns (the adaptive policy owns them; otherwise the server does) ------------------------

    def on_speech_stopped(self, item_id: str, audio_end_ms: int) -> None:
        if self.adaptive is not None:
            self.adaptive.on_speech_stopped(item_id, audio_end_ms)

    def on_caller_transcript(self, item_id: str, text: str) -> None:
        if self.adaptive is not None:
            self.adaptive.on_transcript(item_id, text)

    async def on_committed(self, item_id: str) -> None:
        if self.adaptive is not None:
            await self.adaptive.on_committed(item_id)

    def admit_only(self, admit: Callable[[str], bool]) -> None:
        """From now on, a response `admit` refuses is never heard and is cancelled (a voicemail: nothing but the
        message may play)."""
        self._admit = admit

    async def silence(self) -> None:
        """Stop the bot for good although nobody interrupted it: clear the line, cancel what it is saying, and
        let the model forget what the callee did not hear."""
        ctx = self._ctx
        audible = ctx.playout.is_audible() or ctx.playout.held
        self._leave_hold()
        self._line = Line.PLAYING
        heard = ctx.playout.clear()
        if audible:
            await self._clear_line()
        await self._drop_answer(heard)

    # --- the carrier stream drops and comes back (PLAYING/HELD → LOST → PLAYING) ---------------------------

    async def line_lost(self) -> bool:
        """Whatever the carrier had queued is gone: the model is told only what was heard. True when the caller
        lost part of an answer (it should pick up where it stopped)."""
        heard = self._ctx.playout.clear()
        self._leave_hold()
        self._line = Line.LOST
        cut = await self._drop_unheard(heard, unwanted=None)
        return any(ms < self.received_ms(item_id) - 1 for item_id, ms in cut.items())

    def line_back(self) -> None:
        self._line = Line.PLAYING

    # --- what was not heard -----------------------------------------------------------------------------------

    def _leave_hold(self) -> None:
        """Whatever held the line ends without a decision: an early clear waiting for the VAD, an adaptive pause."""
        self._unhold()
        if self.adaptive is not None:
            self.adaptive.abandon()

    async def _drop_answer(self, heard: dict[str, float], *, cancel: bool = True) -> dict[str, float]:
        """The active answer goes for good: what the caller did not hear is dropped and forgotten (see
        `_drop_unheard`), and the response is cancelled unless the server does it itself."""
        active = self._ctx.responses.active_id
        heard = await self._drop_unheard(heard, unwanted=active)
        if active and cancel:
            await self._ctx.link.send(client_commands.response_cancel(active))
        return heard

    async def _drop_unheard(self, heard: dict[str, float], *, unwanted: str | None) -> dict[str, float]:
        """The line was cleared: no audio of the active response plays any more, and the model forgets what the
        caller did not hear. `unwanted` (the caller talked over it) also drops that response's audio still to
        come. Returns what was heard of the items cut now (the playout still knows items cut before)."""
        self._ctx.bot_audio.reset()
        if unwanted is not None:
            self._dropped_responses.add(unwanted)
        for item_id in self.items_of(self._ctx.responses.active_id):
            self._drop(item_id)
        heard = {k: v for k, v in heard.items() if not self._told(k)}
        for item_id, heard_ms in heard.items():
            await self._tell_heard(item_id, heard_ms)
        return heard

    def _drop(self, item_id: str) -> None:
        item = self._items.get(item_id)
        if item is not None and item.fate is Fate.PLAYING:
            item.fate = Fate.DROPPED

    def _told(self, item_id: str) -> bool:
        item = self._items.get(item_id)
        return item is not None and item.fate.told

    async def _tell_heard(self, item_id: str, heard_ms: float) -> None:
        """Make the model's memory match what the caller heard of an item: once, whichever path cut it."""
        item = self._items.get(item_id)
        if item is None or item.received_ms <= 0 or item.fate.told:
            return  # no audio, or already cut to what was heard: nothing more to forget
        received = item.received_ms
        if heard_ms >= received - 1 and item.audio_done:
            return  # the whole item had played: nothing to forget
        ctx = self._ctx
        ctx.record.assistant_interrupted(item_id, heard_ms, received)
        if heard_ms < 1:
            # The caller heard none of it: remove it rather than keep words nobody heard.
            item.fate = Fate.DELETED
            ctx.record.event("item_deleted", item_id=item_id)
            await ctx.link.send(client_commands.delete_item(item_id))
            return
        item.fate = Fate.TRUNCATED
        audio_end_ms = int(min(heard_ms, received))
        ctx.metrics.truncations.inc()
        ctx.record.event("truncate", item_id=item_id, audio_end_ms=audio_end_ms, received_ms=round(received))
        await ctx.link.send(client_commands.truncate(item_id, audio_end_ms))

    async def on_truncate_refused(self, message: str) -> bool:
        """The server's audio ran shorter than our count ("already shorter than"): truncate the latest cut item
        once more at the length the server reports. True when the error was that refusal."""
        match = _SHORTER_THAN.search(message)
        if match is None:
            return False
        latest = next((i for i in reversed(self._items) if self._items[i].fate is Fate.TRUNCATED), None)
        if latest is not None:
            self._items[latest].fate = Fate.RETRIED
            await self._ctx.link.send(client_commands.truncate(latest, int(match.group(1))))
        return True

    # --- a new model session ------------------------------------------------------------------------------

    def cut_unspoken(self) -> None:
        """The session went away mid-answer: its received audio still plays in full, but the transcript runs
        ahead of the audio. Keep only the words that audio can hold, so the new session continues from what the
        caller actually heard rather than skipping what never arrived."""
        record = self._ctx.record
        rate = record.chars_per_ms()
        for item_id, item in self._items.items():
            turn = record.turn_for_item(item_id)
            if item.audio_done or item.fate.told or turn is None or turn.interrupted:
                continue
            # At least the last word goes: the audio may have stopped in the middle of it.
            spoken_ms = max(len(turn.text) / rate, item.received_ms + 1)
            record.assistant_interrupted(item_id, item.received_ms, spoken_ms)

    def new_session(self) -> None:
        """The old session's late deltas must not play: every item it streamed is dropped."""
        for item_id in self._items:
            self._drop(item_id)
