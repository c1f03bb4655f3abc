"""``openapi.yaml``: generated from the example project, complete, and true to the API.

The committed schema is regenerated exactly as it was made and must match byte for byte
(drf-spectacular's own ``assert_schema`` idea). Then every operation must be documented
well enough for a client and a fuzzer: a summary, schemas, error answers, examples. And
what the endpoints really answer must validate against what the schema says they answer.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test.utils import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from memdb import api
from memdb.models import PersistentStorage
from tests.testapp.models import Legacy, Score

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "openapi.yaml"
REGENERATE = "python example/manage.py spectacular --file openapi.yaml"
METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}

#: Every operation and the answers it must document.
DENIED = {"401", "403"}
BODY = {"400", "404", "409", "415", "429"}
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("get", "/memdb/tables"): {"200"} | DENIED,
    ("get", "/memdb/tables/{label}"): {"200", "404"} | DENIED,
    ("get", "/memdb/storage"): {"200"} | DENIED,
    ("post", "/memdb/spool"): {"200"} | DENIED | BODY,
    ("post", "/memdb/restore"): {"200"} | DENIED | BODY,
}


def test_openapi_yaml_is_what_the_example_project_generates(tmp_path: Path) -> None:
    generated_path = tmp_path / "openapi.yaml"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    process = subprocess.run(
        [
            sys.executable,
            "example/manage.py",
            "spectacular",
            "--file",
            str(generated_path),
            "--validate",
            "--fail-on-warn",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, (
        f"manage.py spectacular failed (warnings count as failures):\n"
        f"{process.stdout}\n{process.stderr}"
    )
    generated = generated_path.read_text()
    committed = COMMITTED.read_text()
    if generated != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                "openapi.yaml (committed)",
                "openapi.yaml (generated from the code)",
            )
        )
        pytest.fail(
            "openapi.yaml differs from what memdb_api documents. Regenerate it from the "
            f"repository root with\n\n    {REGENERATE}\n\nand commit it.\n\n{diff}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMMITTED.read_text())
    return loaded


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        prefix = "#/components/schemas/"
        assert node["$ref"].startswith(prefix), node
        node = schema["components"]["schemas"][node["$ref"][len(prefix) :]]
    return node


def json_content(container: dict[str, Any]) -> dict[str, Any]:
    content = container.get("content", {})
    assert "application/json" in content, f"no application/json content: {container}"
    media: dict[str, Any] = content["application/json"]
    return media


def test_every_endpoint_is_documented_once(schema: dict[str, Any]) -> None:
    """The slashed twins of the paths are left out, so each operation appears once."""
    assert {(method, path) for method, path, _ in operations(schema)} == set(EXPECTED)
    ids = [operation["operationId"] for _, _, operation in operations(schema)]
    assert len(ids) == len(set(ids))
    assert schema["info"]["title"] and schema["info"]["version"]


def test_every_operation_has_a_summary_and_a_description(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        assert operation.get("summary", "").strip(), f"{method} {path}: no summary"
        assert operation.get("description", "").strip(), f"{method} {path}: no description"


def test_every_operation_declares_how_to_authenticate(schema: dict[str, Any]) -> None:
    schemes = set(schema["components"]["securitySchemes"])
    assert {"cookieAuth", "tokenAuth", "basicAuth"} <= schemes
    for method, path, operation in operations(schema):
        used = {name for requirement in operation["security"] for name in requirement}
        assert used == schemes, f"{method} {path}"
        assert {} not in operation["security"], f"{method} {path} allows anonymous calls"


def test_every_body_has_a_request_schema(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        if method != "post":
            assert "requestBody" not in operation, f"{method} {path}"
            continue
        media = json_content(operation["requestBody"])
        body = resolve(schema, media["schema"])
        assert body["type"] == "object" and "tables" in body["properties"], f"{method} {path}"
        assert body["properties"]["tables"]["type"] == "array"
        assert body["properties"]["tables"]["items"]["type"] == "string"
        assert body.get("additionalProperties") is False, f"{method} {path}: unknown keys are a 400"
        assert not operation["requestBody"].get("required"), "an empty body means every table"
    spool = resolve(
        schema, json_content(schema["paths"]["/memdb/spool"]["post"]["requestBody"])["schema"]
    )
    assert spool["properties"]["force"]["type"] == "boolean"
    restore = resolve(
        schema, json_content(schema["paths"]["/memdb/restore"]["post"]["requestBody"])["schema"]
    )
    assert "force" not in restore["properties"]


def test_every_operation_has_a_200_response_schema(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        ok = json_content(operation["responses"]["200"])
        resolved = resolve(schema, ok["schema"])
        assert resolved.get("type") in ("object", "array"), f"{method} {path}: {resolved}"
        if resolved["type"] == "array":
            assert resolve(schema, resolved["items"])["properties"], f"{method} {path}"
        else:
            assert resolved["properties"], f"{method} {path}"


def test_every_operation_documents_its_error_responses(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        statuses = set(operation["responses"])
        assert statuses == EXPECTED[(method, path)], f"{method} {path}: {sorted(statuses)}"
        for status in statuses - {"200"}:
            response = operation["responses"][status]
            assert response.get("description", "").strip(), f"{method} {path} {status}"
            media = json_content(response)
            assert media["schema"] == {"$ref": "#/components/schemas/Error"}, f"{method} {path}"
            assert media.get("examples"), f"{method} {path} {status}: no example"
    error = resolve(schema, {"$ref": "#/components/schemas/Error"})
    assert set(error["required"]) == {"detail", "code"}


def test_every_operation_has_examples(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        ok = json_content(operation["responses"]["200"])
        assert ok.get("examples"), f"{method} {path}: no example answer"
        if "requestBody" in operation:
            assert json_content(operation["requestBody"]).get("examples"), f"{method} {path}"
        for parameter in operation.get("parameters", []):
            assert parameter.get("examples") or parameter.get("example"), f"{method} {path}"


# Examples and real answers validate against the documented schemas.


def json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema's ``"null"`` type."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") and "type" in node:
        converted["type"] = [node["type"], "null"]
    return converted


def validator(schema: dict[str, Any], node: dict[str, Any]) -> jsonschema.Draft7Validator:
    root = {"allOf": [json_schema(node)], "components": json_schema(schema["components"])}
    return jsonschema.Draft7Validator(root)


def test_every_example_fits_its_schema(schema: dict[str, Any]) -> None:
    checked = 0
    for method, path, operation in operations(schema):
        containers = [operation.get("requestBody", {}), *operation["responses"].values()]
        for container in containers:
            if not container:
                continue
            media = json_content(container)
            for name, example in media.get("examples", {}).items():
                errors = list(validator(schema, media["schema"]).iter_errors(example["value"]))
                assert not errors, f"{method} {path} example {name}: {errors[0].message}"
                checked += 1
    assert checked >= 20


def answers(
    schema: dict[str, Any], method: str, path: str, status: int
) -> jsonschema.Draft7Validator:
    operation = schema["paths"][path][method]
    assert str(status) in operation["responses"], f"{method} {path}: {status} is not documented"
    return validator(schema, json_content(operation["responses"][str(status)])["schema"])


def check(schema: dict[str, Any], response: Any, method: str, path: str, status: int) -> None:
    assert response.status_code == status, response.content
    body = json.loads(response.content)
    errors = list(answers(schema, method, path, status).iter_errors(body))
    assert not errors, f"{method} {path} {status}: {errors[0].message} in {body}"


@pytest.mark.django_db(transaction=True, databases=["default", "memdb"])
def test_real_answers_fit_the_documented_schemas(schema: dict[str, Any]) -> None:
    """Every status an endpoint answers with here is documented, with a true schema."""
    user_model = get_user_model()
    staff = user_model.objects.create_user("ops", is_staff=True)
    member = user_model.objects.create_user("member")
    ops = APIClient()
    ops.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    nobody = APIClient()
    someone = APIClient()
    someone.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}")

    def post(client: APIClient, path: str, body: Any) -> Any:
        return client.post(path, data=json.dumps(body), content_type="application/json")

    tables, table = "/memdb/tables", "/memdb/tables/{label}"
    spool, restore, storage = "/memdb/spool", "/memdb/restore", "/memdb/storage"

    Score.objects.bulk_create([Score(player="a", points=1), Score(player="b", points=2)])
    Legacy.objects.create(text="t")
    check(schema, ops.get(tables), "get", tables, 200)
    check(schema, ops.get("/memdb/tables/testapp.Hit"), "get", table, 200)
    check(schema, post(ops, spool, {}), "post", spool, 200)
    check(
        schema, post(ops, spool, {"tables": ["testapp.Score"], "force": True}), "post", spool, 200
    )
    check(schema, post(ops, restore, {}), "post", restore, 200)
    check(schema, ops.get("/memdb/tables/testapp.Score"), "get", table, 200)
    check(schema, ops.get(storage), "get", storage, 200)

    for client, status in ((nobody, 403), (someone, 403)):
        check(schema, client.get(tables), "get", tables, status)
        check(schema, client.get("/memdb/tables/testapp.Score"), "get", table, status)
        check(schema, client.get(storage), "get", storage, status)
        check(schema, post(client, spool, {}), "post", spool, status)
        check(schema, post(client, restore, {}), "post", restore, status)

    check(schema, ops.get("/memdb/tables/testapp.Nope"), "get", table, 404)
    for path in (spool, restore):
        check(schema, post(ops, path, {"tables": ["testapp.Nope"]}), "post", path, 404)
        check(schema, post(ops, path, {"tables": ["testapp.Hit"]}), "post", path, 400)
        check(schema, post(ops, path, {"tables": [1, None]}), "post", path, 400)
        check(schema, post(ops, path, {"tabels": []}), "post", path, 400)
        check(schema, post(ops, path, []), "post", path, 400)
        bad = ops.post(path, data="{", content_type="application/json")
        check(schema, bad, "post", path, 400)

    PersistentStorage.objects.filter(model_name="Score").update(generation=7)
    Score.objects.create(player="c")
    Legacy.objects.create(text="u")
    conflict = post(ops, spool, {"tables": ["testapp.Score", "testapp.Legacy"]})
    check(schema, conflict, "post", spool, 409)
    assert conflict.json()["code"] == "conflict" and conflict.json()["results"]

    stored = PersistentStorage.objects.get(model_name="Legacy")
    PersistentStorage.objects.filter(pk=stored.pk).update(checksum="0" * 64)
    failed = post(ops, restore, {"tables": ["testapp.Score", "testapp.Legacy"]})
    check(schema, failed, "post", restore, 409)
    assert failed.json()["code"] == "restore_failed" and failed.json()["results"]
    check(schema, post(ops, spool, {"tables": ["testapp.Legacy"]}), "post", spool, 409)
    check(schema, ops.get("/memdb/tables/testapp.Legacy"), "get", table, 200)
    assert api.tables("testapp.Legacy")[0].restore_state == "failed"

    rates = {"DEFAULT_THROTTLE_RATES": {"memdb": "1/minute"}}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, **rates}):
        cache.clear()
        try:
            check(schema, post(ops, spool, {"force": True}), "post", spool, 200)
            check(schema, post(ops, spool, {}), "post", spool, 429)
            check(schema, post(ops, restore, {}), "post", restore, 429)
        finally:
            cache.clear()
