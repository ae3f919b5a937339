"""What one running agent holds: settings, metrics, the call registry and process-wide clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.calls.registry import CallRegistry
from agent.carrier.rest import VobizClient
from agent.config import Settings
from agent.model.connection import ModelConnector
from agent.observability.metrics import Metrics
from agent.prompts.loader import Prompt, load_prompt


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    registry: CallRegistry
    connector: ModelConnector
    vobiz: VobizClient | None
    prompts: Callable[[str], Prompt]


def prompt_source(directory: Path) -> Callable[[str], Prompt]:
    """Read prompts from disk on each call, so edits apply to the next call without a restart."""

    def get(name: str) -> Prompt:
        return load_prompt(directory, name)

    return get
