"""Alembic, loaded only when the schema is behind: `alembic upgrade head` on the service's own connection."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from agent.storage.database import MIGRATIONS_DIR, normalise_url


def alembic_config(url: str | URL | None = None) -> Config:
    """The Alembic configuration, built in code so it works from an installed package as from a checkout."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        rendered = normalise_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(connection: Connection, url: URL) -> None:
    config = alembic_config(url)
    # env.py picks the connection up from here instead of opening its own.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
