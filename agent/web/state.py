"""What one running agent holds: settings, metrics, the call registry and process-wide clients."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.calls.registry import CallRegistry
from agent.carrier.rest import VobizClient
from agent.config import Settings
from agent.model.connection import ModelConnector
from agent.observability.health import ModelReachability
from agent.observability.metrics import Metrics
from agent.prompts.library import PromptLibrary
from agent.storage import CallStore, RecordWriter


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    registry: CallRegistry
    connector: ModelConnector
    vobiz: VobizClient | None
    prompts: PromptLibrary
    model_probe: ModelReachability
    store: CallStore
    records: RecordWriter
    draining: bool = field(default=False)
