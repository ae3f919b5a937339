"""Alembic migrations for the call-record schema (see `agent.storage.database.Database.migrate`)."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
