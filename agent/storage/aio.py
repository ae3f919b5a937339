"""SQLAlchemy's asyncio engine without its ORM session: import the async engine types from here.

The `sqlalchemy.ext.asyncio` package module also imports its ORM session, and with it the whole ORM (~6 MB that
would stay in every replica's memory; the service only runs Core statements). Its engine and result modules need
none of that, so they are imported here under the real package module with its `__init__` held back until
something asks the package for a name it does not have yet (the ORM session, in a tool or a test): then it runs
as usual, and every class is the same object either way.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys
from types import ModuleType
from typing import Any

_PACKAGE = "sqlalchemy.ext.asyncio"


def _package_without_init() -> None:
    if _PACKAGE in sys.modules:  # imported already (in full, or by an earlier call): nothing to hold back
        return
    spec = importlib.util.find_spec(_PACKAGE)
    assert spec is not None and spec.loader is not None
    loader = spec.loader
    package: ModuleType = importlib.util.module_from_spec(spec)

    submodules = {info.name for info in pkgutil.iter_modules(spec.submodule_search_locations)}

    def complete(name: str) -> Any:
        """The first name that is not a submodule (those are imported as usual): run the package's `__init__`."""
        if name in submodules or (name.startswith("__") and name != "__all__"):  # probes, not uses
            raise AttributeError(name)
        delattr(package, "__getattr__")
        loader.exec_module(package)
        return getattr(package, name)

    setattr(package, "__getattr__", complete)  # noqa: B010 - a module-level __getattr__ (PEP 562)
    sys.modules[_PACKAGE] = package
    setattr(sys.modules["sqlalchemy.ext"], "asyncio", package)  # noqa: B010


_package_without_init()

from sqlalchemy.ext.asyncio.engine import AsyncConnection, AsyncEngine, create_async_engine  # noqa: E402

__all__ = ["AsyncConnection", "AsyncEngine", "create_async_engine"]
