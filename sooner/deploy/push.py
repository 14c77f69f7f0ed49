"""Deploy the site's branch: check the commit, store its objects, update the working copy, reconcile jobs.

:func:`deploy` always deploys the *tip* of the configured branch and compares
it with the database, not with what a push changed. So a deploy that failed
half-way (database unreachable during a push) is completed by the next one,
and deploying the same commit twice changes nothing. Steps, in order:

1. read the commit and check its whole tree (:mod:`sooner.deploy.tree`):
   any problem refuses the deploy before anything is applied;
2. store the blobs and trees the database lacks, so workers on other machines
   can rebuild the tree (subtrees unchanged since the last deploy are skipped);
3. bring the working copy to the tree (:mod:`sooner.deploy.checkout`), but
   only when that loses nothing (:mod:`sooner.deploy.working_copy`): with
   uncommitted changes or local commits there, a deploy by hand is refused
   before anything is applied, and a deploy from the hook (someone pushed)
   deploys the jobs and leaves the working copy as it is, with a note;
4. reconcile ``jobs`` in one bulk write, then record the deploy (unless it is
   the latest deploy already and no job changed).

The pusher is also told about files that have a shebang but no executable
bit (they are not jobs), and how to deploy a branch this site does not
deploy. ``sooner deploy --working-copy`` is
:func:`sooner.deploy.working_copy.deploy_working_copy`.

Deploys of one site are serialised by a lock file. :func:`check_push` is what
the pre-receive hook runs: it rejects, before the ref moves, a first push of
another branch and any commit the deploy would refuse.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Iterator, Mapping, cast

from dulwich.errors import ObjectFormatException
from dulwich.objects import Commit, parse_tree
from dulwich.repo import Repo

from sooner.deploy.checkout import CheckoutResult, indexed_files, known_sizes, update_working_copy
from sooner.deploy.tree import TREE_MODE, DeployTree, ObjectSource, TreeFile, read_tree, scripts_not_executable
from sooner.deploy.working_copy import LocalChanges, has_object, local_changes
from sooner.errors import DeployError

if TYPE_CHECKING:
    from dulwich.objects import ObjectID
    from dulwich.refs import Ref

    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
MAX_LINES_PER_KIND = 50  # per-job lines sent back to the pusher before "... and N more"
MAX_NOTES = 20  # notes about non-executable scripts before "... and N more"


@dataclass(frozen=True)
class JobChanges:
    """What a deploy changes in ``jobs``: names -> blob sha (``removed``: names)."""

    created: dict[str, str] = field(default_factory=dict)
    updated: dict[str, str] = field(default_factory=dict)
    restored: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.created or self.updated or self.restored or self.removed)


@dataclass
class DeployReport:
    """The outcome of one deploy, and the lines shown to the pusher."""

    commit: str
    changes: JobChanges
    written: list[str]
    deleted: list[str]
    recorded: bool
    elapsed_s: float = 0.0
    not_executable: list[str] = field(default_factory=list)  # changed files with a shebang, not executable
    kept: LocalChanges | None = None  # the working copy's own work, left as it was


    @property
    def short(self) -> str:
        return self.commit[:7]

    def lines(self) -> list[str]:
        """One line per change, then a summary (each starting with ``sooner:``)."""
        c = self.changes
        if not self.recorded:
            lines = [f"sooner: already deployed {self.short}, nothing changed"]
            if self.written or self.deleted:
                lines.append(f"sooner: put back {len(self.written) + len(self.deleted)} file(s) in the working copy")
            return lines + self.notes()
        lines = _change_lines("created job {} (disabled)", sorted(c.created))
        lines += _change_lines("restored job {} (disabled)", sorted(c.restored))
        lines += _change_lines("updated job {}", sorted(c.updated))
        lines += _change_lines("removed job {} (history kept)", sorted(c.removed))
        lines += self.notes()
        counts = f"{len(c.created)} created, {len(c.updated)} updated, {len(c.removed)} removed"
        counts += f", {len(c.restored)} restored" if c.restored else ""
        files = (f"; {len(self.written)} file(s) written, {len(self.deleted)} deleted" if self.kept is None
                 else "; working copy left as it is")
        lines.append(f"sooner: deployed {self.short} ({counts}{files}) in {self.elapsed_s:.2f}s")
        return lines

    def notes(self) -> list[str]:
        """Notes for the pusher: scripts that are not jobs, and a working copy left as it was."""
        lines = [f"sooner: note: {path} has a shebang but is not executable: not a job (chmod +x to make it one)"
                 for path in self.not_executable[:MAX_NOTES]]
        if len(self.not_executable) > MAX_NOTES:
            lines.append(f"sooner: note: ... and {len(self.not_executable) - MAX_NOTES} more file(s) with a shebang "
                         f"that are not executable")
        if self.kept is not None:
            lines.append(f"sooner: note: the server's working copy has {self.kept.describe()}; it was left as it is, "
                         f"so it does not show {self.short} (`sooner deploy --working-copy` there deploys that work)")
        return lines


def _change_lines(template: str, names: list[str]) -> list[str]:
    lines = ["sooner: " + template.format(name) for name in names[:MAX_LINES_PER_KIND]]
    if len(names) > MAX_LINES_PER_KIND:
        verb = template.split(" ", 1)[0]
        lines.append(f"sooner: ... and {len(names) - MAX_LINES_PER_KIND} more job(s) {verb}")
    return lines


def plan_job_changes(scripts: Mapping[str, str], jobs: Mapping[str, Mapping]) -> JobChanges:
    """Compare the executable scripts of a tree (name -> blob) with the jobs in the database.

    New scripts are created; scripts of deleted jobs are restored; scripts whose
    blob changed are updated; live jobs without a script are removed.
    """
    changes = JobChanges()
    for name, blob in scripts.items():
        job = jobs.get(name)
        if job is None:
            changes.created[name] = blob
        elif job.get("deleted"):
            changes.restored[name] = blob
        elif job.get("blob") != blob:
            changes.updated[name] = blob
    changes.removed.extend(sorted(name for name, job in jobs.items()
                                  if name not in scripts and not job.get("deleted")))
    return changes


def refs_not_deployed(refs: Iterable[str], branch: str, deleted: Collection[str] = ()) -> list[str]:
    """Lines for the pushed refs that this site does not deploy, with the command that deploys a branch.

    ``deleted`` are refs the push removed: nothing to deploy there, so no hint.
    """
    lines = []
    for ref in refs:
        if ref == f"refs/heads/{branch}":
            continue
        name = ref.removeprefix("refs/heads/")
        kind = "branch" if ref.startswith("refs/heads/") else "ref"
        line = f"sooner: {kind} '{name}' is not deployed (this site deploys '{branch}')"
        if kind == "branch" and ref not in deleted:
            line += f"; to deploy it: git push origin {name}:{branch}"
        lines.append(line)
    return lines


def deleted_refs(settings: Settings, refs: Iterable[str]) -> list[str]:
    """The refs among ``refs`` that scripts.git no longer has (a push deleted them)."""
    repo = Repo(str(settings.repo_path))
    try:
        return [ref for ref in refs if cast("Ref", ref.encode()) not in repo.refs]
    finally:
        repo.close()


def deploy(settings: Settings, connect: Callable[[], Store], *, clock: Callable[[], float] = time.perf_counter,
           keep_local_changes: bool = False) -> DeployReport:
    """Deploy the tip of ``settings.branch``; ``connect`` is called only once the commit passed every check.

    A working copy with uncommitted changes or local commits is never
    overwritten: the deploy is refused (DeployError, nothing applied), or
    with ``keep_local_changes`` (the post-update hook: the push is in
    already) the jobs are deployed and the working copy is left as it is.
    """
    started = clock()
    with deploy_lock(settings):
        repo = Repo(str(settings.repo_path))
        try:
            commit_sha, commit = read_branch(repo, settings.branch)
            local = local_changes(settings.working_copy_path, lambda sha: has_object(repo, sha))
            if local.any and not keep_local_changes:
                raise DeployError(_refusal(settings, local))
            objects = ObjectCache(repo.object_store)
            indexed = indexed_files(settings.working_copy_path)
            tree = read_tree(objects, commit.tree.decode(), max_file_bytes=settings.max_file_bytes,
                             label=commit_sha[:7], known_sizes=known_sizes(indexed),
                             sizes=GitObjectSizes(settings.repo_path))
            report = _apply(settings, connect(), objects, commit, tree, indexed if not local.any else None)
            report.kept = local if local.any else None
        finally:
            repo.close()
    report.elapsed_s = clock() - started
    logger.info("deployed %s in %.3fs", report.commit, report.elapsed_s)
    return report


def _refusal(settings: Settings, local: LocalChanges) -> str:
    return (f"the working copy {settings.working_copy_path} has {local.describe()}, which this deploy would "
            f"overwrite, so nothing was deployed. To deploy what is in the working copy: "
            f"sooner deploy --working-copy -m 'what changed'. To deploy '{settings.branch}' as pushed instead, first "
            f"move that work out of the working copy (e.g. commit it on a branch of its own)")


def _apply(settings: Settings, store: Store, objects: ObjectCache, commit: Commit, tree: DeployTree,
           indexed: Mapping | None) -> DeployReport:
    """Everything after the checks: objects, working copy (None: leave it alone), jobs, deploy record."""
    commit_sha = commit.id.decode()
    latest = store.deploys.latest()
    known_tree = latest.get("tree") if latest else None
    store_objects(store, objects, tree, known_tree)

    def read_blob(sha: str) -> bytes:
        return objects.get_raw(sha.encode())[1]
    not_executable = scripts_not_executable(files_changed_since(objects, tree, known_tree), read_blob)
    if indexed is None:
        checkout = CheckoutResult([], [])
    else:
        _ensure_working_copy(settings)
        checkout = update_working_copy(settings.working_copy_path, settings.repo_path, tree.files, read_blob,
                                       commit=commit_sha, branch=settings.branch, indexed=indexed)
    changes = plan_job_changes(tree.jobs, store.jobs.deployed_state())
    store.jobs.record_deploy_changes(commit=commit_sha, created=changes.created, updated=changes.updated,
                                     restored=changes.restored, removed=changes.removed)
    # A deploy that changed no job is still recorded when the commit is new
    # (supporting files, or a message): the latest deploy is what runs use.
    recorded = not (changes.empty and latest is not None and latest.get("commit") == commit_sha)
    if recorded:
        store.deploys.record(
            commit=commit_sha, tree=tree.sha, branch=settings.branch,
            author=commit.author.decode("utf-8", "replace"), message=commit.message.decode("utf-8", "replace").strip(),
            created=sorted(changes.created), updated=sorted(changes.updated), removed=list(changes.removed),
            restored=sorted(changes.restored))
    return DeployReport(commit_sha, changes, checkout.written, checkout.removed, recorded,
                        not_executable=not_executable)


def _ensure_working_copy(settings: Settings) -> None:
    """Recreate the working copy if someone removed it (it is derived state)."""
    path = settings.working_copy_path
    if (path / ".git").is_dir():
        return
    if path.exists() and any(path.iterdir()):
        raise DeployError(f"the working copy {path} is not a git repository: move it away and deploy again")
    if path.exists():
        path.rmdir()
    from sooner.site import create_working_copy

    create_working_copy(settings)


class ObjectCache:
    """A dulwich object store that keeps what it read, up to a budget.

    The checks read every blob; storing the new ones and writing the working
    copy then need them again, and reading from a pack costs more than keeping
    a few megabytes of small scripts.
    """

    def __init__(self, objects: ObjectSource, budget_bytes: int = 64 * 1024 * 1024) -> None:
        self.objects = objects
        self.budget_bytes = budget_bytes
        self._kept: dict[bytes, tuple[int, bytes]] = {}

    def get_raw(self, sha: bytes) -> tuple[int, bytes]:
        found = self._kept.get(sha)
        if found is None:
            found = self.objects.get_raw(cast("ObjectID", sha))
            if len(found[1]) <= self.budget_bytes:
                self._kept[sha] = found
                self.budget_bytes -= len(found[1])
        return found


def read_branch(repo: Repo, branch: str) -> tuple[str, Commit]:
    """The commit at the tip of the branch, or DeployError."""
    try:
        sha = repo.refs[cast("Ref", b"refs/heads/" + branch.encode())]
    except KeyError:
        raise DeployError(f"branch {branch!r} does not exist in {repo.path} yet: push to it first "
                          f"(git push origin HEAD:{branch})") from None
    commit = repo.object_store[sha]
    if not isinstance(commit, Commit):
        raise DeployError(f"branch {branch!r} points to {sha.decode()}, which is not a commit")
    return sha.decode(), commit


def store_objects(store: Store, objects: ObjectSource, tree: DeployTree, known_tree: str | None) -> tuple[int, int]:
    """Store the blobs and trees of ``tree`` that the database lacks; returns (blobs, trees) sent.

    ``known_tree`` is the tree of the latest recorded deploy: its objects were
    stored before it was recorded, so subtrees it shares are skipped.
    """
    trees, blobs = _objects_since(objects, tree, known_tree)
    missing_blobs = store.objects.missing("blobs", blobs) if blobs else set()
    missing_trees = store.objects.missing("trees", trees) if trees else set()
    # Blobs first: a stored tree then always has its blobs.
    sent_blobs = store.objects.put_blobs((sha, objects.get_raw(cast("ObjectID", sha.encode()))[1])
                                         for sha in sorted(missing_blobs))
    sent_trees = store.objects.put_trees((sha, tree.trees[sha]) for sha in sorted(missing_trees))
    return sent_blobs, sent_trees


def _objects_since(objects: ObjectSource, tree: DeployTree, known_tree: str | None) -> tuple[set[str], set[str]]:
    """Tree and blob shas of ``tree`` that are not part of ``known_tree``."""
    trees: set[str] = set()
    blobs: set[str] = set()
    stack = [(tree.sha, known_tree)]
    while stack:
        new, old = stack.pop()
        if new == old or new in trees:
            continue
        trees.add(new)
        previous = _tree_entries(objects, old)
        for entry in tree.trees[new]:
            before = previous.get(entry["name"])
            if entry["mode"] == TREE_MODE:
                stack.append((entry["sha"], before[1] if before and before[0] == TREE_MODE else None))
            elif before is None or before[1] != entry["sha"]:
                blobs.add(entry["sha"])
    return trees, blobs


def files_changed_since(objects: ObjectSource, tree: DeployTree, known_tree: str | None) -> list[TreeFile]:
    """The files of ``tree`` whose content or mode differ from ``known_tree`` (all of them when it is None)."""
    changed = []
    stack = [(tree.sha, known_tree, "")]
    while stack:
        new, old, prefix = stack.pop()
        if new == old:
            continue
        previous = _tree_entries(objects, old)
        for entry in tree.trees.get(new, []):
            before = previous.get(entry["name"])
            path = prefix + entry["name"]
            if entry["mode"] == TREE_MODE:
                stack.append((entry["sha"], before[1] if before and before[0] == TREE_MODE else None, path + "/"))
            elif before != (entry["mode"], entry["sha"]) and path in tree.files:
                changed.append(tree.files[path])
    return sorted(changed, key=lambda file: file.path)


def _tree_entries(objects: ObjectSource, sha: str | None) -> dict[str, tuple[int, str]]:
    if sha is None:
        return {}
    try:
        kind, raw = objects.get_raw(cast("ObjectID", sha.encode()))
        entries = parse_tree(raw, 20) if kind == 2 else []
        return {name.decode("utf-8", "replace"): (mode, entry.decode()) for name, mode, entry in entries}
    except (KeyError, ValueError, ObjectFormatException):
        return {}  # gone from the repository (force push + gc): compare with nothing


def check_push(settings: Settings, updates: Iterable[tuple[str, str, str]], quarantine: str | None = None) -> list[str]:
    """Why a push (``old new ref`` updates) must be rejected; empty if it may go ahead.

    ``quarantine`` is git's GIT_QUARANTINE_PATH, where the pushed objects wait
    during pre-receive; the deployed branch's new commit is checked like a deploy.
    """
    updates = list(updates)
    deployed = f"refs/heads/{settings.branch}"
    alternates = [os.path.abspath(quarantine)] if quarantine else None
    repo = Repo(str(settings.repo_path), alternates=alternates)
    try:
        exists = cast("Ref", deployed.encode()) in repo.refs
        problems = []
        for _old, new, ref in updates:
            if ref != deployed:
                continue
            if new == ZERO_SHA:
                problems.append(f"branch '{settings.branch}' is the one this site deploys; it cannot be deleted")
                continue
            problems.extend(_check_commit(repo, new, settings, GitObjectSizes(settings.repo_path, quarantine)))
        if not exists and not any(ref == deployed for _, _, ref in updates):
            other = next((ref for _, new, ref in updates if ref.startswith("refs/heads/") and new != ZERO_SHA), None)
            if other:
                name = other.removeprefix("refs/heads/")
                problems.append(f"this site deploys branch '{settings.branch}', which does not exist yet. "
                                f"Push yours to it with: git push origin {name}:{settings.branch}")
        return problems
    finally:
        repo.close()


def _check_commit(repo: Repo, sha: str, settings: Settings, sizes: GitObjectSizes) -> list[str]:
    try:
        commit = repo.object_store[cast("ObjectID", sha.encode())]
    except KeyError:
        return [f"commit {sha[:7]} is missing from the push"]
    if not isinstance(commit, Commit):
        return [f"{sha[:7]} is not a commit; branch '{settings.branch}' must point to a commit"]
    try:
        read_tree(repo.object_store, commit.tree.decode(), max_file_bytes=settings.max_file_bytes, label=sha[:7],
                  sizes=sizes)
    except DeployError as exc:
        return [f"push rejected: {exc}"]
    return []


class GitObjectSizes:
    """Objects' types and sizes from ``git cat-file --batch-check``, which reads only their headers.

    dulwich has no such call: its ``get_raw`` inflates a whole object, so a
    200 MB file would be read (and held several times over) just to learn it
    is too big. git answers from a loose object's first bytes or a pack entry's
    header (and a delta's first bytes). ``quarantine`` is git's
    GIT_QUARANTINE_PATH, where pre-receive sees the pushed objects. When git
    cannot run, nothing is answered and the tree reader reads content instead.
    """

    def __init__(self, repo_path: Path, quarantine: str | None = None) -> None:
        self.repo_path = repo_path
        self.quarantine = quarantine

    def __call__(self, shas: Collection[bytes]) -> dict[bytes, tuple[int, int]]:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_OBJECT_ENV}
        if self.quarantine:
            env["GIT_OBJECT_DIRECTORY"] = os.path.abspath(self.quarantine)
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.path.abspath(self.repo_path / "objects")
        command = ["git", "--git-dir", str(self.repo_path), "cat-file",
                   "--batch-check=%(objectname) %(objecttype) %(objectsize)"]
        try:
            result = subprocess.run(command, input=b"".join(sha + b"\n" for sha in shas), env=env,
                                    capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            logger.warning("cannot read object sizes with git (%s); reading the objects instead", exc)
            return {}
        sizes = {}
        for line in result.stdout.splitlines():
            sha, kind, size = (line.split() + [b"", b""])[:3]  # "<sha> missing" for what is not there
            if kind in _GIT_TYPES:
                sizes[sha] = (_GIT_TYPES[kind], int(size))
        return sizes


_GIT_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}
_GIT_OBJECT_ENV = ("GIT_DIR", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH")


def parse_push_lines(lines: Iterable[str]) -> list[tuple[str, str, str]]:
    """The ``old new ref`` lines git gives pre-receive on stdin."""
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            updates.append((parts[0], parts[1], parts[2]))
    return updates


@contextmanager
def deploy_lock(settings: Settings) -> Iterator[None]:
    """One deploy at a time per site (two pushes at once would race on the working copy)."""
    path: Path = settings.state_dir / "deploy.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

