"""What the outbound HTTP handlers (callbacks, operator API, console pages) take from the running app: the
campaign store on its database, and this replica's dialler to wake."""

from __future__ import annotations

from fastapi import Request

from agent.campaigns.dialler import Dialler
from agent.campaigns.store import CampaignStore
from agent.console.auth import app_state


def store_of(request: Request) -> CampaignStore:
    return CampaignStore(app_state(request).store.db)


def wake_dialler(request: Request) -> None:
    """A campaign changed: this replica's dialler (if it runs one) looks at once instead of at its next poll."""
    dialler: Dialler | None = getattr(request.app.state, "campaign_dialler", None)
    if dialler is not None:
        dialler.wake()
