"""Reading spec files: JSON, or YAML with numbers read the way people write them.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot, unsigned exponent) is a *string*; the strict
spec would then refuse ``lr: 1e-3``. This loader reads such scientific notation as floats, as
YAML 1.2 and JSON do.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) with YAML 1.2 floats."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def parse_spec_text(text: str, *, json_only: bool = False) -> Any:
    """The document in ``text``: JSON when ``json_only``, else YAML (a superset of JSON).
    Raises ``ValueError`` with the parser's message."""
    try:
        return json.loads(text) if json_only else yaml.load(text, Loader=_SpecLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(str(exc)) from exc
