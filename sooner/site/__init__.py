"""Create a site: ``sooner init DIR``.

A site holds ``config.json`` (0600: it carries the session secret),
``scripts.git`` (bare, default branch from the config, hooks installed from
``git-hooks/`` with this Python and this config filled in),
``scripts-working-copy`` and ``.sooner/`` for local state.

Because of the secret, a site is never created inside a git work tree that
would track it (:func:`unignored_work_tree`): ``git add -A`` there would
commit ``config.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

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
    work_tree = unignored_work_tree(directory)
    if work_tree is not None:
        raise ConfigError(f"not creating a site here: it is inside the git work tree {work_tree}, which does not "
                          f"ignore it, so `git add -A` there would commit config.json and its session secret. "
                          f"Use a folder outside (e.g. ~/sooner-site), or first add {ignore_pattern(directory, work_tree)!r} "
                          f"to {work_tree / '.gitignore'}", source=str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".sooner").mkdir(exist_ok=True)
    _write_private(config_path, json.dumps(default_config(secrets.token_urlsafe(32)), indent=2) + "\n")
    settings = load_settings(config_path, environ={})
    create_bare_repo(settings)
    create_working_copy(settings)
    (directory / ".gitignore").write_text(".sooner/\n")
    return settings


def unignored_work_tree(directory: Path) -> Path | None:
    """The git work tree that holds ``directory`` without ignoring its ``config.json``, else None.

    ``directory`` need not exist yet. Without git, or outside any work tree,
    the answer is None.
    """
    directory = directory.resolve()
    probe = next((folder for folder in (directory, *directory.parents) if folder.is_dir()), None)
    if probe is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=probe, env=env, capture_output=True,
                             text=True, timeout=30)
        if top.returncode != 0 or not top.stdout.strip():
            return None  # not in a work tree (or inside a .git folder)
        work_tree = Path(top.stdout.strip()).resolve()
        secret = _relative(directory / CONFIG_FILE, work_tree)
        ignored = subprocess.run(["git", "check-ignore", "-q", "--", secret], cwd=work_tree, env=env,
                                 capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return work_tree if ignored.returncode == 1 else None


def ignore_pattern(directory: Path, work_tree: Path) -> str:
    """The .gitignore line that keeps the site at ``directory`` out of ``work_tree``."""
    relative = _relative(directory.resolve(), work_tree)
    return f"/{CONFIG_FILE}" if relative == "." else f"/{relative}/"


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def create_bare_repo(settings: Settings) -> None:
    """The bare scripts repository, its default branch and Sooner's hooks."""
    path = settings.repo_path
    from dulwich.repo import Repo  # here: `sooner up`'s lean master imports this package

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
    from dulwich.repo import Repo

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
