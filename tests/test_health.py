"""`GET /healthz` and `GET /readyz` for load balancers and `make run`."""

import time

import httpx

from tests.conftest import built_app, free_port


def test_healthz_reports_database_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_vendor_assets_come_from_node_modules(client):
    with client.get("/vendor/htmx.min.js") as htmx:
        assert htmx.status_code == 200 and b"htmx" in htmx.data[:2000]
    for name in ("pico.min.css", "socket.io.min.js"):
        with client.get(f"/vendor/{name}") as response:
            assert (
                response.status_code == 200 and response.headers["Cache-Control"] == "public, max-age=86400"
            )
    assert client.get("/vendor/..%2Fpackage.json").status_code == 404
    assert client.get("/vendor/secrets.txt").status_code == 404


def test_security_headers_are_sent(client):
    headers = client.get("/login").headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_unknown_url_is_a_friendly_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404 and "Not found" in response.get_data(as_text=True)


def test_readyz_is_ready_when_a_worker_beats_and_tells_the_queue_depths(live_server, worker_process):
    deadline = time.monotonic() + 10
    while (response := httpx.get(f"{live_server}/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready" and body["database"] == "ok" and body["redis"] == "ok"
    assert body["workers"] >= 1
    assert {"default", "campaigns"} <= set(body["queues"]) and all(
        isinstance(depth, int) for depth in body["queues"].values()
    )


def test_readyz_is_not_ready_without_a_worker_or_without_redis():
    with built_app(REDIS_PREFIX="crier-no-workers-here") as app:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["workers"] == 0 and response.get_json()["status"] == "not ready"
    with built_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0") as app:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503 and response.get_json()["redis"] == "unreachable"
