"""Signal helpers for tests: make tones, find their frequency, detect clicks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def tone(hz: float, rate: int, ms: int, amplitude: float = 0.3, phase: float = 0.0) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (np.sin(2 * np.pi * hz * t + phase) * amplitude * 32767).astype(np.int16)


def dominant_hz(samples: npt.NDArray[np.int16], rate: int) -> float:
    """Peak of a windowed FFT, refined by parabolic interpolation."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(x))
    k = int(np.argmax(spectrum[1:]) + 1)
    if 1 <= k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k_refined = k + 0.5 * (a - c) / (a - 2 * b + c)
    else:
        k_refined = float(k)
    return float(k_refined * rate / len(samples))


def max_step_ratio(samples: npt.NDArray[np.int16], hz: float, rate: int) -> float:
    """Largest sample-to-sample jump relative to the largest a clean sine of this level can make.

    A click (a discontinuity at a frame boundary) shows up as a jump well above 1.
    """
    x = samples.astype(np.float64)
    amplitude = np.sqrt(2) * np.sqrt(np.mean(x**2))
    limit = amplitude * 2 * np.sin(np.pi * hz / rate)
    return float(np.max(np.abs(np.diff(x))) / limit) if limit else float("inf")
