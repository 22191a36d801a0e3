"""Dispatch: send a running campaign's deliveries in time slices, under every limit, and write back.

One Dramatiq message runs one *slice* (a couple of seconds) of one *chain* of one campaign and
re-enqueues itself at the back of the queue, so campaigns share the workers fairly and pause or
cancel take effect between two checks (every 0.2 s). A campaign runs ``DISPATCH_CHAINS`` chains;
the limiter, not the number of chains or workers, sets the pace. A slice::

    reserve send slots (Redis, shared)  →  reserve daily quota + claim due deliveries with a lease
    (one PostgreSQL transaction, FOR UPDATE SKIP LOCKED, committed before any send)  →  render and
    send each at its slot with async I/O, at most DISPATCH_WINDOW claimed and unrecorded at once
    →  write outcomes in bulk (only rows still in flight)  →  emit progress  →  re-enqueue.

Chains carry the campaign's ``dispatch_generation``: the sweeper starts a new generation when a
campaign has no live work, and chains of an older one stop. A message delivered twice sends
nothing twice: only a committed claim sends, and a claim takes pending rows only.

The parts: ``chain`` (the actor and enqueueing), ``slice`` (one slice: loading, watching the campaign,
hand-over), ``sending`` (its loop), ``claims`` (quota and leases), ``pacing`` (slots and throttles),
``outcomes`` (writing results), ``loop`` (the process's event loop). Campaign state changes are
``tasks.lifecycle``'s; progress events are ``tasks.progress``'s.
"""

from tasks.dispatch.chain import dispatch_campaign, launch, launch_quietly
from tasks.dispatch.loop import SendLoop, ThreadResources, send_loop
from tasks.dispatch.settings import DispatchSettings
from tasks.dispatch.slice import Slice

__all__ = [
    "DispatchSettings",
    "SendLoop",
    "Slice",
    "ThreadResources",
    "dispatch_campaign",
    "launch",
    "launch_quietly",
    "send_loop",
]
