"""Read a commit's tree with dulwich and check that it is safe to deploy.

Everything is checked before anything is applied: :func:`read_tree` walks the
whole tree, collects every problem and raises one :class:`DeployError` naming
each path and what is wrong with it. Refused:

- names that git itself would never write (``.``, ``..``, ``/`` inside a
  name, ``.git`` in any case and every name that NTFS or HFS+ take for it,
  such as ``.git.``, ``.git `` or ``git~1``: :func:`is_dotgit`), empty names,
  duplicates, names that are not UTF-8 or contain control characters, names
  or paths too long to create;
- files bigger than ``max_file_bytes``;
- symlinks that are absolute or whose target, resolved from the link's folder
  (following the other symlinks of the tree), leaves the repository or
  reaches into ``.git``; symlink loops;
- submodules (gitlinks): their content is not in this repository, so a job
  using them could not run the same way on a worker. Refusing says so at push
  time instead of deploying something incomplete;
- any other mode, or an entry whose object is missing or of the wrong kind.

Executable regular files (mode 100755) are jobs, and so is every regular file
named ``*.http.json`` (an HTTP job, :mod:`sooner.model.http_job`), whose
document is checked here too: a push is refused with each problem's JSON
path. Other regular files and
symlinks are supporting files: a symlink is never a job, even when it points
to an executable script (that script is a job under its own name). A regular
file that starts with a shebang is most likely a forgotten ``chmod +x``:
:func:`scripts_not_executable` finds those, for a note to the pusher.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Mapping, Protocol, cast

from dulwich.errors import ObjectFormatException
from dulwich.objects import parse_tree

from sooner.errors import DeployError
from sooner.model.http_job import InvalidHttpJob, JobKind, parse_http_job

if TYPE_CHECKING:
    from dulwich.objects import ObjectID

TREE_MODE = 0o040000
EXECUTABLE_MODE = 0o100755
REGULAR_MODE = 0o100644
SYMLINK_MODE = 0o120000
GITLINK_MODE = 0o160000
# Old git versions wrote group-writable files; git reads them as 100644.
_LEGACY_REGULAR_MODES = (0o100664,)

MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS
MAX_PATH_BYTES = 4000  # under PATH_MAX once the working copy's own path is added
MAX_SYMLINK_HOPS = 40  # what Linux allows before ELOOP
MAX_PROBLEMS_SHOWN = 10

# NTFS drops trailing dots and spaces, knows .git by its short name git~1, and
# opens an alternate data stream after ':' (".git::$INDEX_ALLOCATION" is the
# folder itself); git checks only the first backslash-separated segment.
_NTFS_DOTGIT = re.compile(r"(?:\.git|git~1)[. ]*(?:[\\/:]|\Z)", re.IGNORECASE | re.ASCII)
# Code points HFS+ ignores when it compares names (git's utf8.c next_hfs_char).
_HFS_IGNORED = dict.fromkeys([*range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF])

_BLOB, _TREE = 3, 2
_SHA_BYTES = 20


class ObjectSource(Protocol):
    """What the reader needs from a dulwich object store."""

    def get_raw(self, name: ObjectID) -> tuple[int, bytes]: ...


class ObjectSizes(Protocol):
    """Type number and size of objects from their headers, without their content (shas not found are left out)."""

    def __call__(self, shas: Collection[bytes]) -> Mapping[bytes, tuple[int, int]]: ...


@dataclass(frozen=True)
class TreeFile:
    """One file of the tree: a regular file or a symlink (``path`` uses ``/``)."""

    path: str
    mode: int  # EXECUTABLE_MODE, REGULAR_MODE or SYMLINK_MODE
    sha: str
    size: int

    @property
    def is_job(self) -> bool:
        return is_job_file(self.path, self.mode)

    @property
    def is_symlink(self) -> bool:
        return self.mode == SYMLINK_MODE


@dataclass
class DeployTree:
    """A validated tree: its files, and its tree objects as stored for workers."""

    sha: str
    files: dict[str, TreeFile] = field(default_factory=dict)
    # tree sha -> entries {name, mode, sha}, exactly as in git (modes not normalised)
    trees: dict[str, list[dict]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    @property
    def jobs(self) -> dict[str, str]:
        """Job name (the script's path) -> blob sha, for every executable file."""
        return {path: f.sha for path, f in self.files.items() if f.is_job}


def is_job_file(path: str, mode: int) -> bool:
    """An executable file, or a regular file named ``*.http.json`` (an HTTP job); never a symlink."""
    return mode == EXECUTABLE_MODE or (mode == REGULAR_MODE and JobKind.of(path) is JobKind.HTTP)


def scripts_not_executable(files: Iterable[TreeFile], read_blob: Callable[[str], bytes]) -> list[str]:
    """Paths of the regular, non-executable files among ``files`` that start with a shebang (``#!``).

    Such a file was most likely meant as a job, but only an executable file is
    one; the pusher is told so.
    """
    return [file.path for file in files
            if file.mode == REGULAR_MODE and file.size >= 2 and read_blob(file.sha)[:2] == b"#!"]


def read_tree(objects: ObjectSource, tree_sha: str, *, max_file_bytes: int, label: str = "",
              known_sizes: Mapping[str, int] | None = None, sizes: ObjectSizes | None = None) -> DeployTree:
    """Walk and check the whole tree; raise one DeployError listing every problem.

    ``label`` (e.g. the short commit sha) is put in the message.
    ``known_sizes`` maps blob shas to sizes already known (the working copy's
    index records them), so unchanged files are not read again. ``sizes``
    reads the other files' sizes from their object headers, so a file over
    the limit is refused without its content ever being read (without it,
    each blob is read whole to learn its size).
    """
    reader = _TreeReader(objects, max_file_bytes, sizes)
    reader.sizes.update((sha.encode(), size) for sha, size in (known_sizes or {}).items())
    tree = reader.read(tree_sha)
    reader.problems.extend(check_symlinks(tree.symlinks))
    if reader.problems:
        raise DeployError(describe_problems(reader.problems, label))
    return tree


def describe_problems(problems: list[str], label: str = "") -> str:
    """One message for a refused tree."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    what = f"cannot deploy {label}" if label else "cannot deploy"
    text = "; ".join(shown) + (f"; and {more} more problem(s)" if more > 0 else "")
    return f"{what}, nothing was changed: {text}"


def check_name(name: bytes, parent: str) -> tuple[str | None, str | None]:
    """Check one tree entry name; returns (decoded name, None) or (None, problem)."""
    shown = _show(parent, name)
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"path {shown} is not valid UTF-8"
    if text in ("", ".", ".."):
        return None, f"path {shown} has a {text or 'empty'!r} component, which could escape the repository"
    if "/" in text:
        return None, f"path {shown} contains '/' inside one tree entry name, which could escape its folder"
    if text.lower() == ".git":
        return None, f"path {shown} is a '.git' entry, which git reserves"
    if is_dotgit(text):
        return None, f"path {shown} is a name that Windows or macOS take for '.git', which git reserves"
    control = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return None, f"path {shown} contains a control character (U+{ord(control):04X})"
    if len(name) > MAX_NAME_BYTES:
        return None, f"path {shown} has a name longer than {MAX_NAME_BYTES} bytes"
    return text, None


def is_dotgit(name: str) -> bool:
    """True if ``name`` is ``.git`` on some filesystem git supports: what git fsck calls ``hasDotgit``.

    That is ``.git`` in any case, and also what NTFS takes for it (trailing dots
    and spaces, the short name ``git~1``, a ``:stream`` suffix, a backslash
    after it) and what HFS+ takes for it (with invisible code points such as
    U+200C inside). Either could reach the working copy's ``.git`` when the
    tree is checked out there, so git refuses them everywhere.
    """
    folded = name.translate(_HFS_IGNORED)
    return (folded.isascii() and folded.lower() == ".git") or _NTFS_DOTGIT.match(name) is not None


def check_symlinks(symlinks: dict[str, str]) -> list[str]:
    """Problems with symlinks whose target is absolute, leaves the repository or enters .git.

    Targets are resolved from the link's folder, following the tree's other
    symlinks, as the kernel would in the working copy.
    """
    problems = []
    for path, target in symlinks.items():
        if target.startswith("/"):
            problems.append(f"symlink {path!r} points to an absolute path ({target!r})")
            continue
        problem = _resolve_symlink(path, target, symlinks)
        if problem:
            problems.append(f"symlink {path!r} -> {target!r} {problem}")
    return problems


def _resolve_symlink(path: str, target: str, symlinks: dict[str, str]) -> str | None:
    parts = path.split("/")[:-1]
    pending = target.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return "points outside the repository"
            parts.pop()
            continue
        if is_dotgit(part):
            return "points into .git"
        parts.append(part)
        link = symlinks.get("/".join(parts))
        if link is not None:
            hops += 1
            if hops > MAX_SYMLINK_HOPS or link.startswith("/"):
                return "is a symlink loop" if hops > MAX_SYMLINK_HOPS else "goes through an absolute symlink"
            parts.pop()  # a link's target is relative to the link's folder
            pending = link.split("/") + pending
    return None


class _TreeReader:
    """Iterative walk (hostile trees can be deep) collecting files, trees and problems."""

    def __init__(self, objects: ObjectSource, max_file_bytes: int, sizes: ObjectSizes | None = None) -> None:
        self.objects = objects
        self.max_file_bytes = max_file_bytes
        self.problems: list[str] = []
        self.sizes: dict[bytes, int] = {}  # blob sha -> size, known beforehand
        self._size_source = sizes
        self._headers: Mapping[bytes, tuple[int, int]] = {}  # sha -> (type number, size) from the object headers
        self._files: list[tuple[str, int, bytes]] = []  # (path, mode, sha) of the files and symlinks found
        self._parsed: dict[bytes, list[tuple[bytes, int, bytes]] | None] = {}

    def read(self, root_sha: str) -> DeployTree:
        result = DeployTree(sha=root_sha)
        stack: list[tuple[bytes, str]] = [(root_sha.encode(), "")]
        while stack:
            sha, prefix = stack.pop()
            entries = self._parse(sha, prefix)
            if entries is None:
                continue
            stored: list[dict] = []
            seen: set[bytes] = set()
            for name, mode, entry_sha in entries:
                stored.append({"name": name.decode("utf-8", "replace"), "mode": mode, "sha": entry_sha.decode()})
                if name in seen:
                    self.problems.append(f"path {_show(prefix, name)} appears twice in its folder")
                    continue
                seen.add(name)
                text, problem = check_name(name, prefix)
                if problem:
                    self.problems.append(problem)
                    continue
                assert text is not None, "check_name returns the decoded name when it reports no problem"
                path = prefix + text
                if len(path.encode()) > MAX_PATH_BYTES:
                    self.problems.append(f"path {path[:80]!r}… is longer than {MAX_PATH_BYTES} bytes")
                elif mode == TREE_MODE:
                    stack.append((entry_sha, path + "/"))
                else:
                    self._note_file(path, mode, entry_sha)
            result.trees[sha.decode()] = stored
        self._add_files(result)
        return result

    def _add_files(self, result: DeployTree) -> None:
        """Check the files found, sizes first: all their headers are read in one go, before any content."""
        unknown = {sha for _path, _mode, sha in self._files if sha not in self.sizes}
        if self._size_source is not None and unknown:
            self._headers = self._size_source(unknown)
        for path, mode, sha in self._files:
            self._add_file(result, path, mode, sha)
        result.files = dict(sorted(result.files.items()))

    def _parse(self, sha: bytes, prefix: str) -> list[tuple[bytes, int, bytes]] | None:
        if sha in self._parsed:
            return self._parsed[sha]
        entries = None
        where = repr(prefix.rstrip("/")) if prefix else "the root folder"
        kind, raw = self._get(sha, where)
        if kind == _TREE:
            try:
                entries = list(parse_tree(raw, _SHA_BYTES))
            except (ValueError, ObjectFormatException) as exc:
                self.problems.append(f"tree of {where} is malformed ({exc})")
        elif kind is not None:
            self.problems.append(f"{where} is not a tree object")
        self._parsed[sha] = entries
        return entries

    def _note_file(self, path: str, mode: int, sha: bytes) -> None:
        """Check an entry's mode; a file or symlink is kept for when the sizes are known."""
        if mode == GITLINK_MODE:
            self.problems.append(f"path {path!r} is a submodule; submodules are not supported (copy the files in)")
        elif mode in (EXECUTABLE_MODE, REGULAR_MODE, SYMLINK_MODE, *_LEGACY_REGULAR_MODES):
            self._files.append((path, REGULAR_MODE if mode in _LEGACY_REGULAR_MODES else mode, sha))
        else:
            self.problems.append(f"path {path!r} has an unsupported mode {mode:o}")

    def _add_file(self, result: DeployTree, path: str, mode: int, sha: bytes) -> None:
        size: int | None
        if mode == SYMLINK_MODE:
            target = self._symlink_target(path, sha)
            if target is None:
                return
            result.symlinks[path] = target
            size = len(target.encode())
        else:
            size = self._blob_size(path, sha)
            if size is None:
                return
            if size > self.max_file_bytes:
                self.problems.append(f"file {path!r} is {size:,} bytes, over the limit of "
                                     f"{self.max_file_bytes:,} (max_file_bytes)")
                return
        file = TreeFile(path, mode, sha.decode(), size)
        if file.is_job and JobKind.of(path) is JobKind.HTTP:
            self._check_http_job(path, sha)
        result.files[path] = file

    def _check_http_job(self, path: str, sha: bytes) -> None:
        kind, raw = self._get(sha, repr(path))
        if kind is None:
            return
        try:
            parse_http_job(raw)
        except InvalidHttpJob as exc:
            self.problems.extend(f"HTTP job {path!r}: {problem}" for problem in exc.problems)

    def _blob_size(self, path: str, sha: bytes) -> int | None:
        if sha not in self.sizes:
            kind: int | None
            if sha in self._headers:
                kind, size = self._headers[sha]
            else:  # no header source: the content is read to learn its size
                kind, raw = self._get(sha, repr(path))
                size = len(raw)
            if kind is None:
                return None
            if kind != _BLOB:
                self.problems.append(f"path {path!r} is not a file object")
                return None
            self.sizes[sha] = size
        return self.sizes[sha]

    def _symlink_target(self, path: str, sha: bytes) -> str | None:
        header_kind, size = self._headers.get(sha, (_BLOB, 0))
        if header_kind != _BLOB or size > MAX_PATH_BYTES:  # refused before its content is read
            what = "is not a file object" if header_kind != _BLOB else f"has a target longer than {MAX_PATH_BYTES} bytes"
            self.problems.append(f"symlink {path!r} {what}")
            return None
        kind, raw = self._get(sha, repr(path))
        if kind is None:
            return None
        problem = None
        try:
            target = raw.decode("utf-8")
        except UnicodeDecodeError:
            target, problem = "", "has a target that is not valid UTF-8"
        if kind != _BLOB:
            problem = "is not a file object"
        elif not problem and (not target or any(unicodedata.category(c) == "Cc" for c in target)):
            problem = "has an empty target or one with control characters"
        elif not problem and len(raw) > MAX_PATH_BYTES:
            problem = f"has a target longer than {MAX_PATH_BYTES} bytes"
        if problem:
            self.problems.append(f"symlink {path!r} {problem}")
            return None
        return target

    def _get(self, sha: bytes, where: str) -> tuple[int | None, bytes]:
        try:
            return self.objects.get_raw(cast("ObjectID", sha))
        except KeyError:
            self.problems.append(f"object {sha.decode()} of {where} is missing from the repository")
            return None, b""


def _show(parent: str, name: bytes) -> str:
    """A path for messages: undecodable bytes and control characters escaped."""
    text = parent + name.decode("utf-8", "backslashreplace")
    return repr(text)
