"""HTTP jobs: a ``NAME.http.json`` document of named steps that a worker runs in order (seed 002's AsyncJob).

A document is a JSON object ``{"description"?, "retry_base_s"?, "steps": [...]}``; each step is
``{name, method, url, headers?, body?, timeout_s?, retry_exponent?, attempts?}``.
:func:`parse_http_job` is pure and reports every problem at once, each starting with its JSON
path (``steps[1].method: must be one of GET, PUT, POST, DELETE, PATCH``), so a push is told
exactly what is wrong and where. The rules owned here:

- the step retry wait, :func:`step_delay`: ``base × attempt ** retry_exponent`` after failed
  attempt ``attempt`` (base 1 s, 5 attempts: exponent 2 waits 1 + 4 + 9 + 16 s and ends
  ``poison`` after about 35 s, 2.5 after about a minute, 3 after almost two minutes);
- which answers are retried (:func:`retryable_status`);
- ``${secret:NAME}`` placeholders in a url, header value or body, resolved from the
  ``http_secrets`` setting only when the request is made (:func:`resolve_secrets`), and taken out
  of any text shown (:func:`redact`);
- the outbound allow-list (``http_allow``: :class:`AllowList`): nothing is allowed unless listed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from sooner.errors import SoonerError

HTTP_JOB_SUFFIX = ".http.json"

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY_EXPONENT = 1.0
DEFAULT_ATTEMPTS = 5
RETRY_BASE_S = 1.0
MAX_REDIRECTS = 5
BODY_EXCERPT_BYTES = 2048
MAX_STEPS = 100
MAX_ATTEMPTS = 100
MAX_TIMEOUT_S = 3600.0
MAX_RETRY_EXPONENT = 10.0
MAX_RETRY_BASE_S = 3600.0
MAX_NAME_CHARS = 100

_DOC_FIELDS = ("description", "retry_base_s", "steps")
_STEP_FIELDS = ("name", "method", "url", "headers", "body", "timeout_s", "retry_exponent", "attempts")
_SECRET = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,200}")
_STEP_NAME = re.compile(r"[A-Za-z0-9_.:@+-][A-Za-z0-9_.:@+ -]*")
# Request Timeout, Too Early, Too Many Requests: the server asks to be asked again.
_RETRYABLE_4XX = frozenset({408, 425, 429})


class JobKind(str, Enum):
    """What a job runs: an executable script, or the steps of an HTTP job document."""

    SCRIPT = "script"
    HTTP = "http"

    @classmethod
    def of(cls, path: str) -> JobKind:
        """The kind a deployed file gives: ``*.http.json`` is an HTTP job, anything else a script."""
        return cls.HTTP if path.endswith(HTTP_JOB_SUFFIX) else cls.SCRIPT


class HttpMethod(str, Enum):
    """The methods a step may use."""

    GET = "GET"
    PUT = "PUT"
    POST = "POST"
    DELETE = "DELETE"
    PATCH = "PATCH"


class InvalidHttpJob(SoonerError, ValueError):
    """An HTTP job document is not valid; ``problems`` name each JSON path and what is wrong there."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class MissingSecret(SoonerError, LookupError):
    """A ``${secret:NAME}`` placeholder names a secret the ``http_secrets`` setting does not have."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(set(names))
        super().__init__(f"secret{'s' if len(self.names) > 1 else ''} {', '.join(self.names)} not in the "
                         f"http_secrets setting (config.json or SOONER_HTTP_SECRETS)")


def step_delay(attempt: int, exponent: float, base_s: float = RETRY_BASE_S) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1 for the first) before the next: ``base × attempt^exp``."""
    try:
        return base_s * float(attempt) ** exponent
    except OverflowError:
        return math.inf


def retryable_status(status: int) -> bool:
    """A server error, or a 408/425/429 asking to try again: worth another attempt. Other 4xx are not."""
    return status >= 500 or status in _RETRYABLE_4XX


