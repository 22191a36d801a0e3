"""schemathesis against the running app: every operation of ``/api/v1/openapi.json``, fed generated
requests, valid and invalid, with a valid admin token.

Every answer must be a documented one: no server error, a status code and a content type the document
lists for the operation, a body matching its schema, and no success without a token. The operations
are read from the document the server serves, so routes added later are fuzzed without a change here.
The requests go over HTTP to a real web process whose workspace holds one object of every kind (so
generated ids sometimes name a real object) and whose per-token rate limit the fuzzer cannot reach.
Examples are bounded and generation is deterministic: the run takes the same short time in CI each time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenants.db import db
from tenants.scoping import all_tenants
from tests.conftest import web_server
from tests.factories import api_token_for, tenant_named
from tests.isolation import objects_of
from webapp.api import PUBLIC_ENDPOINTS

MAX_EXAMPLES = 25  # per operation and phase: enough to reach the edges, quick on two cores
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "ignored_auth",
)
SCHEMATHESIS = str(Path(sys.executable).with_name("st"))


@pytest.fixture(scope="module")
def unlimited_server() -> Iterator[str]:
    """The real web process, like ``live_server``, but with no per-token limit the fuzzer could reach."""
    with web_server("web-api-fuzz", {"API_REQUESTS_PER_MINUTE": str(10**9)}) as url:
        yield url


def test_every_operation_answers_as_its_document_says(app, auth, unlimited_server, tmp_path):
    auth.signup()
    with app.app_context(), all_tenants(db.session):
        tenant_id = int(objects_of(tenant_named("Acme"))["tenant_id"])
    secret = api_token_for(app, tenant_id, name="Fuzzer")

    run = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{unlimited_server}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {secret}",
            "--checks",
            ",".join(CHECKS),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-deterministic",  # and so no example database
            "--suppress-health-check",
            "all",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-25_000:]
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    operations = sum(len(item) for item in document["paths"].values())
    assert operations >= 2 and re.search(rf"Tested: {operations}\b", report), report[-3_000:]


def test_every_api_route_is_in_the_document_so_none_escapes_the_fuzzing(app, client):
    document = client.get("/api/v1/openapi.json").get_json()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    routes = {
        (method, re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("api.") and rule.endpoint not in PUBLIC_ENDPOINTS
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert ("GET", "/api/v1/pages/{page_id}") in routes
    assert routes - documented == set(), "decorate these views with @spec.validate"
