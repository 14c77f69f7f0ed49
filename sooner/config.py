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
    worker_capacity: int = field(default=4, metadata={"doc": "runs a worker executes at once"})
    heartbeat_s: float = field(default=2.0, metadata={"doc": "worker heartbeat interval"})
    lease_s: float = field(default=30.0, metadata={"doc": "a running run is lost if its worker is silent this long"})
    cancel_grace_s: float = field(default=10.0, metadata={"doc": "SIGTERM→SIGKILL delay when cancelling"})
    shutdown_grace_s: float = field(default=30.0, metadata={"doc": "how long a stopping worker lets runs finish"})
    output_flush_ms: int = field(default=100, metadata={"doc": "longest delay before output reaches the database"})
    chain_depth_limit: int = field(default=10, metadata={"doc": "events chained deeper than this start no runs"})
    log_level: str = field(default="warning", metadata={"doc": "debug, info, warning or error"})
    site_dir: Path | None = field(default=None, metadata={"internal": True})

    def site_path(self, relative: str) -> Path:
        """Resolve a site-relative setting; fails clearly without a site."""
        if self.site_dir is None:
            raise SiteNotFound(f"this needs a Sooner site (for {relative!r}); pass --config or run `sooner init`")
        path = Path(relative)
        return path if path.is_absolute() else self.site_dir / path

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
) -> Settings:
    """Load settings from a config file (optional), the environment and overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    site_dir = None
    if config_path is not None:
        values.update(_read_config_file(config_path))
        site_dir = config_path.resolve().parent
    values.update(_read_environment(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = Settings(**values, site_dir=site_dir)
    _check_values(settings, str(config_path) if config_path else "environment")
    return settings


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("file not found", source=str(path))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=str(path)) from None
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


def _read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for f in config_keys():
        name = ENV_PREFIX + f.name.upper()
        if name in environ:
            values[f.name] = _coerce_text(f, environ[name], name)
    return values


def _base_type(f: dataclasses.Field[Any]) -> str:
    # Annotations are strings under `from __future__ import annotations`.
    return str(f.type).replace(" | None", "")


def _coerce_json(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    kind = _base_type(f)
    if value is None and "None" in str(f.type):
        return None
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    expected = {"str": "a string", "int": "a whole number", "float": "a number"}[kind]
    raise ConfigError(f"must be {expected}, got {json.dumps(value)}", source=source, key=f.name)


def _coerce_text(f: dataclasses.Field[Any], text: str, variable: str) -> Any:
    kind = _base_type(f)
    if kind == "str":
        return text if text or "None" not in str(f.type) else None
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        expected = "a whole number" if kind == "int" else "a number"
        raise ConfigError(f"must be {expected}, got {text!r}", source=variable) from None


def _check_values(settings: Settings, source: str) -> None:
    positive = ("max_file_bytes", "worker_capacity", "heartbeat_s", "lease_s", "output_flush_ms", "chain_depth_limit")
    for key in positive:
        if getattr(settings, key) <= 0:
            raise ConfigError(f"must be greater than 0, got {getattr(settings, key)}", source=source, key=key)
    for key in ("cancel_grace_s", "shutdown_grace_s", "web_trusted_proxies"):
        if getattr(settings, key) < 0:
            raise ConfigError("must not be negative", source=source, key=key)
    if not 0 < settings.web_port < 65536:
        raise ConfigError(f"must be a port number 1-65535, got {settings.web_port}", source=source, key="web_port")
    if settings.lease_s <= settings.heartbeat_s:
        raise ConfigError("must be longer than heartbeat_s", source=source, key="lease_s")
    if settings.log_level.lower() not in _LOG_LEVELS:
        raise ConfigError(f"must be one of {', '.join(_LOG_LEVELS)}", source=source, key="log_level")
    url = settings.mongo_url
    if url is not None and not url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        raise ConfigError("must start with mongodb://, mongodb+srv:// or mongomock:// (or be null for the embedded default)",
                          source=source, key="mongo_url")
    if not settings.database or any(c in settings.database for c in '/\\. "$'):
        raise ConfigError(f"not a valid MongoDB database name: {settings.database!r}", source=source, key="database")


def _suggestion(key: str, known: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known settings: {', '.join(known)})"


def default_config(secret_key: str) -> dict[str, Any]:
    """The config.json that `sooner init` writes: every key with its default."""
    values: dict[str, Any] = {}
    for f in config_keys():
        values[f.name] = f.default
    values["secret_key"] = secret_key
    return values
