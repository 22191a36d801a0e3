"""Send-rate limits shared through Redis: slot arithmetic, and real processes held to the rate."""

from __future__ import annotations

import bisect
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from tasks.limits import MIN_FACTOR, Limit, RateLimiter, burst_allowance
from tests.conftest import PROJECT_ROOT, REDIS_URL

SLACK = 0.005  # tolerance for the time that passes on Redis's clock between two calls of a test


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis prefix of this test's own, emptied afterwards."""
    prefix = f"{os.environ['REDIS_PREFIX']}-limits-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def limiter(prefix: str) -> Iterator[RateLimiter]:
    client = redis.Redis.from_url(REDIS_URL)
    yield RateLimiter(client, prefix)
    client.close()


def test_consecutive_reservations_on_one_limit_follow_each_other_exactly(limiter: RateLimiter):
    page = [Limit("page:1", 50)]
    first_at = time.monotonic()
    first = limiter.reserve(page, 5)
    second = limiter.reserve(page, 5)
    elapsed = time.monotonic() - first_at

    assert (first.start_in, first.interval) == (0.0, 0.02)
    assert first.delays() == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert second.interval == 0.02
    assert 0.1 - elapsed - SLACK <= second.start_in <= 0.1
    tat_ttl_ms = limiter.client.pttl(limiter.rate_key("page:1"))
    assert 1000 < tat_ttl_ms <= 1200, "an idle limit's key goes away a second after its tat"


def test_an_idle_limit_warms_up_at_a_fraction_of_its_rate_then_runs_at_full_rate(prefix: str):
    client = redis.Redis.from_url(REDIS_URL)
    warming = RateLimiter(client, prefix, warm_up=(0.5, 0.3))
    page = [Limit("page:1", 100)]
    try:
        first = warming.reserve(page, 10)
        assert first.interval == pytest.approx(0.02), "an idle page starts at half its rate"
        time.sleep(0.35)  # the warm-up is over; the limit has stayed in use
        later = warming.reserve(page, 10)
        assert later.interval == pytest.approx(0.01)
        time.sleep(later.start_in + 1.2)  # idle for over a second: its key is gone
        again = warming.reserve(page, 10)
        assert again.interval == pytest.approx(0.02), "a page idle again warms up again"
    finally:
        client.close()


def test_several_limits_go_at_the_slowest_rate(limiter: RateLimiter):
    reservation = limiter.reserve([Limit("tenant:1", 100), Limit("page:1", 50), Limit("campaign:1", 20)], 3)

    assert (reservation.start_in, reservation.interval) == (0.0, 0.05)
    later = limiter.reserve([Limit("campaign:1", 20)], 1)
    assert 0.15 - SLACK <= later.start_in <= 0.15


def test_slow_campaigns_on_one_page_share_it_and_keep_it_busy_without_exceeding_it(limiter: RateLimiter):
    campaigns = [f"campaign:{n}" for n in range(6)]  # 6 x 10/s wanted, on a page of 50/s
    slots: dict[str, list[float]] = {campaign: [] for campaign in campaigns}
    for _ in range(20):
        for campaign in campaigns:
            reservation = limiter.reserve([Limit("page:1", 50), Limit(campaign, 10)], 1)
            slots[campaign].append(time.monotonic() + reservation.start_in)
    page_slots = sorted(at for campaign_slots in slots.values() for at in campaign_slots)

    assert _busiest_second(page_slots) <= 50 + burst_allowance(50)
    assert (len(page_slots) - 1) / (page_slots[-1] - page_slots[0]) >= 0.95 * 50, "the page is kept busy"
    assert all(_busiest_second(campaign_slots) <= 10 + 1 for campaign_slots in slots.values())


def test_cool_down_holds_every_slot_back_until_it_ends(limiter: RateLimiter):
    limiter.cool_down("page:1", 0.5)

    reservation = limiter.reserve([Limit("tenant:1", 100), Limit("page:1", 50)], 2)
    assert 0.5 - SLACK <= reservation.start_in <= 0.5
    assert limiter.reserve([Limit("page:2", 50)], 1).start_in == 0.0, "other pages are not held back"


def test_slow_down_halves_the_rate_compounds_to_a_floor_and_climbs_back(limiter: RateLimiter):
    assert limiter.current_factor("page:1") == 1.0

    assert limiter.slow_down("page:1", 0.5, recovery=0.01) == 0.5
    assert limiter.reserve([Limit("page:1", 50)], 1).interval == pytest.approx(0.04, rel=0.01)
    for _ in range(6):
        limiter.slow_down("page:1", 0.5, recovery=0.01)
    assert limiter.current_factor("page:1") == pytest.approx(MIN_FACTOR, abs=0.01)
    assert limiter.reserve([Limit("page:1", 50)], 1).interval == pytest.approx(16 / 50, rel=0.1)
    assert limiter.current_factor("page:2") == 1.0, "other pages keep their rate"


