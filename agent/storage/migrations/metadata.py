"""Every table the service declares, in one metadata: what autogenerate compares the database with, and what the
test that the migrations create exactly this schema compares it with."""

from __future__ import annotations

from sqlalchemy import MetaData

import agent.campaigns.tables
import agent.storage.call_state
import agent.storage.nonces  # noqa: F401 - each registers its tables on the shared metadata
from agent.storage.tables import metadata


def declared_metadata() -> MetaData:
    return metadata
