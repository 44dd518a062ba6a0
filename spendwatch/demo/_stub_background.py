"""The stub's background responses: ``responses.create(background=True)`` answers at once with a queued response
(no output, no usage); the response finishes after ``polls`` retrievals (``GET /v1/responses/{id}``, also streamed),
and ``POST /v1/responses/{id}/cancel`` cancels it, reporting the usage it had produced by then (all of it, here)."""

from __future__ import annotations

import copy
import re
import threading
from typing import Any

from spendwatch.demo import _stub_responses as shapes

__all__ = ["RESPONSE_ROUTE", "BackgroundResponses", "events"]

RESPONSE_ROUTE = re.compile(r"^(?:/openai)?(?:/v1)?/responses/(?P<id>resp_[^/]+?)(?P<cancel>/cancel)?/?$")


class BackgroundResponses:
    """The background responses a stub accepted: each is answered in progress ``polls`` times, then finished."""

    def __init__(self, polls: int = 1) -> None:
        self.polls = polls
        self._lock = threading.Lock()
        self._pending: dict[str, list] = {}  # id -> [retrievals still answered in progress, the finished response]

    def accept(self, finished: dict[str, Any]) -> dict[str, Any]:
        """Keep ``finished`` (a completed response object) for later; returns what the create call answers."""
        finished["background"] = True
        with self._lock:
            self._pending[finished["id"]] = [self.polls, finished]
        return _unfinished(finished, "queued")

    def retrieve(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._pending.get(response_id)
            if entry is None:
                return None
            if entry[0] > 0:
                entry[0] -= 1
                return _unfinished(entry[1], "in_progress")
            return copy.deepcopy(entry[1])

    def cancel(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._pending.get(response_id)
            if entry is None:
                return None
            entry[0], entry[1]["status"] = 0, "cancelled"
            return copy.deepcopy(entry[1])


def _unfinished(finished: dict[str, Any], status: str) -> dict[str, Any]:
    response = copy.deepcopy(finished)
    response.update(status=status, output=[], usage=None, completed_at=None)
    return response


def events(response: dict[str, Any]) -> list[bytes]:
    """A retrieved response as a stream: in progress, then its final event when it has finished."""
    final = {"completed": "response.completed", "cancelled": "response.failed", "failed": "response.failed"}
    pairs = [("response.in_progress", _unfinished(response, "in_progress"))]
    if response["status"] in final:
        pairs.append((final[response["status"]], response))
    return [
        shapes.sse({"type": kind, "sequence_number": number, "response": payload}, event=kind)
        for number, (kind, payload) in enumerate(pairs)
    ]