@dataclass(frozen=True)
class HttpStep:
    """One request of an HTTP job, as deployed: placeholders are still placeholders here."""

    name: str
    method: HttpMethod
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None  # None: no body; a string is sent as is; anything else as JSON
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_exponent: float = DEFAULT_RETRY_EXPONENT
    attempts: int = DEFAULT_ATTEMPTS

    def delays(self, base_s: float = RETRY_BASE_S) -> list[float]:
        """The waits between this step's attempts (one fewer than its attempts)."""
        return [step_delay(n, self.retry_exponent, base_s) for n in range(1, self.attempts)]

    def describe(self, base_s: float = RETRY_BASE_S) -> str:
        """``GET https://h/x (headers: Authorization; body; 5 attempts, waits 1+2+3+4s; timeout 30s)``."""
        details = [f"headers: {', '.join(name for name, _ in self.headers)}"] if self.headers else []
        details += ["body"] if self.body is not None else []
        waits = "+".join(f"{d:g}" for d in self.delays(base_s))
        details.append(f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}" +
                       (f", waits {waits}s" if waits else ""))
        details.append(f"timeout {self.timeout_s:g}s")
        return f"{self.method.value} {self.url} ({'; '.join(details)})"

    def summary(self, base_s: float = RETRY_BASE_S) -> dict[str, Any]:
        """What pages, the API and ``sooner job show`` list for the step (placeholders, never secrets)."""
        return {"name": self.name, "method": self.method.value, "url": self.url,
                "headers": [name for name, _ in self.headers], "has_body": self.body is not None,
                "timeout_s": self.timeout_s, "retry_exponent": self.retry_exponent, "attempts": self.attempts,
                "delays_s": self.delays(base_s)}


@dataclass(frozen=True)
class HttpJobSpec:
    """A valid HTTP job document."""

    steps: tuple[HttpStep, ...]
    description: str | None = None
    retry_base_s: float = RETRY_BASE_S

    def summary(self) -> list[dict[str, Any]]:
        return [step.summary(self.retry_base_s) for step in self.steps]


