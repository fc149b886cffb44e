"""What the artifact store holds of tenants' uploads, as tests check it."""

from __future__ import annotations

from typing import Any

from service.state import state_of


def stored_uploads(live: Any) -> dict[str, bytes | None]:
    """Every uploaded file in the live service's store, by key (``uploads/<tenant>/…``)."""
    store = state_of(live.app).artifacts
    return {item.key: store.read_bytes(item.key) for item in store.list("uploads/")}
