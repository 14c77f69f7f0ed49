"""Load and validate Sooner's settings.

Settings come from, in increasing priority: the defaults below, the site's
``config.json``, ``SOONER_<KEY>`` environment variables, and CLI flags. They are
validated once, here, and any problem is a :class:`ConfigError` naming the
file (or variable), the key and what is wrong.

A *site* is the folder made by ``sooner init``: ``config.json``,
``scripts.git``, ``scripts-working-copy`` and ``.sooner/`` (local state such as
the embedded database). Commands find it through ``--config``/``SOONER_CONFIG``
or by walking up from the current directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sooner.errors import ConfigError, SiteNotFound

CONFIG_FILE = "config.json"
ENV_PREFIX = "SOONER_"


@dataclass(frozen=True)
class Settings:
    """Every setting Sooner knows, with units in the names.

    ``site_dir`` is not a key of config.json: it is the folder the config was
    loaded from (``None`` for a process configured only by environment, such
    as a worker on another machine).
    """

    mongo_url: str | None = field(default=None, metadata={"doc": "MongoDB URL; unset = embedded default in the site"})
    database: str = field(default="sooner", metadata={"doc": "database name inside MongoDB"})
    repo_dir: str = field(default="scripts.git", metadata={"doc": "bare repository, relative to the site"})
    working_copy_dir: str = field(default="scripts-working-copy", metadata={"doc": "checked-out scripts, relative to the site"})
    branch: str = field(default="main", metadata={"doc": "the branch that is deployed"})
    max_file_bytes: int = field(default=10 * 1024 * 1024, metadata={"doc": "largest file a push may deploy"})
    cache_dir: str = field(default=".sooner/cache", metadata={"doc": "where workers materialise commit trees, relative to the site"})
    web_host: str = field(default="127.0.0.1", metadata={"doc": "address `sooner web`/`sooner up` listen on"})
    web_port: int = field(default=8080, metadata={"doc": "port `sooner web`/`sooner up` listen on"})
    web_trusted_proxies: int = field(default=0, metadata={"doc": "reverse proxies in front whose X-Forwarded-* headers are trusted"})
    secret_key: str | None = field(default=None, metadata={"doc": "signs web sessions; `sooner init` generates one"})
    web_session_idle_s: float = field(default=8 * 3600.0, metadata={"doc": "a web session ends after this long without a request"})
    web_session_max_s: float = field(default=14 * 86400.0, metadata={"doc": "a web session ends this long after sign-in, however busy"})
    web_token_cache_s: float = field(default=10.0, metadata={"doc": "a web process trusts an API token it verified for this long (0 = verify every request)"})
    worker_capacity: int = field(default=4, metadata={"doc": "runs a worker executes at once"})
    heartbeat_s: float = field(default=2.0, metadata={"doc": "worker heartbeat interval"})
    lease_s: float = field(default=30.0, metadata={"doc": "a running run is lost if its worker is silent this long"})
    cancel_grace_s: float = field(default=10.0, metadata={"doc": "SIGTERM→SIGKILL delay when cancelling"})
    shutdown_grace_s: float = field(default=30.0, metadata={"doc": "how long a stopping worker lets runs finish"})
    outage_grace_s: float = field(default=300.0, metadata={"doc": "how long runs go on (journaling their output) while their worker cannot reach the database"})
    outage_journal_mb: int = field(default=64, metadata={"doc": "largest outage journal per run; past it the script waits for the database"})
    output_flush_ms: int = field(default=100, metadata={"doc": "longest delay before output reaches the database"})
    output_max_bytes_per_run: int = field(default=50 * 2 ** 20, metadata={"doc": "a run stores this much output; the rest is counted, not stored"})
    output_max_line_bytes: int = field(default=2 ** 20, metadata={"doc": "longer lines are cut to this, with a marker"})
    output_retention_days: float = field(default=30.0, metadata={"doc": "output older than this is removed (0 = kept forever); runs are kept"})
    sample_s: float = field(default=5.0, metadata={"doc": "how often workers sample CPU and memory of their host, themselves and their runs"})
    sample_retention_hours: float = field(default=24.0, metadata={"doc": "monitoring samples older than this are removed (the graphs show the last hour)"})
    chain_depth_limit: int = field(default=10, metadata={"doc": "events chained deeper than this start no runs"})
    log_level: str = field(default="warning", metadata={"doc": "debug, info, warning or error"})
    embedded_idle_stop_s: float = field(default=600.0, metadata={"doc": "an embedded database started on demand stops after this long without clients (0 = never)"})
    http_allow: tuple[str, ...] = field(default=(), metadata={"doc": "hosts HTTP jobs may call: host, host:port, *.domain or * (empty = none)"})
    http_secrets: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False, metadata={"doc": "values of ${secret:NAME} in HTTP jobs (never shown)"})
    public_url: str | None = field(default=None, metadata={"doc": "the web server's address as people reach it (links in notifications)"})
    notify: tuple[Any, ...] = field(default=(), repr=False, hash=False, metadata={"doc": "site-wide notify rules: [{on: [failure, recovery, success, missed], to: [apprise URL or webhook+https://…], jobs: GLOB}]"})
    notify_webhook_secret: str | None = field(default=None, metadata={"doc": "signs webhook+https:// notifications (Standard Webhooks, whsec_ + base64)"})
    notify_rate_per_target: int = field(default=20, metadata={"doc": "notifications one target gets per notify_rate_window_s; the rest are counted in one summary"})
    notify_rate_window_s: float = field(default=600.0, metadata={"doc": "the window of notify_rate_per_target"})
    notify_attempts: int = field(default=3, metadata={"doc": "tries per notification before it is recorded failed"})
    notify_backoff_s: float = field(default=30.0, metadata={"doc": "wait before a notification's second try, doubling for each later one"})
    dispatch_hold_ms: int = field(default=100, metadata={"doc": "a worker leaves a run this long for a faster worker with a free slot (0 = take at once)"})
    concurrency_limits: Mapping[str, int] = field(default_factory=dict, hash=False, metadata={"doc": "fleet-wide limits of runs at once: {\"backup/*\": 2, \"tag:gpu\": 1} (job glob or tag:TAG)"})
    site_dir: Path | None = field(default=None, metadata={"internal": True})

    def site_path(self, relative: str) -> Path:
        """Resolve a site-relative setting; fails clearly without a site."""
        if self.site_dir is None:
            raise SiteNotFound(f"this needs a Sooner site (for {relative!r}); pass --config or run `sooner init`")
        path = Path(relative)
        return path if path.is_absolute() else self.site_dir / path

    @property
    def fence_s(self) -> float:
        """How long after its worker last renewed its lease a script may run: the lease, or the outage grace."""
        return max(self.lease_s, self.outage_grace_s)

    @property
    def outlives_lease_s(self) -> float:
        """How long past its lease's expiry a script of this worker may still run (see :attr:`fence_s`)."""
        return self.fence_s - self.lease_s

    @property
    def repo_path(self) -> Path:
        return self.site_path(self.repo_dir)

    @property
    def working_copy_path(self) -> Path:
        return self.site_path(self.working_copy_dir)

    @property
    def state_dir(self) -> Path:
        """``<site>/.sooner``: local state (embedded database, caches, locks)."""
        return self.site_path(".sooner")


