"""What cluster mode raises when a shared server (Redis, NATS) cannot be reached."""

from __future__ import annotations

from forwarder.errors import ForwarderError


class ClusterUnavailable(ForwarderError):
    """A server the nodes share did not answer in time, or refused the command."""


class RateBudgetUnavailable(ClusterUnavailable):
    """The shared rate budget in Redis could not be taken: no request may go out (a
    send without a slot could break Iterable's limit), so the caller retries later."""
