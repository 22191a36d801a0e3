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
        self.base_url = base_url
        self.pongs: list[dict] = []
        self.connect()

    def connect(self) -> None:
        """(Re)open the socket with the browser's current cookie."""
        self.socket = socketio.Client(reconnection=False)
        self.socket.on("worker:pong", self.pongs.append)
        cookie = "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())
        self.socket.connect(
            self.base_url, headers={"Cookie": cookie}, transports=["websocket"], wait_timeout=10
        )

    def post(self, path: str) -> httpx.Response:
        token = csrf_token(self.http.get("/dashboard").text)
        return self.http.post(path, data={"csrf_token": token})

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


def _wait_for(check, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def _pong_heard_by(clicker: Browser, listener: Browser) -> bool:
    listener.pongs.clear()
    assert clicker.click_check_workers().status_code == 200
    return _wait_for(lambda: bool(listener.pongs), 15)


def test_removal_closes_the_members_sockets_and_their_cookie_cannot_reopen_one(
    app, live_server, worker_process
):
    from tests.test_sessions import join

    alice = Browser(live_server, "alice@acme.example", "Acme")
    bob = Browser(live_server, "bob@bravo.example", "Bravo")
    try:
        membership_id = join(app, "bob@bravo.example", "Acme")
        switch = next(part for part in bob.http.get("/dashboard").text.split('"') if part.endswith("/switch"))
        assert bob.post(switch).status_code == 302
        bob.socket.disconnect()
        bob.connect()
        assert _pong_heard_by(alice, bob), "Bob, a member of Acme, did not hear Acme's events"

        # a role change closes the socket too; the session lives on, so the page reconnects
        token = csrf_token(alice.http.get(f"/members/{membership_id}").text)
        answer = alice.http.post(f"/members/{membership_id}", data={"csrf_token": token, "role": "admin"})
        assert answer.status_code == 302
        assert _wait_for(lambda: not bob.socket.connected), "a role change left the old socket open"
        bob.connect()
        assert bob.socket.connected

        assert alice.post(f"/members/{membership_id}/remove").status_code == 302
        assert _wait_for(lambda: not bob.socket.connected, 5), "the removed member's socket stayed open"
        bob.pongs.clear()
        assert _pong_heard_by(alice, alice)
        time.sleep(1.0)
        assert bob.pongs == [], "the removed member still heard the workspace's events"
        with pytest.raises(socketio.exceptions.ConnectionError):
            bob.connect()
    finally:
        alice.close()
        bob.close()


def test_signing_out_closes_the_users_sockets(live_server):
    alice = Browser(live_server, "alice@acme.example", "Acme")
    try:
        assert alice.socket.connected
        assert alice.post("/logout").status_code == 302
        assert _wait_for(lambda: not alice.socket.connected, 5), "the socket outlived signing out"
    finally:
        alice.close()


def test_socket_connection_requires_a_signed_in_user(live_server):
    anonymous = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        anonymous.connect(live_server, transports=["websocket"], wait_timeout=5)
    anonymous.disconnect()
