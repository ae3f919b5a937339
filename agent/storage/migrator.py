"""Alembic, loaded only when the schema is behind: `alembic upgrade head` on the service's own connection."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from agent.storage.migrations import MIGRATIONS_DIR


def alembic_config(url: str | None = None) -> Config:
    """The Alembic configuration, built in code so it works from an installed package as from a checkout.

    `url` is the service's own (normalised, password included): env.py uses the connection it is handed, the URL
    only tells Alembic the dialect.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser: a literal % doubled
    return config


def upgrade(connection: Connection, url: str) -> None:
    config = alembic_config(url)
    # env.py picks the connection up from here instead of opening its own.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
