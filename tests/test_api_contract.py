"""The API keeps to its OpenAPI document where Litestar alone would not (pgsched/api/contract.py),
each case one that schemathesis found: strictly typed bodies, undocumented query parameters
refused, OPTIONS answered with every method of the path, and a document that says which routes
need no key and that bodies refuse unknown fields."""

from __future__ import annotations

from typing import Any, Iterator

import psycopg
import pytest
from litestar.testing import TestClient

from pgsched.api import ApiSettings, create_app
from tests.support.api import TEST_SETTINGS, Api, ReadonlyApi, count, make_keys


@pytest.fixture(scope="module")
def readonly_api(module_dsn: str) -> Iterator[ReadonlyApi]:
    """One database and app for the module: these requests must change nothing."""
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('j', 't', 60)")
        with TestClient(create_app(ApiSettings(dsn=module_dsn, **TEST_SETTINGS))) as client:
            yield Api(client, make_keys(conn)), conn


LENIENT_VALUES = [  # (id, path, body, field): values Litestar alone would convert instead of refusing
    ("numeric string for an integer", "/runs", {"task": "t", "priority": "5"}, "priority"),
    ("number for a time", "/runs", {"task": "t", "run_at": 0}, "run_at"),
    ("numeric string for a time", "/runs", {"task": "t", "run_at": "0"}, "run_at"),
    ("fraction for an integer", "/runs", {"task": "t", "max_attempts": 2.0}, "max_attempts"),
    ("string for seconds", "/runs", {"task": "t", "delay": "10"}, "delay"),
    ("string for a boolean", "/jobs", {"name": "x", "task": "t", "every": 60, "enabled": "false"}, "enabled"),
    ("number in a batch's time", "/runs/batch", {"task": "t", "args": [{}], "run_at": 1.5}, "run_at"),
]


@pytest.mark.parametrize(
    ("path", "body", "field"), [case[1:] for case in LENIENT_VALUES], ids=[case[0] for case in LENIENT_VALUES]
)
def test_a_body_value_of_another_json_type_is_400_naming_the_field(
    readonly_api: ReadonlyApi, path: str, body: dict[str, Any], field: str
):
    api, conn = readonly_api
    before = (count(conn, "runs"), count(conn, "jobs"))
    response = api.post(path, json=body)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["source"]) == (field, "body"), error
    assert error["message"].startswith(("Expected", "Invalid RFC3339")), error
    assert (count(conn, "runs"), count(conn, "jobs")) == before


def test_a_nested_type_error_names_its_path(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    response = api.post("/runs/batch", json={"task": "t", "args": [{}, {}, "x"]})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "args[2]", response.text


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [
        ("/runs", "staus=failed", "staus"),
        ("/jobs", "page=2", "page"),
        ("/queues", "queue=a", "queue"),
        ("/runs/1", "verbose=1", "verbose"),
    ],
)
def test_an_undocumented_query_parameter_is_400_naming_it(readonly_api: ReadonlyApi, path: str, query: str, named: str):
    api, _ = readonly_api
    response = api.get(f"{path}?{query}")
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["source"]) == (named, "query") and "unknown query parameter" in error["message"]


def test_documented_query_parameters_and_unknown_headers_are_fine(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    assert api.get("/runs?status=failed&limit=5", headers={"X-Request-Id": "abc", "X-Anything": "1"}).status_code == 200
    assert api.get("/schema/openapi.json?v=1", as_=None).status_code == 200, "the document's routes are not checked"


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/runs", "GET, OPTIONS, POST"),
        ("/jobs", "GET, OPTIONS, POST"),
        ("/jobs/j", "DELETE, GET, OPTIONS, PATCH"),
        ("/runs/1/cancel", "OPTIONS, POST"),
    ],
)
def test_options_answers_without_a_key_and_names_every_method_of_the_path(
    readonly_api: ReadonlyApi, path: str, allow: str
):
    api, _ = readonly_api
    response = api.call("OPTIONS", path, as_=None)
    assert response.status_code == 204, response.text
    assert response.headers["allow"] == allow


def test_the_document_says_which_routes_need_no_key_and_that_bodies_refuse_unknown_fields(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    document = api.get("/schema/openapi.json", as_=None).json()
    assert document["security"] == [{"BearerAuth": []}]
    for path in ("/health", "/ready"):
        assert document["paths"][path]["get"]["security"] == [{}], path
    assert "security" not in document["paths"]["/runs"]["get"], "the others inherit the Bearer requirement"
    schemas = document["components"]["schemas"]
    for model in ("RunCreate", "RunBatchCreate", "JobCreate", "JobPatch"):
        assert schemas[model]["additionalProperties"] is False, model
    listed = {parameter["name"]: parameter for parameter in document["paths"]["/runs"]["get"]["parameters"]}
    assert listed["created_after"]["schema"]["format"] == "date-time", listed["created_after"]
