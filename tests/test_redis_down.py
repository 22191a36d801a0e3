"""With Redis stopped, Crier still serves every page; only work for the workers is refused, clearly."""

from __future__ import annotations

import pytest

from tests.conftest import ApiClient, Auth, built_app, free_port
from tests.factories import api_token_for, tenant_named
from webapp.devserver import start_embedded_redis

PUBLIC_API_PAGES = {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/problems"}


@pytest.fixture
def disposable_redis(tmp_path):
    """A Redis of our own (the one `make run` embeds), so the test can stop it; yields (url, stop)."""
    port = free_port()
    process = start_embedded_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    yield url, stop
    if process.poll() is None:
        stop()


def test_building_the_app_and_its_broker_never_connects_to_redis():
    closed_port = free_port()
    with built_app(REDIS_URL=f"redis://127.0.0.1:{closed_port}/0") as app:
        workers = app.extensions["crier.workers"]
        assert workers.broker.actors["ping_workers"].queue_name == "default"
        assert app.test_client().get("/login").status_code == 200


def test_pages_sign_up_and_login_work_while_redis_is_down(disposable_redis):
    url, stop_redis = disposable_redis
    with built_app(REDIS_URL=url, REDIS_PREFIX="crier-redis-down") as app:
        _check_everything_but_workers_works(app, stop_redis)


def _check_everything_but_workers_works(app, stop_redis) -> None:
    client = app.test_client()
    auth = Auth(client)
    auth.signup()
    assert "waiting for an answer" in auth.post("/workers/ping", headers={"HX-Request": "true"}).get_data(
        as_text=True
    )

    with app.app_context():
        api = ApiClient(app, api_token_for(app, tenant_named("Acme").id), tenant_named("Acme").id)

    stop_redis()

    pages = sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if "GET" in rule.methods and not rule.arguments and rule.endpoint != "dashboard.home"
    )
    assert {"/dashboard", "/members", "/healthz", "/workspaces/new", "/login", "/signup"} <= set(pages)
    for page in pages:
        response = client.get(page)
        # the platform admin's console is 404 to everyone else, Redis or not; not ready without Redis
        expected = (
            (404,)
            if page.startswith("/admin")
            else (503,)
            if page == "/readyz"
            else (401,)  # the API opens to a token, never to the browser's cookie
            if page.startswith("/api/v1/") and page not in PUBLIC_API_PAGES
            else (200, 302, 403)
        )
        assert response.status_code in expected, f"{page} answered {response.status_code} with Redis down"

    # the API stays open without its rate-limit counter; a POST's Idempotency-Key cannot be checked
    assert api.get("/api/v1/pages").status_code == 200
    listed = api.post("/api/v1/lists", json={"name": "Leads"})
    assert listed.status_code == 201, listed.get_json()
    keyed = api.post("/api/v1/lists", json={"name": "VIP"}, headers={"Idempotency-Key": "vip-1"})
    assert keyed.status_code == 503 and keyed.get_json()["type"] == "/api/v1/problems/unavailable"

    refused = auth.post("/workers/ping", headers={"HX-Request": "true"})
    assert refused.status_code == 503
    assert "background workers unreachable:" in refused.get_data(as_text=True)
    assert "Traceback" not in refused.get_data(as_text=True)
    assert client.get("/healthz").get_json()["redis"] == "unreachable"

    auth.logout()
    assert auth.login().status_code == 302
    newcomer = Auth(app.test_client())
    assert newcomer.signup(email="new@crier.example", workspace="New").status_code == 302
