"""Text the contract accepts: any string except one holding a NUL character.

JSON carries ``\\u0000`` and Python strings hold it, but PostgreSQL text and JSONB cannot store it
(and file paths end at it), so a NUL is refused when the input is validated, as a field error,
instead of failing in the database. The rule is a plain pattern constraint, so length bounds
added on top stay string constraints and the OpenAPI document states the rule too.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

NO_NUL_PATTERN = r"^[^\u0000]*$"
#: What to tell a caller whose string broke :data:`NO_NUL_PATTERN`.
NUL_MESSAGE = "text must not contain NUL (\\u0000) characters"

Text = Annotated[str, StringConstraints(pattern=NO_NUL_PATTERN)]