def parse_http_job(raw: bytes | str) -> HttpJobSpec:
    """The document in ``raw`` (UTF-8 JSON), or InvalidHttpJob listing every problem with its JSON path."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        doc = json.loads(text)
    except UnicodeDecodeError as exc:
        raise InvalidHttpJob([f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        raise InvalidHttpJob([f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    except RecursionError:
        raise InvalidHttpJob(["invalid JSON: nested too deeply"]) from None
    problems: list[str] = []
    spec = _document(doc, problems)
    if problems or spec is None:
        raise InvalidHttpJob(problems)
    return spec


def _document(doc: Any, problems: list[str]) -> HttpJobSpec | None:
    if not isinstance(doc, dict):
        problems.append(f"must be a JSON object with \"steps\", got {_kind(doc)}")
        return None
    _unknown(doc, _DOC_FIELDS, "", problems)
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        problems.append(f"description: must be text, got {_kind(description)}")
    base = _number(doc, "retry_base_s", "", RETRY_BASE_S, 0.0, MAX_RETRY_BASE_S, problems)
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append("steps: must be a list of 1 to %d steps, got %s" % (MAX_STEPS, _kind(steps)))
        return None
    if len(steps) > MAX_STEPS:
        problems.append(f"steps: at most {MAX_STEPS} steps, got {len(steps)}")
    parsed = [_step(step, f"steps[{i}]", problems) for i, step in enumerate(steps[:MAX_STEPS])]
    seen: dict[str, int] = {}
    for i, step in enumerate(steps[:MAX_STEPS]):
        name = step.get("name") if isinstance(step, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(f"steps[{i}].name: {name!r} is the name of steps[{seen[name]}] already; "
                            f"step names must be unique")
        seen.setdefault(name, i)
    if problems:
        return None
    return HttpJobSpec(tuple(s for s in parsed if s is not None), description, base)


def _step(step: Any, where: str, problems: list[str]) -> HttpStep | None:
    if not isinstance(step, dict):
        problems.append(f"{where}: must be an object with name, method and url, got {_kind(step)}")
        return None
    before = len(problems)
    _unknown(step, _STEP_FIELDS, where + ".", problems)
    name = step.get("name")
    if not isinstance(name, str) or not _STEP_NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        problems.append(f"{where}.name: must be 1-{MAX_NAME_CHARS} letters, digits, spaces or _ . : @ + -, "
                        f"got {_shown(name)}")
    method = step.get("method", HttpMethod.GET.value)
    methods = ", ".join(m.value for m in HttpMethod)
    if not isinstance(method, str) or method not in HttpMethod._value2member_map_:
        problems.append(f"{where}.method: must be one of {methods}, got {_shown(method)}")
    url_problem = check_url(step.get("url"))
    if url_problem:
        problems.append(f"{where}.url: {url_problem}")
    headers = _headers(step.get("headers"), where + ".headers", problems)
    body = step.get("body")
    _placeholders_in(body, where + ".body", problems)
    timeout = _number(step, "timeout_s", where + ".", DEFAULT_TIMEOUT_S, 0.0, MAX_TIMEOUT_S, problems, low_ok=False)
    exponent = _number(step, "retry_exponent", where + ".", DEFAULT_RETRY_EXPONENT, 0.0, MAX_RETRY_EXPONENT, problems)
    attempts = step.get("attempts", DEFAULT_ATTEMPTS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS:
        problems.append(f"{where}.attempts: must be a whole number from 1 to {MAX_ATTEMPTS}, got {_shown(attempts)}")
    if len(problems) > before:
        return None
    return HttpStep(name=str(name), method=HttpMethod(method), url=step["url"], headers=headers, body=body,
                    timeout_s=timeout, retry_exponent=exponent, attempts=attempts)


def check_url(url: Any) -> str | None:
    """What is wrong with a step's url (placeholders allowed), or None."""
    if not isinstance(url, str) or not url:
        return f"must be an http:// or https:// URL, got {_shown(url)}"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain spaces or control characters"
    problem = _placeholder_problem(url)
    if problem:
        return problem
    try:
        parts = urlsplit(_SECRET.sub("x", url))
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https://, got {_shown(url[:40])}"
    if not parts.hostname:
        return "has no host"
    return None


def _headers(value: Any, where: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        problems.append(f"{where}: must be an object of header names to text values, got {_kind(value)}")
        return ()
    headers = []
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            problems.append(f"{where}: {name!r} is not a valid header name")
        elif not isinstance(text, str):
            problems.append(f"{where}.{name}: must be text, got {_kind(text)}")
        elif any(c in text for c in "\r\n\0"):
            problems.append(f"{where}.{name}: must not contain line breaks")
        else:
            problem = _placeholder_problem(text)
            if problem:
                problems.append(f"{where}.{name}: {problem}")
            headers.append((name, text))
    return tuple(headers)


def _placeholders_in(value: Any, where: str, problems: list[str]) -> None:
    """Check placeholders in every string of a body (a JSON body may hold them in any string value)."""
    for text in _strings(value):
        problem = _placeholder_problem(text)
        if problem:
            problems.append(f"{where}: {problem}")
            return


def _placeholder_problem(text: str) -> str | None:
    for match in _PLACEHOLDER.finditer(text):
        if not _SECRET.fullmatch(match.group(0)):
            return f"{match.group(0)!r} is not a placeholder Sooner knows (use ${{secret:NAME}})"
    return None


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _number(doc: Mapping[str, Any], key: str, where: str, default: float, low: float, high: float,
            problems: list[str], *, low_ok: bool = True) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low <= value if low_ok else low < value) and value <= high):
        span = f"from {low:g} to {high:g}" if low_ok else f"more than {low:g} and at most {high:g}"
        problems.append(f"{where}{key}: must be a number {span}, got {_shown(value)}")
        return default
    return float(value)


