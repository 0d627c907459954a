"""Schemathesis against the live service's own ``/openapi.json``: every operation, a bounded
number of generated requests each (deterministic: ``derandomize``), on a real uvicorn process.

Fails on any 5xx, any answer that breaks the schema declared for it, and any status the
operation does not declare.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import copy_models, serve_models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 15  # per operation: ~25 operations, a few hundred requests, well under a minute


@pytest.fixture(scope="module")
def live_schema(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[schemathesis.BaseSchema]:
    models = copy_models(tiny_models, tmp_path_factory.mktemp("fuzz"))
    with serve_models(models, CONVSERVE_LOG_LEVEL="warning") as (_, url):
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def strategies(operation: schemathesis.APIOperation) -> list[st.SearchStrategy]:
    """Valid requests (random names: mostly 404), valid ones for a real model (the paths'
    ``name`` and ``version`` set to tiny-grey v1) and invalid ones (negative mode)."""
    real = {key: value for key, value in (("name", "tiny-grey"), ("version", "1"))
            if "{" + key + "}" in operation.path}
    found = [operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)]
    if real:
        found.append(operation.as_strategy(path_parameters=real))
    return found


@pytest.mark.slow
def test_every_operation_answers_as_declared(live_schema: schemathesis.BaseSchema) -> None:
    failures, statuses = [], collections.Counter[int]()
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert len(operations) > 15
    for operation in operations:

        @given(case=st.one_of(*strategies(operation)))
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=[not_a_server_error,
                                                      status_code_conformance,
                                                      response_schema_conformance])
            statuses[response.status_code] += 1

        try:
            fuzz()
        except Exception as exc:  # every operation's failure, not just the first
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    seen = f"{len(operations)} operations, answers by status: {dict(sorted(statuses.items()))}"
    assert sum(statuses.values()) >= 5 * len(operations), seen
    assert {200, 400, 404, 422} <= set(statuses), seen  # the generators reach every kind
