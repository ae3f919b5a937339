"""Audio formats on each side of the bridge and how they map onto each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["audio/x-mulaw", "audio/x-l16"]
MODEL_PCM_RATE = 24000  # the only rate the GA API accepts for audio/pcm


@dataclass(frozen=True)
class MediaFormat:
    """A carrier-side format: what Vobiz sends in `media` and what `playAudio` declares."""

    encoding: Encoding
    rate: int

    @property
    def is_mulaw(self) -> bool:
        return self.encoding == "audio/x-mulaw"

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.is_mulaw else 2

    @property
    def bytes_per_ms(self) -> float:
        return self.rate / 1000 * self.bytes_per_sample

    @property
    def content_type(self) -> str:
        return f"{self.encoding};rate={self.rate}"

    def frame_bytes(self, ms: int) -> int:
        return int(self.bytes_per_ms * ms)

    @property
    def model_format(self) -> dict[str, object]:
        """The GA session format the model should use for this carrier format: μ-law passes straight through."""
        return {"type": "audio/pcmu"} if self.is_mulaw else {"type": "audio/pcm", "rate": MODEL_PCM_RATE}

    @property
    def model_bytes_per_ms(self) -> float:
        return 8.0 if self.is_mulaw else MODEL_PCM_RATE / 1000 * 2

    @classmethod
    def parse(cls, content_type: str) -> MediaFormat:
        """Parse `audio/x-l16;rate=16000` (also tolerates spaces, case and a missing rate for μ-law)."""
        parts = [p.strip() for p in content_type.lower().split(";")]
        encoding = parts[0]
        rate = 8000
        for part in parts[1:]:
            key, _, value = part.partition("=")
            if key.strip() in ("rate", "samplerate") and value.strip().isdigit():
                rate = int(value)
        return cls.from_parts(encoding, rate)

    @classmethod
    def from_parts(cls, encoding: str, rate: int) -> MediaFormat:
        enc = encoding.strip().lower()
        if enc in ("audio/x-mulaw", "audio/mulaw", "audio/pcmu", "mulaw"):
            if rate != 8000:
                raise ValueError(f"μ-law is only supported at 8000 Hz, not {rate}")
            return cls("audio/x-mulaw", 8000)
        if enc in ("audio/x-l16", "audio/l16", "l16", "pcm"):
            if rate not in (8000, 16000, 24000):
                raise ValueError(f"unsupported L16 sample rate {rate}")
            return cls("audio/x-l16", rate)
        raise ValueError(f"unsupported audio encoding {encoding!r}")