_LOG_LEVELS = ("debug", "info", "warning", "error")


def config_keys() -> list[dataclasses.Field[Any]]:
    """The fields that may appear in config.json (and as SOONER_* variables)."""
    return [f for f in dataclasses.fields(Settings) if not f.metadata.get("internal")]


def find_config(start: Path | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """Find config.json: ``SOONER_CONFIG``, else the nearest site at or above ``start``."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("SOONER_CONFIG")
    if explicit:
        return Path(explicit).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        # A site made by `sooner init` has .sooner/ beside config.json; this
        # keeps an unrelated project's config.json from being mistaken for ours.
        if candidate.is_file() and (folder / ".sooner").is_dir():
            return candidate
    return None


def load_settings(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from a config file (optional), the environment and overrides.

    ``overrides`` are values of CLI flags; ``flags`` names the flag that set
    each key (default ``--key-name``), so that an error blames the flag.
    Every error names where the bad value came from: the file and key, the
    ``SOONER_*`` variable, or the flag.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, _Origin] = {}
    site_dir = None
    if config_path is not None:
        from_file = _read_config_file(config_path)
        values.update(from_file)
        origins.update({key: _Origin("file", str(config_path)) for key in from_file})
        site_dir = config_path.resolve().parent
    values.update(_read_environment(environ, origins))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            flag = (flags or {}).get(key) or "--" + key.replace("_", "-")
            origins[key] = _Origin("flag", flag, _number_text(value) if _is_number(value) else str(value))
    settings = Settings(**values, site_dir=site_dir)
    _check_values(settings, origins)
    return settings


@dataclass(frozen=True)
class _Origin:
    """Where one setting's value came from, so that its error blames that place and not another."""

    kind: str  # "file", "env", "flag" or "default"
    where: str = ""  # the file's path, or the variable's or flag's name
    text: str = ""  # what the variable or flag said

    def error(self, key: str, problem: str, value: Any = dataclasses.MISSING) -> ConfigError:
        """``SOONER_LEASE_S=nan: lease_s must …``, or ``config.json, key 'lease_s': must …, got nan``."""
        if self.kind in ("env", "flag"):  # the text is shown already; say which setting it is
            return ConfigError(f"{key} {problem}", source=f"{self.where}={_shown_text(self.text)}")
        got = "" if value is dataclasses.MISSING else f", got {_shown_value(value)}"
        return ConfigError(problem + got, source=self.where or None, key=key)

    def describe(self) -> str:
        """How a message mentions this origin: "from SOONER_HEARTBEAT_S", "by default"."""
        return f"from {self.where}" if self.where else "by default"


_DEFAULT_ORIGIN = _Origin("default")


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("file not found", source=str(path))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_int=lambda text: _json_int(text, path))
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror or exc}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=str(path)) from None
    except RecursionError:
        raise ConfigError("invalid JSON: nested too deeply", source=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("must hold a JSON object of settings", source=str(path))
    known = {f.name: f for f in config_keys()}
    values = {}
    for key, value in raw.items():
        if key.startswith("_"):  # "_comment" style keys are allowed and ignored
            continue
        if key not in known:
            raise ConfigError(f"unknown setting{_suggestion(key, known)}", source=str(path), key=key)
        values[key] = _coerce_json(known[key], value, str(path))
    return values


def _json_int(text: str, path: Path) -> int:
    # Python refuses to read integers over 4,300 digits with a bare ValueError;
    # refuse them here, clearly (shorter ones fail the range checks, which name the key).
    if len(text.lstrip("-")) > 4000:
        raise ConfigError(f"integer {_shown_text(text)} has too many digits", source=str(path))
    return int(text)


def _read_environment(environ: Mapping[str, str], origins: dict[str, _Origin]) -> dict[str, Any]:
    values = {}
    for f in config_keys():
        name = ENV_PREFIX + f.name.upper()
        if name in environ:
            values[f.name] = _coerce_text(f, environ[name], name)
            origins[f.name] = _Origin("env", name, _redacted(f.name, environ[name]))
    return values


def _base_type(f: dataclasses.Field[Any]) -> str:
    # Annotations are strings under `from __future__ import annotations`.
    return str(f.type).replace(" | None", "")


def _coerce_json(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    kind = _base_type(f)
    if kind == "Mapping[str, int]":
        return _limits(value, source=source, key=f.name)
    if kind in _COLLECTIONS:
        return _coerce_collection(f, value, source=source)
    if value is None and "None" in str(f.type):
        return None
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple") and isinstance(value, list):  # a list of JSON values (notify rules)
        return tuple(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float: out of every range, which the checks report
            return value
    expected = {"str": "a string", "int": "a whole number", "float": "a number"}.get(kind, "a list")
    raise ConfigError(f"must be {expected}, got {json.dumps(value)[:200]}", source=source, key=f.name)


def _coerce_text(f: dataclasses.Field[Any], text: str, variable: str) -> Any:
    kind = _base_type(f)
    if kind == "Mapping[str, int]":
        try:
            value = json.loads(text) if text.strip() else {}
        except ValueError:
            raise ConfigError("must be a JSON object such as {\"backup/*\": 2}", source=variable) from None
        return _limits(value, source=variable)
    if kind in _COLLECTIONS:
        # JSON, or for a list also plain comma-separated text (SOONER_HTTP_ALLOW=api.example.com,127.0.0.1:8080).
        try:
            value = json.loads(text)
        except ValueError:
            if kind != "tuple[str, ...]":
                raise ConfigError("must be a JSON object of names to text values", source=variable) from None
            value = [part.strip() for part in text.split(",") if part.strip()]
        return _coerce_collection(f, value, variable=variable)
    if kind == "str":
        return text if text or "None" not in str(f.type) else None
    if kind.startswith("tuple"):  # JSON text of a list
        try:
            value = json.loads(text) if text.strip() else []
        except ValueError as exc:
            raise ConfigError(f"must be JSON of a list ({exc})", source=variable) from None
        if not isinstance(value, list):
            raise ConfigError("must be JSON of a list", source=variable)
        return tuple(value)
    if kind == "int" and _LONG_INTEGER.match(text):
        # int() refuses over 4,300 digits; such a number is out of every range,
        # and the range error shows the variable's own text.
        return 10 ** _MAX_DIGITS * (-1 if text.strip().startswith("-") else 1)
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        expected = "a whole number" if kind == "int" else "a number"
        raise ConfigError(f"must be {expected}, got {(text if len(text) <= 40 else text[:12] + '…')!r}",
                          source=variable) from None


_COLLECTIONS = ("tuple[str, ...]", "Mapping[str, str]")


def _limits(value: Any, *, source: str, key: str | None = None) -> dict[str, int]:
    """``concurrency_limits`` by the model's rule (:func:`sooner.model.dispatch.parse_limits`)."""
    from sooner.model.dispatch import InvalidLimit, parse_limits

    try:
        return parse_limits(value, "")
    except InvalidLimit as exc:
        raise ConfigError(str(exc).lstrip(": "), source=source, key=key) from None


def _coerce_collection(f: dataclasses.Field[Any], value: Any, *, source: str | None = None,
                       variable: str | None = None) -> Any:
    """A list of text (a tuple) or an object of text values (a dict); ConfigError naming the key otherwise."""
    def fail(problem: str) -> ConfigError:
        return ConfigError(problem, source=source, key=f.name) if variable is None else \
            ConfigError(f"{f.name} {problem}", source=variable)
    if f.type.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise fail("must be a list of text values")
        return tuple(value)
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise fail("must be an object of names to text values")  # the values are never shown: they are secrets
    return dict(value)


_MAX_DIGITS = 30
_LONG_INTEGER = re.compile(r"\s*[+-]?\d{%d,}\s*$" % (_MAX_DIGITS + 1))

# Seconds: (lowest, whether the lowest itself is allowed, highest). Every bound
# is finite, so NaN and infinity fail too (NaN compares false with everything).
_SECONDS: dict[str, tuple[float, bool, float]] = {
    "heartbeat_s": (0.1, True, 3600.0),  # beating faster only burns CPU; slower than an hour looks dead
    "lease_s": (0.0, False, 86400.0),  # also longer than heartbeat_s, checked below
    "cancel_grace_s": (0.0, True, 86400.0),
    "shutdown_grace_s": (0.0, True, 86400.0),
    "outage_grace_s": (0.0, True, 7 * 86400.0),
    "web_session_idle_s": (0.0, False, 366 * 86400.0),
    "web_session_max_s": (0.0, False, 366 * 86400.0),
    "web_token_cache_s": (0.0, True, 300.0),  # also how late another process's revocation may take effect
    "embedded_idle_stop_s": (0.0, True, 366 * 86400.0),  # 0 = never
    "notify_rate_window_s": (0.0, False, 7 * 86400.0),
    "notify_backoff_s": (0.0, True, 86400.0),
    "sample_s": (0.5, True, 3600.0),  # faster costs the database a write per worker that often
}
# Whole numbers: (lowest, highest), both allowed.
_WHOLE: dict[str, tuple[int, int]] = {
    "max_file_bytes": (1, 15 * 2 ** 20),  # a deployed file is stored as one MongoDB document (16 MiB at most)
    "worker_capacity": (1, 1000),  # as `sooner worker --capacity`
    "web_port": (1, 65535),
    "web_trusted_proxies": (0, 10),  # as `sooner web --trusted-proxies`
    "output_flush_ms": (1, 60_000),
    "output_max_bytes_per_run": (1, 2 ** 40),
    "output_max_line_bytes": (1, 2 ** 30),
    "chain_depth_limit": (1, 1000),
    "dispatch_hold_ms": (0, 10_000),
    "outage_journal_mb": (1, 2 ** 20),
    "notify_rate_per_target": (1, 100_000),
    "notify_attempts": (1, 20),
}


def _check_values(settings: Settings, origins: Mapping[str, _Origin]) -> None:
    def fail(key: str, problem: str, *value: Any) -> ConfigError:
        return origins.get(key, _DEFAULT_ORIGIN).error(key, problem, *value)

    for key, (low, low_allowed, high) in _SECONDS.items():
        value = getattr(settings, key)
        if not ((low <= value if low_allowed else low < value) and value <= high):
            span = f"from {low:g} to {high:g}" if low_allowed else f"more than {low:g} and at most {high:g}"
            raise fail(key, f"must be a finite number of seconds {span}", value)
    for key, (least, most) in _WHOLE.items():
        value = getattr(settings, key)
        if not least <= value <= most:
            problem = "must be a port number 1-65535" if key == "web_port" else f"must be a whole number from {least} to {most}"
            raise fail(key, problem, value)
    _check_lease(settings, origins)
    days = settings.output_retention_days  # a TTL index takes at most 2**31 - 1 seconds
    if not 0 <= days <= 24_855:
        raise fail("output_retention_days", "must be a finite number of days from 0 (keep forever) to 24855", days)
    hours = settings.sample_retention_hours  # the workers page charts the last hour
    if not 1 <= hours <= 24 * 366:
        raise fail("sample_retention_hours", "must be a finite number of hours from 1 to 8784", hours)
    if settings.log_level.lower() not in _LOG_LEVELS:
        raise fail("log_level", f"must be one of {', '.join(_LOG_LEVELS)}", settings.log_level)
    _check_http(settings, fail)
    url = settings.mongo_url
    if url is not None and not url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        # The URL is not shown: it may hold a password.
        raise fail("mongo_url", "must start with mongodb://, mongodb+srv:// or mongomock:// "
                                "(or be null for the embedded default)")
    _check_notify(settings, fail)
    if not settings.database or any(c in settings.database for c in '/\\. "$'):
        raise fail("database", "must be a valid MongoDB database name (not empty, none of / \\ . space \" $)",
                   settings.database)


def _check_notify(settings: Settings, fail: Any) -> None:
    """The notify rules and the webhook secret, by the model's rules (:mod:`sooner.model.notify`)."""
    from sooner.model.notify import InvalidNotifyRule, parse_rules, validate_webhook_secret

    try:
        parse_rules(list(settings.notify), "rule", site=True)
    except InvalidNotifyRule as exc:
        raise fail("notify", str(exc)) from None
    try:
        validate_webhook_secret(settings.notify_webhook_secret)
    except InvalidNotifyRule:
        raise fail("notify_webhook_secret", "must be 'whsec_' followed by base64 (Standard Webhooks)") from None
    url = settings.public_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise fail("public_url", "must start with http:// or https://", url)


def _check_http(settings: Settings, fail: Any) -> None:
    from sooner.model.http_job import check_allow_pattern, secret_names

    for index, pattern in enumerate(settings.http_allow):
        problem = check_allow_pattern(pattern)
        if problem:
            raise fail("http_allow", f"entry {index}: {problem}")
    for name in settings.http_secrets:
        if secret_names("${secret:%s}" % name) != [name]:
            raise fail("http_secrets", f"{name!r} is not a secret name (letters, digits and _, not first a digit)")


def _check_lease(settings: Settings, origins: Mapping[str, _Origin]) -> None:
    """lease_s > heartbeat_s; blames the one that was set (lease_s when both were)."""
    if settings.lease_s > settings.heartbeat_s:
        return
    lease, beat = origins.get("lease_s", _DEFAULT_ORIGIN), origins.get("heartbeat_s", _DEFAULT_ORIGIN)
    if lease.kind == "default" and beat.kind != "default":
        raise beat.error("heartbeat_s", f"must be shorter than lease_s ({_number_text(settings.lease_s)} "
                                        f"{lease.describe()})")
    raise lease.error("lease_s", f"must be longer than heartbeat_s ({_number_text(settings.heartbeat_s)} "
                                 f"{beat.describe()})")


def _redacted(key: str, text: str) -> str:
    """A variable's text as an error may show it: never a password in a URL, never the secret key."""
    if key in ("secret_key", "notify_webhook_secret", "notify", "http_secrets"):  # notify targets may hold tokens
        return "***"
    return re.sub(r"//[^/@]*@", "//***@", text) if key == "mongo_url" else text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_text(value: Any) -> str:
    """A number as a message shows it: ``nan``, ``1e+06``, ``5``, ``100000000000… (31 digits)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = str(abs(value))
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[:12]}… ({len(digits)} digits)" if len(digits) > 15 else f"{sign}{digits}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown_value(value: Any) -> str:
    return _number_text(value) if _is_number(value) else json.dumps(value)


def _shown_text(text: str) -> str:
    """What a variable or flag said, short and unambiguous: ``nan``, ``999999999999…``, ``' 5'``."""
    short = text if len(text) <= 20 else text[:12] + "…"
    return short if short and short.isprintable() and " " not in short else repr(short)


def _suggestion(key: str, known: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known settings: {', '.join(known)})"


def default_config(secret_key: str) -> dict[str, Any]:
    """The config.json that `sooner init` writes: every key with its default."""
    values: dict[str, Any] = {}
    for f in config_keys():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc,operator]
        values[f.name] = list(default) if isinstance(default, tuple) else default
    values["secret_key"] = secret_key
    return values
