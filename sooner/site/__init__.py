"""Create a site: ``sooner init DIR``.

A site holds ``config.json`` (0600: it carries the session secret),
``scripts.git`` (bare, default branch from the config, hooks installed from
``git-hooks/`` with this Python and this config filled in),
``scripts-working-copy`` and ``.sooner/`` for local state.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

from dulwich.repo import Repo

from sooner.config import CONFIG_FILE, Settings, default_config, load_settings
from sooner.errors import ConfigError
from sooner.resources import resource_dir

if TYPE_CHECKING:
    from dulwich.refs import Ref

HOOKS = ("post-update", "pre-receive")


def init_site(directory: Path) -> Settings:
    """Create a new site in ``directory`` (which may exist but must not hold a site)."""
    directory = directory.resolve()
    config_path = directory / CONFIG_FILE
    if config_path.exists():
        raise ConfigError("a site already exists here (config.json found); nothing changed", source=str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".sooner").mkdir(exist_ok=True)
    _write_private(config_path, json.dumps(default_config(secrets.token_urlsafe(32)), indent=2) + "\n")
    settings = load_settings(config_path, environ={})
    create_bare_repo(settings)
    create_working_copy(settings)
    (directory / ".gitignore").write_text(".sooner/\n")
    return settings


def create_bare_repo(settings: Settings) -> None:
    """The bare scripts repository, its default branch and Sooner's hooks."""
    path = settings.repo_path
    path.mkdir(parents=True)
    repo = Repo.init_bare(str(path))
    repo.refs.set_symbolic_ref(cast("Ref", b"HEAD"), cast("Ref", b"refs/heads/" + settings.branch.encode()))
    template = resource_dir("template")
    for source in template.rglob("*"):
        if source.is_file():
            target = path / source.relative_to(template)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    install_hooks(settings)
    repo.close()


def install_hooks(settings: Settings) -> None:
    """(Re)install the git hooks, pointing them at this Python and this site's config."""
    hooks_dir = settings.repo_path / "hooks"
    hooks_dir.mkdir(exist_ok=True)
    for sample in hooks_dir.glob("*.sample"):
        sample.unlink()
    config = str(settings.site_path(CONFIG_FILE))
    for name in HOOKS:
        text = (resource_dir("git-hooks") / name).read_text()
        text = text.replace("@PYTHON@", _shell_quoted(sys.executable)).replace("@CONFIG@", _shell_quoted(config))
        target = hooks_dir / name
        target.write_text(text)
        target.chmod(0o755)


def create_working_copy(settings: Settings) -> None:
    """An empty clone-to-be of scripts.git; deploys keep it checked out at the deployed commit."""
    path = settings.working_copy_path
    repo = Repo.init(str(path), mkdir=True)
    config = repo.get_config()
    config.set((b"remote", b"origin"), b"url", str(settings.repo_path).encode())
    config.set((b"remote", b"origin"), b"fetch", b"+refs/heads/*:refs/remotes/origin/*")
    config.write_to_path()
    repo.refs.set_symbolic_ref(cast("Ref", b"HEAD"), cast("Ref", b"refs/heads/" + settings.branch.encode()))
    repo.close()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _shell_quoted(value: str) -> str:
    # The hook templates wrap values in single quotes.
    return value.replace("'", "'\\''")
