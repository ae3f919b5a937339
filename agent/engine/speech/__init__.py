"""Offline speech for the local Realtime engine: eSpeak NG synthesis, PocketSphinx recognition, a scripted dialogue.

Everything here runs on bundled data (the ``espeakng-loader`` and ``pocketsphinx`` wheels); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ["SIM_EXTRA_HINT", "missing_packages"]

SIM_EXTRA_HINT: Final = "pip install 'vobiz-voice-agent[sim]'"
"""How to get the optional packages (the ``sim`` extra) that this speech needs."""


def missing_packages(*modules: str) -> list[str]:
    """Which of these top-level modules are not installed, found without importing them (PocketSphinx is only
    ever loaded in the recogniser's worker processes, and eSpeak NG on first synthesis)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a blocked import, or a module set to None in sys.modules
            found = False
        if not found:
            absent.append(module)
    return absent
