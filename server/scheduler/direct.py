"""Triton's default scheduler: no merging, FIFO, one request per execution per instance."""

from __future__ import annotations

import os
from collections import deque

from server.errors import Code, ServerError
from server.scheduler.base import Scheduler
from server.types import InferRequest


class DirectScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._queue: deque[InferRequest] = deque()
        # Triton's default scheduler honours the TRITONSERVER_DELAY_SCHEDULER test hook too.
        try:
            self._hold_until = max(int(os.environ.get("TRITONSERVER_DELAY_SCHEDULER", "0")), 0)
        except ValueError:
            self._hold_until = 0

    def _enqueue(self, request: InferRequest) -> None:
        self._queue.append(request)

    def _take_batch(self, now_ns: int) -> list[InferRequest] | float | None:
        if self._hold_until:
            if len(self._queue) < self._hold_until:
                return None
            self._hold_until = 0
        while self._queue:
            request = self._queue.popleft()
            if request.cancelled:
                self._complete_error(request, ServerError(Code.CANCELLED, "Request was cancelled"))
                continue
            return [request]
        return None

    def _withdraw(self, request: InferRequest) -> bool:
        try:
            self._queue.remove(request)
        except ValueError:
            return False
        return True

    def _fail_queued(self, error: ServerError) -> None:
        while self._queue:
            self._complete_error(self._queue.popleft(), error)
