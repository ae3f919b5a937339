"""Alembic migrations for the call-record schema (see `agent.storage.database.Database.migrate`)."""
