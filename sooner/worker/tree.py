"""Materialise a deployed commit's tree from the database into the worker's cache.

A run names a ``commit``; its deploy names the root ``tree``; the ``trees`` and
``blobs`` collections hold every object of it (see :mod:`sooner.deploy`). The
tree is written once per machine to ``<cache>/trees/<tree sha>/``: built in a
temporary folder beside it and renamed into place, so a half-written tree is
never visible and concurrent runs or worker processes share one copy (the
loser of a rename race throws its copy away). Only the database URL is needed.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sooner.errors import RunError

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)

TREE_MODE = 0o040000
SYMLINK_MODE = 0o120000
GITLINK_MODE = 0o160000


class TreeCache:
    """Commit -> materialised tree folder, cached on disk and (per commit) in memory."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = Path(root).expanduser()
        self._by_commit: dict[str, Path] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, commit: str | None, job: str = "?") -> Path:
        """The tree folder of ``commit``, building it if needed; RunError if it cannot be had."""
        if not commit:
            raise RunError(f"job {job!r} has no deployed commit yet: push the scripts repository first")
        path = self._by_commit.get(commit)
        if path is not None and path.is_dir():  # someone may have cleared the cache
            return path
        deploy = self.store.deploys.by_commit(commit)
        if deploy is None or not deploy.get("tree"):
            raise RunError(f"commit {commit[:12]} of job {job!r} has no deploy record with a tree in the database")
        path = self.materialise(deploy["tree"])
        self._by_commit[commit] = path
        return path

    def materialise(self, tree_sha: str) -> Path:
        """Build ``<cache>/trees/<tree_sha>`` unless it exists; return it."""
        final = self.root / "trees" / tree_sha
        if final.is_dir():
            return final
        with self._lock_for(tree_sha):
            if final.is_dir():
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(tempfile.mkdtemp(prefix=f".{tree_sha[:12]}-", dir=final.parent))
            try:
                self._write_tree(tree_sha, temporary)
                os.chmod(temporary, 0o755)
                try:
                    os.rename(temporary, final)
                except OSError:
                    if not final.is_dir():
                        raise
                    logger.debug("tree %s was built concurrently; using that copy", tree_sha)
            finally:
                if temporary.exists():
                    shutil.rmtree(temporary, ignore_errors=True)
            logger.info("materialised tree %s in %s", tree_sha, final)
            return final

    def _lock_for(self, tree_sha: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(tree_sha, threading.Lock())

    def _write_tree(self, tree_sha: str, folder: Path) -> None:
        # Iterative: a hostile or generated tree may be deeper than the recursion limit.
        stack = [(tree_sha, folder)]
        blobs: dict[str, bytes] = {}
        while stack:
            sha, target = stack.pop()
            entries = self.store.objects.get_tree(sha)
            if entries is None:
                raise RunError(f"tree {sha} is missing from the database; deploy the commit again")
            for entry in entries:
                name, mode, entry_sha = entry["name"], int(entry["mode"]), entry["sha"]
                _check_name(name, sha)
                path = target / name
                if mode == TREE_MODE:
                    path.mkdir()
                    stack.append((entry_sha, path))
                elif mode == GITLINK_MODE:
                    continue  # submodules are refused at deploy; nothing to write
                else:
                    self._write_file(path, mode, entry_sha, blobs)

    def _write_file(self, path: Path, mode: int, sha: str, blobs: dict[str, bytes]) -> None:
        data = blobs.get(sha)
        if data is None:
            data = self.store.objects.get_blob(sha)
            if data is None:
                raise RunError(f"blob {sha} ({path.name}) is missing from the database; deploy the commit again")
            if len(data) < 1024 * 1024:
                blobs[sha] = data
        if mode == SYMLINK_MODE:
            os.symlink(os.fsdecode(data), path)
            return
        if not stat.S_ISREG(mode):
            raise RunError(f"unsupported mode {mode:o} for {path.name} in the deployed tree")
        executable = mode & 0o111
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o755 if executable else 0o644)


def _check_name(name: str, tree_sha: str) -> None:
    # Deploy refuses such names; checked again because the cache must never be escaped.
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise RunError(f"tree {tree_sha} has an invalid entry name {name!r}")


def default_cache_dir() -> Path:
    """Where a worker without a site keeps its cache: ``$XDG_CACHE_HOME/sooner`` or ``~/.cache/sooner``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sooner"
