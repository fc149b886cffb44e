"""Small SQL helpers shared by the query modules."""

from __future__ import annotations

from typing import Any, cast

import sqlalchemy as sa


def rowcount(result: sa.Result[Any]) -> int:
    """Rows matched by an UPDATE/DELETE: how a compare-and-set learns whether it won."""
    return cast(sa.CursorResult[Any], result).rowcount
