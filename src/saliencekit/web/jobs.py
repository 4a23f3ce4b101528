"""A first-in first-out job queue with one worker thread.

The model runs one job at a time (methods place hooks on it and change its ``requires_grad``
flags for the duration of a call), so a request that arrives while another runs is queued, never
dropped or run concurrently. Each job reports its queue position, progress and current stage;
finished jobs are kept (results in memory) until ``max_done`` newer ones have finished.

A job can be cancelled: a queued one is taken off the queue at once; a running one stops at its
next progress report (the job's progress callback raises :class:`JobCancelled`, which unwinds the
method like any error, so hooks are removed and the model is restored on the way out).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Optional

log = logging.getLogger("saliencekit.web")


FINISHED = ("done", "error", "cancelled")


class QueueFull(RuntimeError):
    pass


class JobCancelled(Exception):
    """Raised inside a running job by its progress callback once the job has been cancelled."""


@dataclass
class Job:
    id: str
    fn: Callable[[Callable[[float, str], None]], Any]
    state: str = "queued"              # queued | running | done | error | cancelled
    cancel_requested: bool = False
    progress: float = 0.0
    stage: str = ""
    result: Any = None
    error: Optional[str] = None
    submitted: float = field(default_factory=time.monotonic)
    started: Optional[float] = None
    finished: Optional[float] = None


class JobQueue:
    """``submit(fn)`` -> job id; ``fn(progress)`` runs on the worker thread, in submission order.

    ``user_error`` is the exception type whose message is shown to the user as is; any other
    exception is logged and reported with a generic message (no stack trace reaches the page).
    """

    def __init__(self, max_pending: int = 16, max_done: int = 32, user_error: type = ValueError):
        self.max_pending = max_pending
        self.max_done = max_done
        self.user_error = user_error
        self._cv = threading.Condition()
        self._pending: Deque[Job] = deque()
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._done_order: Deque[str] = deque()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="saliencekit-web-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Callable[[float, str], None]], Any]) -> str:
        with self._cv:
            if self._stop:
                raise RuntimeError("the job queue is stopped")
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"The server is busy ({len(self._pending)} runs waiting); try again in a moment.")
            job = Job(id=secrets.token_hex(16), fn=fn)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._cv.notify_all()
            return job.id

    def status(self, job_id: str) -> Optional[Dict[str, Any]]:
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            d: Dict[str, Any] = {"id": job.id, "state": job.state, "progress": round(job.progress, 4),
                                 "stage": job.stage}
            if job.state == "queued":
                d["ahead"] = self._ahead(job)
            if job.state == "error":
                d["error"] = job.error
            if job.started is not None:
                d["elapsed_s"] = round((job.finished or time.monotonic()) - job.started, 2)
            return d

    def cancel(self, job_id: str) -> Optional[Dict[str, Any]]:
        """Cancel a job: a queued one leaves the queue now, a running one stops at its next progress
        report. Returns the job's status (``None`` for an unknown id); a finished job is left as is."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self._pending.remove(job)
                self._finish(job, "cancelled", None, None)
            elif job.state == "running":
                job.cancel_requested = True
                job.stage = "cancelling"
        return self.status(job_id)

    def _ahead(self, job: Job) -> int:
        running = sum(1 for j in self._jobs.values() if j.state == "running")
        return running + list(self._pending).index(job)

    def result(self, job_id: str) -> Any:
        with self._cv:
            job = self._jobs.get(job_id)
            return job.result if job is not None and job.state == "done" else None

    def wait(self, job_id: str, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """Block until the job is done, failed or cancelled (for tests and scripts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job.state in FINISHED:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(left)
        return self.status(job_id)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self._pending.popleft()
                job.state, job.started = "running", time.monotonic()

            def progress(frac: float, stage: str, _job=job) -> None:
                with self._cv:
                    if _job.cancel_requested:
                        raise JobCancelled(_job.id)
                    _job.progress = max(_job.progress, min(1.0, float(frac)))
                    _job.stage = stage

            try:
                res = job.fn(progress)
                outcome = ("done", res, None)
            except JobCancelled:
                outcome = ("cancelled", None, None)
            except self.user_error as e:
                outcome = ("error", None, str(e))
            except Exception:
                log.exception("job %s failed", job.id)
                outcome = ("error", None, "Internal error while computing the maps (see the server log).")
            with self._cv:
                self._finish(job, *outcome)

    def _finish(self, job: Job, state: str, result: Any, error: Optional[str]) -> None:
        """Record a job's end (the caller holds the lock) and forget the oldest finished jobs."""
        job.state, job.result, job.error = state, result, error
        job.finished = time.monotonic()
        if state == "done":
            job.progress = 1.0
        if state == "cancelled":
            job.stage = "cancelled"
        job.fn = None  # drop references to the request
        self._done_order.append(job.id)
        while len(self._done_order) > self.max_done:
            self._jobs.pop(self._done_order.popleft(), None)
        self._cv.notify_all()
