"""Live events: a real worker emits to a tenant's room; only that tenant's browsers hear it."""

from __future__ import annotations

import time

import httpx
import pytest
import socketio

from tests.conftest import PASSWORD, csrf_token


class Browser:
    """A signed-in person: an HTTP session with the live server plus a Socket.IO connection."""

    def __init__(self, base_url: str, email: str, workspace: str):
        self.http = httpx.Client(base_url=base_url, timeout=10)
        token = csrf_token(self.http.get("/signup").text)
        response = self.http.post(
            "/signup",
            data={
                "csrf_token": token,
                "email": email,
                "workspace_name": workspace,
                "password": PASSWORD,
                "timezone": "UTC",
            },
        )
        assert response.status_code == 302, response.text
        self.pongs: list[dict] = []
        self.socket = socketio.Client(reconnection=False)
        self.socket.on("worker:pong", self.pongs.append)
        cookie = "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())
        self.socket.connect(base_url, headers={"Cookie": cookie}, transports=["websocket"], wait_timeout=10)

    def click_check_workers(self) -> httpx.Response:
        token = csrf_token(self.http.get("/dashboard").text)
        return self.http.post("/workers/ping", data={"csrf_token": token}, headers={"HX-Request": "true"})

    def close(self) -> None:
        self.socket.disconnect()
        self.http.close()


def test_worker_event_reaches_only_the_tenants_own_browsers(live_server, worker_process):
    alice = Browser(live_server, "alice@acme.example", "Acme")
    bob = Browser(live_server, "bob@bravo.example", "Bravo")
    try:
        response = alice.click_check_workers()
        assert response.status_code == 200 and "waiting for an answer" in response.text

        deadline = time.monotonic() + 20
        while not alice.pongs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alice.pongs, "the worker's event never reached Acme's browser"
        pong = alice.pongs[0]
        assert pong["tenant"] == "Acme", "the worker read the tenant from the database"
        assert pong["latency_ms"] >= 0 and ":" in pong["worker"]
        time.sleep(1.0)
        assert bob.pongs == [], "Bravo's browser heard Acme's event"
    finally:
        alice.close()
        bob.close()


def test_socket_connection_requires_a_signed_in_user(live_server):
    anonymous = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        anonymous.connect(live_server, transports=["websocket"], wait_timeout=5)
    anonymous.disconnect()
