"""``sooner init --examples``: commit the example jobs into a new site and deploy them.

The examples are committed to the site's branch as one commit (by "Sooner"),
deployed like any push (so they arrive disabled), and the chained pairs get
their hooks set, so enabling them is all that is left to try them.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from sooner.config import Settings
from sooner.resources import resource_dir

if TYPE_CHECKING:
    from dulwich.refs import Ref

# job -> events it is hooked to
EXAMPLE_HOOKS = {
    "examples/chain/report.py": ["extract-done"],
    "examples/queues/drain.py": ["pages-queued"],
}


def commit_examples(settings: Settings) -> list[str]:
    """Commit examples/ on the site's branch, deploy, set hooks; returns lines to show."""
    from sooner.deploy.push import deploy
    from sooner.store import open_store

    commit = _commit_tree(settings, resource_dir("examples"))
    stores = []

    def connect():
        stores.append(open_store(settings))
        return stores[-1]

    try:
        report = deploy(settings, connect)
        store = stores[0] if stores else connect()
        for job, events in EXAMPLE_HOOKS.items():
            store.jobs.update_settings(job, {}, add_hooks=events)
    finally:
        for store in stores:
            store.close()
    lines = [f"committed the examples as {commit[:8]}"] + [line.removeprefix("sooner: ") for line in report.lines()]
    lines += [f"{job} runs on: {', '.join(events)}" for job, events in EXAMPLE_HOOKS.items()]
    return lines


def _commit_tree(settings: Settings, source: Path) -> str:
    repo = Repo(str(settings.repo_path))
    try:
        root = _add_folder(repo, source)
        ref = cast("Ref", b"refs/heads/" + settings.branch.encode())
        parent = repo.refs[ref] if ref in repo.refs else None
        top = Tree()
        top.add(b"examples", stat.S_IFDIR, root.id)
        repo.object_store.add_object(top)
        commit = Commit()
        commit.tree = top.id
        commit.parents = [parent] if parent else []
        commit.author = commit.committer = b"Sooner <sooner@localhost>"
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"Add Sooner's example jobs\n"
        repo.object_store.add_object(commit)
        repo.refs[ref] = commit.id
        return commit.id.decode()
    finally:
        repo.close()


def _add_folder(repo: Repo, folder: Path) -> Tree:
    tree = Tree()
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", "__")):
            continue
        if path.is_dir():
            sub = _add_folder(repo, path)
            tree.add(path.name.encode(), stat.S_IFDIR, sub.id)
            continue
        data = path.read_bytes()
        blob = Blob.from_string(data)
        repo.object_store.add_object(blob)
        # Wheels do not always keep the executable bit: scripts are the files with a shebang.
        mode = 0o100755 if data.startswith(b"#!") else 0o100644
        tree.add(path.name.encode(), mode, blob.id)
    repo.object_store.add_object(tree)
    return tree
