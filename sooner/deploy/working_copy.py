"""What people change by hand in the site's working copy: find it, keep it, and deploy it.

Sooner.io's workflow is to edit scripts in the server's working copy, deploy,
and commit when done. A deploy must therefore never overwrite such work.
Two kinds of it exist:

- *uncommitted changes*: what ``git status`` reports (edits, new files that
  are not ignored, deletions);
- *local commits*: a ``HEAD`` that scripts.git lacks. Deploys never write
  objects into the working copy (it reads scripts.git's through
  ``objects/info/alternates``), so a commit object only the working copy has
  was made there by hand.

:func:`local_changes` finds both; the deploy (:mod:`sooner.deploy.push`)
refuses to touch a working copy that has any. ``sooner deploy --working-copy``
turns them into a commit on the deployed branch instead:
:func:`commit_working_copy` commits what is there (as the local git identity)
once it knows the branch has not moved on, and :func:`push_working_copy`
pushes that commit to scripts.git, whose hooks check and deploy it exactly as
any push. Nothing is ever reset, checked out or stashed here: a working copy
that diverged from the branch is refused with the commands that reconcile it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, cast

from dulwich.repo import Repo

from sooner.errors import DeployError

if TYPE_CHECKING:
    from dulwich.objects import ObjectID
    from dulwich.refs import Ref

    from sooner.config import Settings

MAX_PATHS_SHOWN = 5  # paths a message names before "and N more"
# git reads these from the environment before its options: a hook's GIT_DIR
# would make every command below look at scripts.git instead.
_GIT_LOCATION_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                     "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH", "GIT_PREFIX")


@dataclass(frozen=True)
class LocalChanges:
    """Work in the working copy that a deploy would lose.

    ``changed`` maps paths to ``added``, ``deleted`` or ``modified``;
    ``head`` is the working copy's commit (None while it has none) and
    ``local_head`` says whether scripts.git lacks it.
    """

    changed: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    local_head: bool = False
    in_progress: str | None = None  # "a rebase", "a merge" … that someone started there

    @property
    def any(self) -> bool:
        return bool(self.changed) or self.local_head or self.in_progress is not None

    def describe(self) -> str:
        """``uncommitted changes in 2 file(s) (a.sh, b.sh) and local commits (HEAD 1234567)``."""
        parts = []
        if self.changed:
            parts.append(f"uncommitted changes in {len(self.changed)} file(s) ({_some(sorted(self.changed))})")
        if self.local_head:
            assert self.head is not None, "a local HEAD is a commit"
            parts.append(f"local commits (HEAD {self.head[:7]}, not in scripts.git)")
        if self.in_progress:
            parts.append(f"{self.in_progress} in progress")
        return " and ".join(parts)


def local_changes(path: Path, in_repo: Callable[[str], bool]) -> LocalChanges:
    """The uncommitted changes and local commits of the working copy at ``path``.

    ``in_repo(sha)`` says whether scripts.git has an object. A missing working
    copy has none (the deploy recreates it). If git cannot read its state, the
    deploy is refused rather than risk overwriting something.
    """
    if not (path / ".git").is_dir():
        return LocalChanges()
    # Porcelain v2 gives HEAD and every change in one call; --untracked-files=all
    # names new files one by one (a new folder would otherwise be one entry).
    status = _git(path, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all",
                  what="read the state of the working copy")
    head, changed = _parse_status(status)
    return LocalChanges(changed, head, head is not None and not in_repo(head), _in_progress(path / ".git"))


# What git leaves in .git while an operation waits for the user (git's wt-status.c looks at the same).
_IN_PROGRESS = (("rebase-merge", "a rebase"), ("rebase-apply", "a rebase"), ("MERGE_HEAD", "a merge"),
                ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"))


def _in_progress(git_dir: Path) -> str | None:
    return next((what for name, what in _IN_PROGRESS if (git_dir / name).exists()), None)


def _parse_status(output: str) -> tuple[str | None, dict[str, str]]:
    """HEAD and {path: kind} from ``git status --porcelain=v2 --branch -z``."""
    head = None
    changed: dict[str, str] = {}
    records = iter(output.split("\0"))
    for record in records:
        kind, _, rest = record.partition(" ")
        if kind == "#" and rest.startswith("branch.oid "):
            oid = rest.removeprefix("branch.oid ")
            head = None if oid == "(initial)" else oid
        elif kind == "?":
            changed[rest] = "added"
        elif kind in ("1", "2", "u"):
            fields = rest.split(" ", {"1": 7, "2": 8, "u": 9}[kind])
            xy, name = fields[0], fields[-1]
            changed[name] = "added" if "A" in xy else "deleted" if "D" in xy else "modified"
            if kind == "2":
                next(records, None)  # a rename's original path, deleted by it
    return head, changed


def deploy_working_copy(settings: Settings, message: str | None) -> tuple[Committed, list[str]]:
    """``sooner deploy --working-copy``: commit what the working copy holds and push it to the branch.

    Returns what was committed and the lines the hooks printed (the deploy
    itself runs in scripts.git's post-update hook, as for any push). When the
    working copy holds nothing of its own, ``committed.head`` is None and
    nothing was pushed: the caller deploys the branch as it is.
    """
    from sooner.deploy.push import deploy_lock  # push.py imports this module

    with deploy_lock(settings):  # no deploy rewrites the working copy while it is read and committed
        repo = Repo(str(settings.repo_path))
        try:
            ref = cast("Ref", f"refs/heads/{settings.branch}".encode())
            tip = repo.refs[ref].decode() if ref in repo.refs else None
            committed = commit_working_copy(settings, message, in_repo=lambda sha: has_object(repo, sha), tip=tip)
        finally:
            repo.close()
    if committed.head is None or committed.head == tip:
        return committed, []
    return committed, push_working_copy(settings, committed.head)


def has_object(repo: Repo, sha: str) -> bool:
    """Whether the repository (scripts.git) holds the object ``sha``."""
    try:
        return cast("ObjectID", sha.encode()) in repo.object_store
    except ValueError:  # not a sha at all
        return False


@dataclass(frozen=True)
class Committed:
    """What :func:`commit_working_copy` found and did.

    ``head`` is the commit to push (None: nothing local, deploy the branch as
    it is); ``author`` and ``message`` describe the commit it made, if any.
    """

    head: str | None
    author: str = ""
    message: str = ""


def commit_working_copy(settings: Settings, message: str | None, *, in_repo: Callable[[str], bool],
                        tip: str | None) -> Committed:
    """Commit the working copy's uncommitted changes, after checking it has not diverged from ``tip``.

    ``tip`` is the deployed branch's commit in scripts.git (None before the
    first push). Raises DeployError, changing nothing, when the branch has
    commits the working copy lacks, or when git has no identity to commit as.
    The caller holds the deploy lock, so no deploy touches the working copy
    meanwhile.
    """
    path = settings.working_copy_path
    if not (path / ".git").is_dir():
        raise DeployError(f"there is no working copy at {path}: `sooner deploy` recreates it")
    changes = local_changes(path, in_repo)
    if not changes.any:
        return Committed(None)
    if changes.in_progress:
        raise DeployError(f"the working copy {path} has {changes.in_progress} in progress: finish it there first "
                          f"(`git status` says how), then run `sooner deploy --working-copy` again. Nothing was changed")
    if tip is not None and (changes.head is None or not _is_ancestor(path, tip, changes.head)):
        raise DeployError(diverged_message(settings, changes, tip))
    if not changes.changed:
        return Committed(changes.head)  # local commits only: push them as they are
    author = _git(path, "var", "GIT_AUTHOR_IDENT", what="find who commits", hint=_IDENTITY_HINT)
    author = author.rsplit(">", 1)[0] + ">"  # without the timestamp git appends
    text = message if message and message.strip() else generated_message(changes.changed)
    _git(path, "add", "--all", what="stage the changes")
    _git(path, "commit", "--quiet", "--no-verify", "--file", "-", input=text, what="commit the changes")
    head = _git(path, "rev-parse", "--verify", "HEAD^{commit}", what="read the new commit").strip()
    return Committed(head, author=author, message=text.strip().splitlines()[0])


def push_working_copy(settings: Settings, head: str) -> list[str]:
    """Push ``head`` to the deployed branch; returns the lines scripts.git's hooks printed (``sooner: …``).

    Raises DeployError when the push is refused: by the pre-receive check
    (the commit stays in the working copy, to be fixed and deployed again),
    or because someone pushed in the meantime (with the commands to reconcile).
    """
    path, branch = settings.working_copy_path, settings.branch
    result = subprocess.run(["git", "push", "--porcelain", str(settings.repo_path), f"{head}:refs/heads/{branch}"],
                            cwd=path, env=git_env(), capture_output=True, text=True, errors="replace")
    remote = [line.removeprefix("remote: ").rstrip() for line in result.stderr.splitlines()
              if line.startswith("remote: ")]
    lines = [line for line in remote if line.startswith("sooner:")]
    if result.returncode == 0:
        return lines
    if "[rejected]" in result.stdout:  # not a fast-forward: the branch moved after our check
        raise DeployError(f"someone pushed to '{branch}' while the working copy was being committed; your "
                          f"commit {head[:7]} stays in the working copy. Bring them together, then deploy again:\n"
                          + _reconcile_commands(settings, with_commit=False))
    why = "\n".join(lines) or result.stderr.strip() or result.stdout.strip()
    raise DeployError(f"scripts.git refused the working copy's commit {head[:7]}:\n{why}\nThe commit stays in the "
                      f"working copy, nothing is lost: fix it there and run `sooner deploy --working-copy` again")


def diverged_message(settings: Settings, changes: LocalChanges, tip: str) -> str:
    """Why a diverged working copy is refused, and the exact commands that reconcile it."""
    path, branch = settings.working_copy_path, settings.branch
    if changes.head is None:
        missing = f"'{branch}' has commits (pushed since the working copy was made) and the working copy has none"
    else:
        theirs = _git(path, "rev-list", "--count", f"{changes.head}..{tip}", what="compare with the branch").strip()
        missing = f"'{branch}' has {theirs} commit(s) the working copy lacks (pushed since it was last deployed)"
    own = f"; the working copy has {changes.describe()}" if changes.any else ""
    return (f"the working copy {path} has diverged from '{branch}': {missing}{own}. Nothing was changed. "
            f"Bring them together, then deploy again:\n"
            + _reconcile_commands(settings, with_commit=bool(changes.changed)))


def _reconcile_commands(settings: Settings, *, with_commit: bool) -> str:
    commit = ["git add --all && git commit -m 'Work in the working copy'"] if with_commit else []
    commands = [f"cd {_quoted(str(settings.working_copy_path))}", *commit,
                f"git pull --rebase origin {settings.branch}    # on a conflict: fix the files, git add them, "
                f"git rebase --continue",
                "sooner deploy --working-copy"]
    return "\n".join("  " + command for command in commands)


def generated_message(changed: dict[str, str]) -> str:
    """A commit message naming what changed: ``Edit in the working copy: modify a.sh; add b.sh``."""
    parts = []
    for kind, verb in (("modified", "modify"), ("added", "add"), ("deleted", "delete")):
        names = sorted(name for name, what in changed.items() if what == kind)
        if names:
            parts.append(f"{verb} {_some(names)}")
    return "Edit in the working copy: " + "; ".join(parts) + "\n"


def git_env() -> dict[str, str]:
    """The environment for git in the working copy: none of a hook's repository variables."""
    return {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_ENV}


