"""Bring the site's working copy to exactly a deployed tree.

The working copy is a normal git repository (``git status`` there is clean
after a deploy). Its objects come from ``scripts.git`` through
``objects/info/alternates`` rather than being copied: a deploy then writes
only the files that changed, not the objects too.

Like git, a file is rewritten only when its index entry (sha, mode) or its
stat data (size, mtime, inode) no longer match, so an incremental deploy
touches only what changed. Work done by hand in the working copy never gets
here: the deploy refuses or skips the checkout first
(:mod:`sooner.deploy.working_copy`). Paths were validated before we get
here; on top of that nothing is ever written or removed through a symlink:
every parent folder is checked with ``lstat`` and a symlink or file in the
way is replaced by a real folder.
"""

from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, cast

from dulwich.index import ConflictedIndexEntry, Index, IndexEntry, index_entry_from_stat
from dulwich.repo import Repo

from sooner.deploy.tree import EXECUTABLE_MODE, REGULAR_MODE, SYMLINK_MODE, TreeFile

if TYPE_CHECKING:
    from dulwich.objects import ObjectID
    from dulwich.refs import Ref


WRITER_THREADS = 4
WRITE_BATCH_FILES = 64  # blobs held in memory at once while writing


@dataclass(frozen=True)
class CheckoutResult:
    """What changed on disk."""

    written: list[str]
    removed: list[str]


def indexed_files(path: Path) -> dict[str, IndexEntry | ConflictedIndexEntry]:
    """The working copy's index (what the last deploy wrote): path -> entry."""
    index = Index(os.path.join(path, ".git", "index"))
    return {name.decode("utf-8", "surrogateescape"): entry for name, entry in index.items()}


def known_sizes(indexed: Mapping[str, IndexEntry | ConflictedIndexEntry]) -> dict[str, int]:
    """Blob sha -> size for the regular files of an index (a file's size is its blob's)."""
    return {entry.sha.decode(): entry.size for entry in indexed.values()
            if isinstance(entry, IndexEntry) and entry.mode in (REGULAR_MODE, EXECUTABLE_MODE)}


def update_working_copy(path: Path, repo_path: Path, files: Mapping[str, TreeFile], read_blob: Callable[[str], bytes],
                        *, commit: str, branch: str,
                        indexed: Mapping[str, IndexEntry | ConflictedIndexEntry] | None = None) -> CheckoutResult:
    """Make the working copy hold exactly ``files``, with its index and branch at ``commit``.

    ``indexed`` is :func:`indexed_files` if the caller read it already.
    """
    repo = Repo(str(path))
    try:
        _link_objects(Path(repo.controldir()), repo_path)
        index_path = repo.index_path()
        old = indexed_files(path) if indexed is None else indexed
        writer = _Writer(path)
        removed = [name for name in old if name not in files]
        for name in removed:
            writer.remove(name)
        writer.prune_folders(removed)
        entries: dict[bytes, IndexEntry] = {}
        written = []
        for name, file in files.items():
            entry = old.get(name)
            if isinstance(entry, IndexEntry) and _unchanged(path / name, entry, file):
                entries[name.encode()] = entry
            else:
                written.append(name)
        for name, entry in writer.write_all([files[name] for name in written], read_blob):
            entries[name.encode()] = entry
        if written or removed or len(entries) != len(old):
            _write_index(index_path, entries)
        ref = cast("Ref", b"refs/heads/" + branch.encode())
        repo.refs.set_symbolic_ref(cast("Ref", b"HEAD"), ref)
        repo.refs[ref] = cast("ObjectID", commit.encode())
    finally:
        repo.close()
    return CheckoutResult(written, removed)


def _link_objects(controldir: Path, repo_path: Path) -> None:
    """Let the working copy read scripts.git's objects (relative path: the site may move)."""
    info = controldir / "objects" / "info"
    alternates = info / "alternates"
    target = os.path.relpath(repo_path.resolve() / "objects", (controldir / "objects").resolve())
    if alternates.is_file() and alternates.read_text().strip() == target:
        return
    info.mkdir(parents=True, exist_ok=True)
    alternates.write_text(target + "\n")


