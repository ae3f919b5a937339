"""Codecs, formats and the per-call converters: frequencies survive, frames join without clicks."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.codecs import float_to_pcm16, l16_to_pcm16, mulaw_to_pcm16, pcm16_to_l16, pcm16_to_mulaw
from agent.audio.formats import MediaFormat
from agent.audio.transcode import BotAudioConverter, ByteOrderDetector, CallerAudioConverter
from tests.signals import dominant_hz, max_step_ratio, tone


def test_mulaw_reference_points() -> None:
    # G.711 anchors: silence, full scale both ways.
    assert pcm16_to_mulaw(np.array([0, 32767, -32768], dtype=np.int16)) == b"\xff\x80\x00"
    assert mulaw_to_pcm16(b"\xff\x80\x00\x7f").tolist() == [0, 32124, -32124, 0]


def test_mulaw_round_trip_snr() -> None:
    x = tone(440, 8000, 1000, amplitude=0.5)
    y = mulaw_to_pcm16(pcm16_to_mulaw(x))
    noise = (y.astype(float) - x) ** 2
    snr = 10 * np.log10(np.mean(x.astype(float) ** 2) / np.mean(noise))
    assert snr > 30


def test_l16_byte_orders_and_odd_length() -> None:
    x = np.array([1, -2, 300], dtype=np.int16)
    assert l16_to_pcm16(pcm16_to_l16(x)).tolist() == [1, -2, 300]
    assert l16_to_pcm16(x.astype(">i2").tobytes(), big_endian=True).tolist() == [1, -2, 300]
    with pytest.raises(ValueError, match="odd length"):
        l16_to_pcm16(b"\x00\x01\x02")


def test_float_to_pcm16_clips() -> None:
    assert float_to_pcm16(np.array([2.0, -2.0, 0.5])).tolist() == [32767, -32768, 16384]


@pytest.mark.parametrize(
    ("content_type", "encoding", "rate", "frame"),
    [
        ("audio/x-mulaw;rate=8000", "audio/x-mulaw", 8000, 160),
        ("audio/x-l16;rate=8000", "audio/x-l16", 8000, 320),
        ("audio/x-l16; rate=16000", "audio/x-l16", 16000, 640),
        ("AUDIO/X-L16;rate=24000", "audio/x-l16", 24000, 960),
    ],
)
def test_media_format_parse(content_type: str, encoding: str, rate: int, frame: int) -> None:
    fmt = MediaFormat.parse(content_type)
    assert (fmt.encoding, fmt.rate, fmt.frame_bytes(20)) == (encoding, rate, frame)


@pytest.mark.parametrize("bad", ["audio/x-mulaw;rate=16000", "audio/x-l16;rate=44100", "audio/ogg"])
def test_media_format_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        MediaFormat.parse(bad)


def _through_caller(fmt: MediaFormat, x: np.ndarray, *, big: bool = False, order: str = "auto") -> np.ndarray:
    conv = CallerAudioConverter(fmt, order)
    frame = fmt.rate // 50
    out = bytearray()
    for i in range(0, len(x), frame):
        chunk = x[i : i + frame]
        raw = pcm16_to_mulaw(chunk) if fmt.is_mulaw else chunk.astype(">i2" if big else "<i2").tobytes()
        out += conv.convert(raw)
    return mulaw_to_pcm16(bytes(out)) if fmt.is_mulaw else l16_to_pcm16(bytes(out))


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("big", [False, True])
def test_caller_l16_reaches_model_at_24k_same_frequency_without_clicks(rate: int, big: bool) -> None:
    x = tone(350, rate, 2000, amplitude=0.4)
    y = _through_caller(MediaFormat("audio/x-l16", rate), x, big=big)
    assert len(y) == pytest.approx(2000 * 24, rel=0.05)
    steady = y[2400:-2400]  # skip the detector's first frames and the filter edge
    assert dominant_hz(steady, 24000) == pytest.approx(350, abs=3)
    assert max_step_ratio(steady, 350, 24000) < 1.3


def test_caller_mulaw_passes_through_untouched() -> None:
    conv = CallerAudioConverter(MediaFormat("audio/x-mulaw", 8000))
    payload = bytes(range(160))
    assert conv.convert(payload) == payload


def test_byte_order_detector_locks_and_ignores_silence() -> None:
    x = tone(200, 16000, 400, amplitude=0.2)
    det = ByteOrderDetector()
    for _ in range(10):
        assert det.observe(b"\x00" * 640) is False  # silence is no evidence
    assert not det.locked
    for i in range(0, len(x), 320):
        det.observe(x[i : i + 320].astype(">i2").tobytes())
    assert det.locked and det.big_endian


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_bot_audio_24k_reaches_caller_rate_same_frequency_without_clicks(rate: int) -> None:
    conv = BotAudioConverter(MediaFormat("audio/x-l16", rate))
    x = tone(500, 24000, 1500, amplitude=0.5)
    out = bytearray()
    for i in range(0, len(x), 2400):  # 100 ms deltas, like the model sends
        out += conv.convert(pcm16_to_l16(x[i : i + 2400]))
    out += conv.finish_item()
    y = l16_to_pcm16(bytes(out))
    assert len(y) == pytest.approx(1500 * rate / 1000, abs=rate / 1000 * 2)
    steady = y[rate // 20 : -rate // 20]
    assert dominant_hz(steady, rate) == pytest.approx(500, abs=3)
    assert max_step_ratio(steady, 500, rate) < 1.3
