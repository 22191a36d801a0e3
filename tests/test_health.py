"""`GET /healthz` for load balancers and `make run`."""


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