def _unchanged(full: Path, entry: IndexEntry, file: TreeFile) -> bool:
    if entry.sha.decode() != file.sha or entry.mode != file.mode:
        return False
    try:
        st = os.lstat(full)
    except OSError:
        return False
    if file.mode == SYMLINK_MODE:
        kind_ok = stat.S_ISLNK(st.st_mode)
    else:
        kind_ok = stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o100) == (file.mode == EXECUTABLE_MODE)
    return (kind_ok and st.st_size == entry.size and st.st_ino == entry.ino
            and st.st_mtime_ns == _mtime_ns(entry.mtime))


def _mtime_ns(value: int | float | tuple[int, int]) -> int:
    if isinstance(value, tuple):
        return value[0] * 1_000_000_000 + value[1]
    return int(value * 1_000_000_000)


def _write_index(index_path: str, entries: dict[bytes, IndexEntry]) -> None:
    index = Index(index_path, read=False)
    for name, entry in entries.items():
        index[name] = entry
    index.write()


class _Writer:
    """Writes and removes files under ``root`` without ever following a symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_folders: set[str] = {""}

    def write_all(self, files: list[TreeFile], read_blob: Callable[[str], bytes]) -> Iterator[tuple[str, IndexEntry]]:
        """Write the files; yields (path, index entry) for each.

        Creating a file costs far more on some disks than a Python loop does,
        so files are written by a few threads, batch by batch (blobs are read
        here, in this thread: dulwich's packs are not thread-safe).
        """
        for file in files:
            self._prepare(file.path)
        with ThreadPoolExecutor(WRITER_THREADS) as pool:
            for start in range(0, len(files), WRITE_BATCH_FILES):
                batch = [(number, file, read_blob(file.sha))
                         for number, file in enumerate(files[start:start + WRITE_BATCH_FILES], start)]
                yield from pool.map(self._put, batch) if len(files) > 1 else map(self._put, batch)

    def _prepare(self, name: str) -> None:
        """Make the parent folders real folders and clear a folder standing where the file goes."""
        self._make_folder(name.rpartition("/")[0])
        try:
            if stat.S_ISDIR(os.lstat(self.root / name).st_mode):
                shutil.rmtree(self.root / name)  # rmtree never follows symlinks
        except FileNotFoundError:
            pass

    def _put(self, item: tuple[int, TreeFile, bytes]) -> tuple[str, IndexEntry]:
        # Write beside the target, then rename over it: a rename replaces a
        # symlink in the way instead of following it, and readers never see
        # half a file.
        number, file, data = item
        target = self.root / file.path
        temp = target.parent / f".sooner-{os.getpid()}-{number}.tmp"
        if file.mode == SYMLINK_MODE:
            _unlink_quietly(temp)
            os.symlink(data.decode("utf-8"), temp)
        else:
            _unlink_quietly(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, 0o755 if file.mode == EXECUTABLE_MODE else 0o644)
            finally:
                os.close(fd)
        os.replace(temp, target)
        return file.path, index_entry_from_stat(os.lstat(target), file.sha.encode(), file.mode)

    def remove(self, name: str) -> None:
        folder = name.rpartition("/")[0]
        if not self._is_real_folder(folder):
            return  # a symlink or file replaced the folder: what it held is not ours
        target = self.root / name
        try:
            if not stat.S_ISDIR(os.lstat(target).st_mode):
                target.unlink()
        except FileNotFoundError:
            pass

    def prune_folders(self, removed: list[str]) -> None:
        """Remove folders left empty by removed files, deepest first."""
        folders = {name.rsplit("/", i)[0] for name in removed for i in range(1, name.count("/") + 1)}
        for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
            try:
                os.rmdir(self.root / folder)  # fails on a symlink or a non-empty folder: fine
            except OSError:
                pass
            self._real_folders.discard(folder)

    def _is_real_folder(self, folder: str) -> bool:
        if folder in self._real_folders:
            return True
        parent = folder.rpartition("/")[0]
        if not self._is_real_folder(parent):
            return False
        try:
            real = stat.S_ISDIR(os.lstat(self.root / folder).st_mode)
        except FileNotFoundError:
            return False
        if real:
            self._real_folders.add(folder)
        return real

    def _make_folder(self, folder: str) -> None:
        if folder in self._real_folders:
            return
        parent = folder.rpartition("/")[0]
        self._make_folder(parent)
        full = self.root / folder
        try:
            mode = os.lstat(full).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISDIR(mode):
            full.unlink()  # a file or symlink where the tree has a folder
            mode = None
        if mode is None:
            os.mkdir(full)
        self._real_folders.add(folder)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
