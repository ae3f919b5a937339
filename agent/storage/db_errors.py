"""Telling a database outage from a refused record, and describing either for the log.

The record writer retries (and spools while it waits) only errors that may go away by themselves; a record the
database refuses outright would fail again.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

# SQLSTATE classes worth a retry: connection exceptions, transaction rollback (serialization failure,
# deadlock), insufficient resources, operator intervention (admin shutdown, server restarting).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


def is_transient(error: BaseException) -> bool:
    """Errors that may go away by themselves (the database restarting, a dropped connection, a lock)."""
    if isinstance(error, OSError | TimeoutError | sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        if isinstance(error.orig, OSError | TimeoutError):
            return True
        code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(code, str) and code[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


def describe(error: BaseException) -> str:
    """An error for the log: its type and the driver's message, never the SQL or its parameters."""
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else None
    inner = orig if isinstance(orig, BaseException) else error
    text = str(inner).strip().splitlines()[0][:200] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
