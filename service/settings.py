"""The service's configuration: ``LTH_*`` environment variables (pydantic-settings).

The class lives in :mod:`store.settings` because the API and the workers share it (the worker
must not import the service); this module is its public name on the service side.
"""

from __future__ import annotations

from store.settings import MiB, Settings

__all__ = ["MiB", "Settings"]
