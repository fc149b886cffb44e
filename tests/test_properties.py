"""Property-based tests (Hypothesis) of the parsers every request goes through: step strings and
the job spec. Whatever the input, the answer is a value or a ValueError naming the problem,
never another exception; and what is accepted reads back as itself."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api_schemas.examples import MINIMAL_SPEC
from api_schemas.spec import JobSpec
from api_schemas.steps import StepCount, to_iterations

pytestmark = pytest.mark.unit
UNITS = st.sampled_from(["it", "ep"])


@given(st.integers(min_value=0, max_value=10**15), UNITS, st.sampled_from(["", " ", "\t"]))
def test_a_written_step_count_parses_to_its_amount_and_unit(
    amount: int, unit: str, space: str
) -> None:
    parsed = StepCount.parse(f"{space}{amount}{space}{unit}{space}")
    assert (parsed.amount, parsed.unit) == (amount, unit)
    assert StepCount.parse(str(parsed)) == parsed  # the normal form reads back as itself


@given(st.text(max_size=40))
@example("\u0663it")  # ARABIC-INDIC DIGIT THREE: int() reads it, a spec must not
@example("500it\n")
def test_any_text_is_a_step_count_or_a_clear_error(text: str) -> None:
    try:
        parsed = StepCount.parse(text)
    except ValueError as error:
        assert "'500it' or '20ep'" in str(error)
        return
    assert str(parsed) == f"{parsed.amount}{parsed.unit}"
    assert text.isascii()  # other scripts' digits (and spaces) are no step counts


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=1, max_value=10**6))
def test_epochs_are_whole_multiples_of_the_epoch_length(amount: int, per_epoch: int) -> None:
    assert to_iterations(f"{amount}ep", per_epoch) == amount * per_epoch
    assert to_iterations(f"{amount}it", per_epoch) == amount


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
SECTIONS = ["model", "dataset", "training", "pruning", "seed", "replicates", "name", "labels"]


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """The minimal spec with a few of its fields (or their parents) replaced by any JSON."""
    spec: dict[str, Any] = {
        k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL_SPEC.items()
    }
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        section = draw(st.sampled_from(SECTIONS))
        if isinstance(spec.get(section), dict) and draw(st.booleans()):
            key = draw(st.sampled_from([*spec[section], "extra"]))
            spec[section][key] = draw(JSON)
        else:
            spec[section] = draw(JSON)
    return spec


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_any_spec_is_accepted_or_refused_with_field_errors(raw: dict[str, Any]) -> None:
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as error:
        assert error.errors() and all(e["loc"] for e in error.errors())
        return
    again = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.spec_hash() == spec.spec_hash()
