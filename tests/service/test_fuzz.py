"""Property-based fuzzing of the OpenAPI schema (schemathesis) against a real server:
whatever it sends, the service never answers 5xx and its answers match the schema."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.service.conftest import make_settings, running

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def api_schema(
    bundle_dir: Path, index_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz") / "index"
    shutil.copytree(index_template, root)
    service = make_settings(
        bundle_dir,
        root,
        security={"api_key": KEY},
        cache={"enabled": False},
        limits={"max_body_bytes": 200_000},
    )
    with running(service) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_no_input_gives_a_server_error(api_schema: Any) -> None:
    checked = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(_operations(api_schema), modes):
        if operation.method.upper() == "GET" and mode == modes[1]:
            continue  # nothing to get wrong

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call(headers={"X-API-Key": KEY}, timeout=30)
            where = f"{case.method} {case.path}"
            assert response.status_code < 500, (where, response.status_code, response.text[:500])
            if case.path != "/metrics":
                kind = {k.lower(): v for k, v in response.headers.items()}["content-type"]
                assert str(kind[0]).startswith("application/json"), where
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["code"] and error["message"], response.text

        fuzz()
        checked.append(f"{operation.method.upper()} {operation.path} ({mode.value})")
    assert len(checked) == 20, checked  # 8 POST x 2 modes + 4 GET
