"""Helpers for tests and benchmarks: deploy a set of files straight into the store, without git.

:func:`deploy_files` stores blobs and trees exactly as :mod:`sooner.deploy.push`
does (git object ids, entries ``{name, mode, sha}``), records a deploy and
reconciles ``jobs``, so workers see the same thing a real ``git push`` gives.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import TYPE_CHECKING, Any, Mapping, Union

from dulwich.objects import Blob, ObjectID, Tree

if TYPE_CHECKING:
    from sooner.store import Store

EXECUTABLE = 0o100755
REGULAR = 0o100644
SYMLINK = 0o120000
TREE = 0o040000

FileSpec = Union[str, bytes, tuple[Union[str, bytes], int]]
_commits = itertools.count()


def deploy_files(store: Store, files: Mapping[str, FileSpec], *, enable: bool = True,
                 hooks: Mapping[str, list[str]] | None = None,
                 settings: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Deploy ``files`` ({path: content or (content, mode)}) as a new commit; returns the deploy document.

    Content starting with ``#!`` defaults to an executable (a job), anything
    else to a regular file; give mode ``SYMLINK`` with the target as content
    for a symlink. ``enable`` enables every job; ``hooks`` and ``settings``
    ({job: {timeout_s: …}}) change jobs after the deploy.
    """
    from sooner.deploy.push import plan_job_changes
    from sooner.deploy.tree import is_job_file

    blobs: dict[str, bytes] = {}
    root: dict[str, Any] = {}
    scripts: dict[str, str] = {}
    for path, spec in files.items():
        content, mode = _spec(spec)
        blob = Blob.from_string(content)
        blobs[blob.id.decode()] = content
        folder = root
        *parents, name = path.split("/")
        for part in parents:
            folder = folder.setdefault(part, {})
        folder[name] = (mode, blob.id.decode())
        if is_job_file(path, mode):
            scripts[path] = blob.id.decode()
    trees: dict[str, list[dict]] = {}
    tree_sha = _store_tree(root, trees)
    store.objects.put_blobs(blobs.items())
    store.objects.put_trees(trees.items())
    commit = hashlib.sha1(f"{tree_sha}:{next(_commits)}:{id(store)}".encode()).hexdigest()
    changes = plan_job_changes(scripts, store.jobs.deployed_state())
    store.jobs.record_deploy_changes(commit=commit, created=changes.created, updated=changes.updated,
                                     restored=changes.restored, removed=changes.removed)
    deploy = store.deploys.record(commit=commit, tree=tree_sha, branch="main", author="tests", message="deploy_files",
                                  created=sorted(changes.created), updated=sorted(changes.updated),
                                  removed=list(changes.removed), restored=sorted(changes.restored))
    for name in scripts:
        if enable:
            store.jobs.set_enabled(name, True)
        extra = dict((settings or {}).get(name, {}))
        add = list((hooks or {}).get(name, []))
        if extra or add:
            store.jobs.update_settings(name, extra, add_hooks=add)
    return deploy


def _spec(spec: FileSpec) -> tuple[bytes, int]:
    if isinstance(spec, tuple):
        content, mode = spec
    else:
        content = spec
        mode = EXECUTABLE if (content.startswith("#!") if isinstance(content, str) else content.startswith(b"#!")) \
            else REGULAR
    return (content.encode() if isinstance(content, str) else content), mode


def _store_tree(folder: dict[str, Any], trees: dict[str, list[dict]]) -> str:
    tree = Tree()
    entries = []
    for name, item in sorted(folder.items()):
        if isinstance(item, dict):
            mode, sha = TREE, _store_tree(item, trees)
        else:
            mode, sha = item
        tree.add(name.encode(), mode, ObjectID(sha.encode()))
        entries.append({"name": name, "mode": mode, "sha": sha})
    trees[tree.id.decode()] = entries
    return tree.id.decode()