def _unknown(doc: Mapping[str, Any], known: tuple[str, ...], where: str, problems: list[str]) -> None:
    for key in doc:
        if key not in known:
            problems.append(f"{where}{key}: unknown field (known: {', '.join(known)})")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "nothing"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


# -- secrets --------------------------------------------------------------------------------------------------------
def secret_names(text: str) -> list[str]:
    """The secrets a text's placeholders name."""
    return _SECRET.findall(text)


def resolve_secrets(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with each ``${secret:NAME}`` replaced by its value; MissingSecret naming the absent ones."""
    missing = [name for name in secret_names(text) if name not in secrets]
    if missing:
        raise MissingSecret(missing)
    return _SECRET.sub(lambda match: secrets[match.group(1)], text)


def resolve_body(body: Any, secrets: Mapping[str, str]) -> Any:
    """A step's body with placeholders resolved in every string (keys and values)."""
    if isinstance(body, str):
        return resolve_secrets(body, secrets)
    if isinstance(body, dict):
        return {resolve_secrets(k, secrets): resolve_body(v, secrets) for k, v in body.items()}
    if isinstance(body, list):
        return [resolve_body(item, secrets) for item in body]
    return body


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value replaced by ``***`` (a server may echo what it was sent)."""
    for value in sorted((v for v in secrets.values() if v), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


# -- the outbound allow-list --------------------------------------------------------------------------------------
def check_allow_pattern(pattern: Any) -> str | None:
    """What is wrong with one ``http_allow`` entry, or None.

    Forms: ``host`` (any port), ``host:port``, ``*.domain`` (any host under the domain, not the
    domain itself), ``[v6 address]:port``, and ``*`` (any host: an explicit choice).
    """
    if not isinstance(pattern, str) or not pattern or any(c.isspace() or c in "/?#@" for c in pattern):
        return f"must be a host, host:port, *.domain or *, got {_shown(pattern)}"
    if pattern == "*":
        return None
    host, port = _split_pattern(pattern)
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"{pattern!r} has an invalid port"
    if not host or "*" in host.removeprefix("*."):
        return f"{pattern!r}: a wildcard is allowed only as the first label (*.example.com)"
    return None


def _split_pattern(pattern: str) -> tuple[str, str | None]:
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        return host.lower(), rest[1:] if rest.startswith(":") else None
    if pattern.count(":") == 1:
        host, port = pattern.split(":")
        return host.lower(), port
    return pattern.lower(), None


@dataclass(frozen=True)
class AllowList:
    """The hosts HTTP jobs may reach (the ``http_allow`` setting); empty allows nothing."""

    patterns: tuple[str, ...] = ()

    def allows(self, url: str) -> bool:
        """Whether a request to ``url`` (the one sent: secrets resolved) may go out."""
        try:
            parts = urlsplit(url)
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return False
        if not host or parts.scheme not in ("http", "https"):  # a redirect may name any scheme
            return False
        port = port or (443 if parts.scheme == "https" else 80)
        return any(self._matches(pattern, host, port) for pattern in self.patterns)

    @staticmethod
    def _matches(pattern: str, host: str, port: int) -> bool:
        if pattern == "*":
            return True
        want_host, want_port = _split_pattern(pattern)
        if want_port is not None and int(want_port) != port:
            return False
        if want_host.startswith("*."):
            return host.endswith(want_host[1:])
        return host == want_host

    def refusal(self, url: str) -> str:
        """Why a url is refused, naming the setting to change."""
        try:
            parts = urlsplit(url)
            where = parts.hostname or "?"
            where += f":{parts.port}" if parts.port else ""
        except ValueError:
            where = "?"
        listed = ", ".join(self.patterns) if self.patterns else "nothing (it is empty)"
        return (f"host {where} is not in the http_allow setting, which allows {listed}; add it to http_allow "
                f"in config.json (or SOONER_HTTP_ALLOW) on the worker")