_IDENTITY_HINT = ("git does not know who you are, so it cannot commit for you. Set it with: "
                  "git config --global user.name 'Your Name' && git config --global user.email you@example.com")


def _git(path: Path, *args: str, what: str, input: str | None = None, hint: str = "") -> str:
    try:
        result = subprocess.run(["git", *args], cwd=path, env=git_env(), input=input, capture_output=True, text=True,
                                errors="replace")
    except OSError as exc:
        raise DeployError(f"cannot {what} in {path}: git does not run ({exc.strerror}); install git") from None
    if result.returncode != 0:
        detail = hint or (result.stderr.strip().splitlines() or ["git failed"])[-1]
        raise DeployError(f"cannot {what} in {path}: {detail}")
    return result.stdout


def _is_ancestor(path: Path, ancestor: str, commit: str) -> bool:
    result = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=path, env=git_env(),
                            capture_output=True)
    if result.returncode not in (0, 1):
        raise DeployError(f"cannot compare the working copy with the branch in {path}: "
                          f"{result.stderr.decode(errors='replace').strip()}")
    return result.returncode == 0


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_PATHS_SHOWN])
    return shown + (f" and {len(names) - MAX_PATHS_SHOWN} more" if len(names) > MAX_PATHS_SHOWN else "")


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)
