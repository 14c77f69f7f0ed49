"""Run an HTTP job (``*.http.json``) inside the worker: its steps in order, each retried, no subprocess.

:class:`HttpRun` works for one :class:`~sooner.worker.runner.ActiveRun`, on the run's thread, and
uses what the run has: its :class:`~sooner.worker.output.OutputWriter` (the same output sequence:
the start line first, the end line last), its progress (steps done / steps), its cancel request,
its timeout and the lease fence (``fence_s`` past the last renewal the run stops, ``lost``). It ends
the run through the run's own end path, so an outage journals the end as for a script.

Each attempt of a step writes ``> METHOD URL`` (placeholders, never secret values), then the
answer: ``< STATUS REASON (elapsed)``, its headers and up to 2 KiB of its body, with every secret
value the server may echo replaced by ``***``. Redirects are followed by hand (at most
:data:`~sooner.model.http_job.MAX_REDIRECTS`), each target checked against ``http_allow``. A step
whose attempt failed waits ``step_delay(attempt)`` (:mod:`sooner.model.http_job`, the one rule)
through ``sleep`` and tries again; when its attempts are used up, or the answer is one that
retrying cannot change (a 4xx other than 408/425/429, too many redirects), the run ends
``poison``. A host not allowed and a secret not configured end it ``failed``: a setting to change.
The session ignores proxy variables and ``.netrc`` (``trust_env``), so nothing the worker's
environment holds is sent to a host the allow-list let through.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urljoin, urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from sooner.errors import SoonerError
from sooner.model import RunStatus
from sooner.model.http_job import (BODY_EXCERPT_BYTES, MAX_REDIRECTS, AllowList, HttpJobSpec, HttpStep, InvalidHttpJob,
                                   MissingSecret, parse_http_job, redact, resolve_body, resolve_secrets,
                                   retryable_status, step_delay)

if TYPE_CHECKING:
    from sooner.worker.runner import ActiveRun

logger = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)
_PRIVATE_ON_HOST_CHANGE = ("authorization", "cookie", "proxy-authorization")


class _Stop(Exception):
    """The run must end now with ``status`` and ``note`` (cancel, timeout, lease, a setting, a poison step)."""

    def __init__(self, status: RunStatus, note: str) -> None:
        super().__init__(note)
        self.status = status
        self.note = note


@dataclass
class _Attempt:
    """How one attempt of a step went."""

    ok: bool
    what: str  # "HTTP 503", "connection failed: …"
    retryable: bool = True


class HttpRun:
    """The steps of one HTTP job run. ``sleep(seconds)`` waits between attempts (tests pass a fake one)."""

    def __init__(self, active: ActiveRun, document: Path, *, sleep: Callable[[float], None] | None = None,
                 session: requests.Session | None = None) -> None:
        self.active = active
        self.document = document
        self.output = active.output
        self.clock = active.runner.clock
        self.settings = active.settings
        self.secrets: Mapping[str, str] = dict(self.settings.http_secrets)
        self.allow = AllowList(tuple(self.settings.http_allow))
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.trust_env = False
        timeout_s = active.run.timeout_s
        self.started = self.clock.monotonic()
        self.timeout_at = self.started + float(timeout_s) if timeout_s else None

    def execute(self) -> None:
        """Run every step, then end the run (it never raises for a step's or a document's problem)."""
        active, run = self.active, self.active.run
        active.started_at = self.clock.now()
        active.store.runs.mark_started_in_worker(active.id, commit=run.commit, now=active.started_at,
                                                 host=active.runner.host)
        self.output.system(f"sooner: run {active.id} of {run.job} on worker {active.runner.worker_name} "
                           f"(commit {(run.commit or '')[:8]}, HTTP job)")
        try:
            status, note = self._steps(self._read())
        except _Stop as stop:
            status, note = stop.status, stop.note
        finally:
            self.session.close()
        self.output.system(f"sooner: {status.value}{': ' + note if note else ''} after "
                           f"{self.clock.monotonic() - self.started:.1f}s")
        active.calls.flush_progress(force=True)
        self.output.flush()
        active.status = status
        # A lost run's retry need not wait for this copy: it stopped here.
        active.record_end(status, note=note, started_at=active.started_at, process_gone=status is RunStatus.LOST)

    def _read(self) -> HttpJobSpec:
        try:
            return parse_http_job(self.document.read_bytes())
        except OSError as exc:
            raise _Stop(RunStatus.FAILED, f"could not read {self.active.run.job}: {exc.strerror or exc}") from None
        except InvalidHttpJob as exc:  # deploys refuse these; a tree from before that check may hold one
            raise _Stop(RunStatus.FAILED, f"invalid HTTP job: {exc}") from None

    def _steps(self, spec: HttpJobSpec) -> tuple[RunStatus, str | None]:
        total = len(spec.steps)
        self._progress(0, total)
        for index, step in enumerate(spec.steps):
            self._step(spec, step, f"step {index + 1}/{total} {step.name!r}")
            self._progress(index + 1, total)
        return RunStatus.SUCCEEDED, None

    def _step(self, spec: HttpJobSpec, step: HttpStep, label: str) -> None:
        try:
            url = resolve_secrets(step.url, self.secrets)
            headers = {name: resolve_secrets(value, self.secrets) for name, value in step.headers}
            body = resolve_body(step.body, self.secrets)
        except MissingSecret as exc:
            raise _Stop(RunStatus.FAILED, f"{label}: {exc}") from None
        for attempt in range(1, step.attempts + 1):
            self._check_stop()
            self.output.system(f"sooner: {label} attempt {attempt}/{step.attempts}")
            outcome = self._attempt(step, url, headers, body)
            if outcome.ok:
                return
            if not outcome.retryable:
                raise _Stop(RunStatus.POISON, f"{label} failed ({outcome.what}), which another attempt "
                                              f"would not change")
            if attempt == step.attempts:
                raise _Stop(RunStatus.POISON, f"{label} failed {step.attempts} time"
                                              f"{'s' if step.attempts != 1 else ''}, last: {outcome.what}")
            delay = step_delay(attempt, step.retry_exponent, spec.retry_base_s)
            self.output.system(f"sooner: {label} failed ({outcome.what}); attempt {attempt + 1} in {delay:g}s")
            self._wait(delay)

    def _attempt(self, step: HttpStep, url: str, headers: dict[str, str], body: Any) -> _Attempt:
        """One request and its redirects; writes what was asked and answered."""
        method = step.method.value
        request_headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(headers)
        data: bytes | None = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            if not isinstance(body, str):
                request_headers.setdefault("Content-Type", "application/json")
        shown = step.url
        for hop in range(MAX_REDIRECTS + 1):
            if not self.allow.allows(url):
                raise _Stop(RunStatus.FAILED, self.allow.refusal(self._shown(url) if hop else step.url))
            self.output.write("stdout", f"> {method} {shown}\n")
            started = time.monotonic()
            try:
                response = self.session.request(method, url, headers=dict(request_headers), data=data,
                                                timeout=self._request_timeout(step), allow_redirects=False,
                                                stream=True)
            except requests.Timeout:
                self._check_stop()
                return self._failed(f"no answer within {self._request_timeout(step):g}s")
            except requests.ConnectionError as exc:
                return self._failed(f"connection failed: {self._shown(_reason(exc))}")
            except requests.RequestException as exc:
                return self._failed(f"request refused: {self._shown(_reason(exc))}", retryable=False)
            with response:
                self._record(response, time.monotonic() - started)
                location = response.headers.get("Location")
                if response.status_code not in _REDIRECTS or not location:
                    return self._judge(response.status_code)
            next_url = urljoin(url, location)
            if urlsplit(next_url).hostname != urlsplit(url).hostname:
                for name in _PRIVATE_ON_HOST_CHANGE:
                    request_headers.pop(name, None)
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, data = "GET", None
                request_headers.pop("Content-Type", None)
            url, shown = next_url, self._shown(next_url)
        return self._failed(f"more than {MAX_REDIRECTS} redirects", retryable=False)

    def _judge(self, status: int) -> _Attempt:
        if status < 400:
            return _Attempt(True, f"HTTP {status}")
        return self._failed(f"HTTP {status}", retryable=retryable_status(status))

    def _failed(self, what: str, *, retryable: bool = True) -> _Attempt:
        self.output.write("stdout", f"! {what}\n")
        return _Attempt(False, what, retryable)

    def _record(self, response: requests.Response, elapsed_s: float) -> None:
        """The answer's status line, headers and body excerpt, secrets taken out."""
        lines = [f"< {response.status_code} {response.reason or ''} ({elapsed_s * 1000:.0f} ms)".rstrip()]
        lines += [f"< {name}: {value}" for name, value in response.headers.items()]
        excerpt, more = _excerpt(response)
        if excerpt:
            lines.append(excerpt.decode("utf-8", "replace"))
        if more:
            lines.append(f"… (body cut at {BODY_EXCERPT_BYTES} bytes)")
        self.output.write("stdout", self._shown("\n".join(lines)) + "\n")

    def _shown(self, text: str) -> str:
        return redact(text, self.secrets)

    # -- time, cancel, lease ---------------------------------------------------------------------------------------
    def _request_timeout(self, step: HttpStep) -> float:
        left = [step.timeout_s]
        if self.timeout_at is not None:
            left.append(max(0.1, self.timeout_at - self.clock.monotonic()))
        if self.active.lease_deadline is not None:
            left.append(max(0.1, self.active.lease_deadline - time.monotonic()))
        return min(left)

    def _check_stop(self) -> None:
        """End the run now if it was cancelled, ran out of time or its lease could not be renewed."""
        request = self.active.stop_request
        if request is not None:
            raise _Stop(*request)
        if self.timeout_at is not None and self.clock.monotonic() >= self.timeout_at:
            raise _Stop(RunStatus.TIMED_OUT, f"timed out after {self.active.run.timeout_s:g}s")
        deadline = self.active.lease_deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise _Stop(RunStatus.LOST, f"lost: worker {self.active.runner.worker_name} could not renew its lease "
                                        f"for {self.settings.fence_s:g}s (the database did not answer)")

    def _wait(self, seconds: float) -> None:
        """Wait before the next attempt; a cancel, the run's timeout or its lease cut the wait short."""
        if self.timeout_at is not None:
            seconds = min(seconds, max(0.0, self.timeout_at - self.clock.monotonic()))
        self.output.flush()  # what the attempts said is readable while the run waits
        if self.sleep is not None:
            self.sleep(seconds)
        else:
            end = time.monotonic() + seconds
            while self.active.stop_request is None and (left := end - time.monotonic()) > 0:
                deadline = self.active.lease_deadline
                if deadline is not None:
                    left = min(left, max(0.0, deadline - time.monotonic()))
                    if left == 0.0:
                        break
                self.active.wait_for_wake(left)  # cancel() wakes it
                self.active.calls.flush_progress()
                self.active.keep_journal()
        self._check_stop()

    def _progress(self, done: int, total: int) -> None:
        try:
            self.active.calls.progress(done, total)
        except SoonerError as exc:  # kept pending and written later, as a script's would be
            logger.info("run %s: progress not written now: %s", self.active.id, exc)


def _excerpt(response: requests.Response) -> tuple[bytes, bool]:
    """Up to BODY_EXCERPT_BYTES of the (decoded) body, and whether there was more."""
    buffer = b""
    try:
        for chunk in response.iter_content(chunk_size=1024):
            buffer += chunk
            if len(buffer) > BODY_EXCERPT_BYTES:
                return buffer[:BODY_EXCERPT_BYTES], True
    except requests.RequestException as exc:
        return buffer + f"\n… (body not read to the end: {_reason(exc)})".encode(), False
    return buffer, False


def _reason(exc: BaseException) -> str:
    """The innermost message of a requests error (its outer ones repeat the URL with resolved secrets)."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = str(cause) or type(cause).__name__
    return text if len(text) <= 300 else text[:297] + "…"
