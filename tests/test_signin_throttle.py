"""Guessing passwords is slowed per (account, address) and per address, never for the owner elsewhere."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tenants.accounts import FAILURES_PER_ACCOUNT_AND_ADDRESS, FAILURES_PER_ADDRESS
from tests.conftest import PASSWORD, Auth

ATTACKER = {"REMOTE_ADDR": "203.0.113.9"}
OWNER_AT_HOME = {"REMOTE_ADDR": "198.51.100.7"}


def test_ten_failures_slow_that_address_down_for_that_account_only(app, auth):
    auth.signup()
    auth.logout()
    for _ in range(FAILURES_PER_ACCOUNT_AND_ADDRESS):
        assert auth.login(password="wrong password!", environ_base=ATTACKER).status_code == 401
    blocked = auth.login(environ_base=ATTACKER)  # even the right password waits, from there
    assert blocked.status_code == 429
    assert "Too many failed sign-in attempts. Try again in 15 minutes." in blocked.get_data(as_text=True)

    owner = Auth(app.test_client())
    assert owner.login(environ_base=OWNER_AT_HOME).status_code == 302, "the owner was locked out from home"
    assert owner.client.get("/dashboard").status_code == 200


def test_an_address_guessing_many_accounts_waits(auth):
    for n in range(FAILURES_PER_ADDRESS):
        guess = auth.login(email=f"guess{n}@acme.example", password="wrong password!", environ_base=ATTACKER)
        assert guess.status_code == 401
    blocked = auth.login(email="someone-else@acme.example", password="wrong password!", environ_base=ATTACKER)
    assert blocked.status_code == 429
    elsewhere = auth.login(email="someone-else@acme.example", password="wrong password!")
    assert elsewhere.status_code == 401


def test_parallel_guesses_cannot_pass_the_limit_together(app, auth):
    auth.signup()
    auth.logout()

    def guess(n: int) -> int:
        return (
            Auth(app.test_client()).login(password=f"wrong password {n}", environ_base=ATTACKER).status_code
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(guess, range(20)))
    tried = answers.count(401)
    assert tried <= FAILURES_PER_ACCOUNT_AND_ADDRESS, f"{tried} passwords were tried"
    assert tried + answers.count(429) == 20
    # guesses refused untried do not count: the address may go on guessing up to the limit, no further
    while (answer := auth.login(password="one more guess", environ_base=ATTACKER).status_code) == 401:
        tried += 1
    assert answer == 429 and tried == FAILURES_PER_ACCOUNT_AND_ADDRESS


def test_a_success_forgives_that_addresses_earlier_failures(auth):
    auth.signup()
    auth.logout()
    for _ in range(FAILURES_PER_ACCOUNT_AND_ADDRESS - 1):
        assert auth.login(password="wrong password!", environ_base=ATTACKER).status_code == 401
    assert auth.login(password=PASSWORD, environ_base=ATTACKER).status_code == 302
    auth.logout()
    assert auth.login(password="wrong password!", environ_base=ATTACKER).status_code == 401
    assert auth.login(password=PASSWORD, environ_base=ATTACKER).status_code == 302