def test_a_slowed_rate_climbs_back_steadily_once_the_provider_stops_objecting(limiter: RateLimiter):
    limiter.slow_down("page:1", 0.5, recovery=1.0)  # back to the full rate within half a second
    time.sleep(0.25)
    assert 0.7 <= limiter.current_factor("page:1") <= 0.85
    time.sleep(0.3)
    assert limiter.current_factor("page:1") == 1.0
    assert limiter.reserve([Limit("page:1", 50)], 1).interval == pytest.approx(0.02)
    assert limiter.client.pttl(limiter.slow_key("page:1")) < 0, "a recovered slow-down leaves nothing behind"


def test_pace_recipients_lets_each_recipient_through_once_per_interval(limiter: RateLimiter):
    assert limiter.pace_recipients("page:1", ["+15550001", "+15550002", "+15550001"], 0.5) == {
        "+15550001": 0.0,
        "+15550002": 0.0,
    }
    again = limiter.pace_recipients("page:1", ["+15550001", "+15550003"], 0.5)

    assert 0.45 < again["+15550001"] <= 0.5
    assert again["+15550003"] == 0.0
    assert limiter.pace_recipients("page:2", ["+15550001"], 0.5) == {"+15550001": 0.0}, "pages pace apart"
    assert limiter.pace_recipients("page:1", [], 0.5) == {}


def test_limits_start_fresh_when_redis_has_lost_their_keys(limiter: RateLimiter, prefix: str):
    limiter.slow_down("page:1", 0.5, recovery=0.01)
    assert limiter.reserve([Limit("page:1", 50)], 50).interval == pytest.approx(0.04, rel=0.01)
    limiter.client.delete(*limiter.client.scan_iter(match=f"{prefix}:*"))

    assert limiter.reserve([Limit("page:1", 50)], 1) == limiter.reserve([Limit("page:2", 50)], 1)
    assert limiter.reserve([Limit("page:3", 50)], 1).start_in == 0.0


def test_bad_arguments_are_refused(limiter: RateLimiter):
    with pytest.raises(ValueError):
        Limit("page:1", 0)
    with pytest.raises(ValueError):
        limiter.reserve([Limit("page:1", 50)], 0)
    assert limiter.reserve([], 3).delays() == [0.0, 0.0, 0.0], "nothing to wait for"


# One sending worker: from start_at to end_at, reserve chunks, sleep until each slot, note when it "sent".
SENDER = """
import json, sys, time
import redis
from tasks.limits import Limit, RateLimiter, burst_allowance

url, prefix, rate, start_at, end_at = sys.argv[1], sys.argv[2], float(sys.argv[3]), *map(float, sys.argv[4:])
limiter = RateLimiter(redis.Redis.from_url(url), prefix)
limits, chunk, sent = [Limit("page:1", rate), Limit("tenant:1", rate * 4)], burst_allowance(rate), []
time.sleep(max(0.0, start_at - time.time()))
while time.time() < end_at:
    reservation = limiter.reserve(limits, chunk)
    reserved_at = time.monotonic()
    for delay in reservation.delays():
        time.sleep(max(0.0, reserved_at + delay - time.monotonic()))
        sent.append(time.time())
print(json.dumps(sent))
"""


def _busiest_second(times: list[float]) -> int:
    """The most sends in any closed 1-second window."""
    return max(bisect.bisect_right(times, at + 1.0) - i for i, at in enumerate(times))


@pytest.mark.parametrize("rate", [50, 1000])
def test_two_worker_processes_together_keep_to_the_rate_and_use_all_of_it(prefix: str, rate: int):
    start_at = time.time() + 1.5  # time for both interpreters to start and import
    end_at = start_at + 3.0
    args = [REDIS_URL, prefix, str(rate), repr(start_at), repr(end_at)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=30)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    per_worker = [json.loads(output) for output in outputs]
    times = sorted(at for sent in per_worker for at in sent)

    busiest = _busiest_second(times)
    achieved = sum(start_at <= at < end_at for at in times) / (end_at - start_at)
    print(f"rate {rate}/s: busiest second {busiest}, achieved {achieved:.1f}/s")
    assert all(len(sent) > rate for sent in per_worker), "both workers sent"
    assert busiest <= rate + burst_allowance(rate)
    assert achieved >= 0.95 * rate
