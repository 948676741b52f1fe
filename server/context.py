"""What one HTTP request carries through the layers, typed.

The gateway creates a :class:`RequestContext` for every request (its id and, with keys on,
its API key); the inner layers fill in what they learn (the model, what a generation did);
the gateway reads it back for the request's metrics and its access log line.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.access import ApiKey
from server.metrics import RunRecord


@dataclass
class RequestContext:
    request_id: str
    api_key: ApiKey | None = None
    # The model that answered (a resolved name, never an alias), once known.
    model: str = ""
    # What the request's generation or embedding did, once it ended.
    record: RunRecord | None = None
