"""Deploy the site's branch: check the commit, store its objects, update the working copy, reconcile jobs.

:func:`deploy` always deploys the *tip* of the configured branch and compares
it with the database, not with what a push changed. So a deploy that failed
half-way (database unreachable during a push) is completed by the next one,
and deploying the same commit twice changes nothing. Steps, in order:

1. read the commit and check its whole tree (:mod:`sooner.deploy.tree`):
   any problem refuses the deploy before anything is applied;
2. store the blobs and trees the database lacks, so workers on other machines
   can rebuild the tree (subtrees unchanged since the last deploy are skipped);
3. bring the working copy to the tree (:mod:`sooner.deploy.checkout`);
4. reconcile ``jobs`` in one bulk write, then record the deploy (unless it is
   the latest deploy already and no job changed).

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

from sooner.deploy.checkout import indexed_files, known_sizes, update_working_copy
from sooner.deploy.tree import TREE_MODE, DeployTree, ObjectSource, read_tree
from sooner.errors import DeployError

if TYPE_CHECKING:
    from dulwich.objects import ObjectID
    from dulwich.refs import Ref

    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
MAX_LINES_PER_KIND = 50  # per-job lines sent back to the pusher before "... and N more"


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
            return lines
        lines = _change_lines("created job {} (disabled)", sorted(c.created))
        lines += _change_lines("restored job {} (disabled)", sorted(c.restored))
        lines += _change_lines("updated job {}", sorted(c.updated))
        lines += _change_lines("removed job {} (history kept)", sorted(c.removed))
        counts = f"{len(c.created)} created, {len(c.updated)} updated, {len(c.removed)} removed"
        counts += f", {len(c.restored)} restored" if c.restored else ""
        files = f"; {len(self.written)} file(s) written, {len(self.deleted)} deleted"
        lines.append(f"sooner: deployed {self.short} ({counts}{files}) in {self.elapsed_s:.2f}s")
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


def refs_not_deployed(refs: Iterable[str], branch: str) -> list[str]:
    """Lines for the pushed refs that this site does not deploy."""
    lines = []
    for ref in refs:
        if ref == f"refs/heads/{branch}":
            continue
        name = ref.removeprefix("refs/heads/")
        kind = "branch" if ref.startswith("refs/heads/") else "ref"
        lines.append(f"sooner: {kind} '{name}' is not deployed (this site deploys '{branch}')")
    return lines


def deploy(settings: Settings, connect: Callable[[], Store], *, clock: Callable[[], float] = time.perf_counter
           ) -> DeployReport:
    """Deploy the tip of ``settings.branch``; ``connect`` is called only once the commit passed every check."""
    started = clock()
    with _deploy_lock(settings):
        repo = Repo(str(settings.repo_path))
        try:
            commit_sha, commit = read_branch(repo, settings.branch)
            objects = ObjectCache(repo.object_store)
            indexed = indexed_files(settings.working_copy_path)
            tree = read_tree(objects, commit.tree.decode(), max_file_bytes=settings.max_file_bytes,
                             label=commit_sha[:7], known_sizes=known_sizes(indexed),
                             sizes=GitObjectSizes(settings.repo_path))
            report = _apply(settings, connect(), objects, commit, tree, indexed)
        finally:
            repo.close()
    report.elapsed_s = clock() - started
    logger.info("deployed %s in %.3fs", report.commit, report.elapsed_s)
    return report


def _apply(settings: Settings, store: Store, objects: ObjectCache, commit: Commit, tree: DeployTree,
           indexed: Mapping) -> DeployReport:
    """Everything after the checks: objects, working copy, jobs, deploy record."""
    commit_sha = commit.id.decode()
    latest = store.deploys.latest()
    store_objects(store, objects, tree, latest.get("tree") if latest else None)
    _ensure_working_copy(settings)
    checkout = update_working_copy(
        settings.working_copy_path, settings.repo_path, tree.files, lambda sha: objects.get_raw(sha.encode())[1],
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
    return DeployReport(commit_sha, changes, checkout.written, checkout.removed, recorded)


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
def _deploy_lock(settings: Settings) -> Iterator[None]:
    """One deploy at a time per site (two pushes at once would race on the working copy)."""
    path: Path = settings.state_dir / "deploy.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
