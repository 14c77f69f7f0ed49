"""Unit tests of the deploy: tree checks, job reconciliation, working copy, objects for workers.

Commits are made with dulwich straight into a site's bare repository (no git
CLI, no hooks) and deployed with :func:`sooner.deploy.deploy` on mongomock.
End-to-end pushes are in test_push.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
from dulwich.object_store import MemoryObjectStore
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from sooner.config import load_settings
from sooner.deploy.push import (GitObjectSizes, JobChanges, check_push, deploy, parse_push_lines, plan_job_changes,
                                refs_not_deployed, store_objects)
from sooner.deploy.tree import (EXECUTABLE_MODE, GITLINK_MODE, REGULAR_MODE, SYMLINK_MODE, TREE_MODE, check_name,
                                check_symlinks, read_tree)
from sooner.errors import DeployError
from sooner.site import init_site

EXEC, FILE, LINK = EXECUTABLE_MODE, REGULAR_MODE, SYMLINK_MODE
SCRIPT = b"#!/bin/sh\necho hello\n"


# --- helpers: build trees and commits with dulwich --------------------------------------------------------------

def build_tree(objects, files: dict[str, tuple[bytes, int]]) -> str:
    """Store nested trees for {path: (content, mode)}; returns the root tree sha."""
    root: dict = {}
    for path, (content, mode) in files.items():
        *folders, name = path.split("/")
        node = root
        for folder in folders:
            node = node.setdefault(folder, {})
        blob = Blob.from_string(content)
        objects.add_object(blob)
        node[name] = (mode, blob.id)
    return _store_tree(objects, root)


def _store_tree(objects, node: dict) -> str:
    tree = Tree()
    for name, value in node.items():
        if isinstance(value, dict):
            tree.add(name.encode(), TREE_MODE, _store_tree(objects, value).encode())
        else:
            tree.add(name.encode(), value[0], value[1])
    objects.add_object(tree)
    return tree.id.decode()


def raw_tree(objects, entries: list[tuple[bytes, int, bytes]]) -> str:
    """A tree with exactly these (name, mode, sha) entries, even ones git would refuse."""
    tree = Tree()
    tree.set_raw_string(b"".join(b"%o %s\0" % (mode, name) + bytes.fromhex(sha.decode()) for name, mode, sha in entries))
    objects.add_object(tree)
    return tree.id.decode()


def blob(objects, content: bytes) -> bytes:
    item = Blob.from_string(content)
    objects.add_object(item)
    return item.id


def commit_to(site: Path, tree_sha: str, message: str = "change", branch: str = "main") -> str:
    """Commit a tree onto the site's branch (as a push would) and return the commit sha."""
    repo = Repo(str(site / "scripts.git"))
    try:
        ref = b"refs/heads/" + branch.encode()
        commit = Commit()
        commit.tree = tree_sha.encode()
        commit.parents = [repo.refs[ref]] if ref in repo.refs else []
        commit.author = commit.committer = b"Tester <tester@example.com>"
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = message.encode() + b"\n"
        repo.object_store.add_object(commit)
        repo.refs[ref] = commit.id
        return commit.id.decode()
    finally:
        repo.close()


def commit_files(site: Path, files: dict[str, tuple[bytes, int]], message: str = "change") -> str:
    repo = Repo(str(site / "scripts.git"))
    try:
        tree = build_tree(repo.object_store, files)
    finally:
        repo.close()
    return commit_to(site, tree, message)


def add_raw_tree(site: Path, entries_for: Callable[[MemoryObjectStore], str]) -> str:
    repo = Repo(str(site / "scripts.git"))
    try:
        return entries_for(repo.object_store)
    finally:
        repo.close()


@pytest.fixture
def quiet_site(tmp_path: Path):
    """A site whose deploys use mongomock (no embedded server)."""
    init_site(tmp_path / "site")
    return tmp_path / "site"


@pytest.fixture
def deployer(quiet_site: Path, mock_store):
    """Deploy the site's branch on mongomock; records whether the store was asked for."""
    settings = load_settings(quiet_site / "config.json", environ={})
    calls = []

    def run(**overrides):
        used = load_settings(quiet_site / "config.json", environ={}, overrides=overrides) if overrides else settings

        def connect():
            calls.append(1)
            return mock_store
        return deploy(used, connect)
    run.calls = calls
    run.store = mock_store
    run.site = quiet_site
    run.working_copy = quiet_site / "scripts-working-copy"
    return run


# --- names and symlinks --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, problem", [
    (b"..", "could escape"),
    (b".", "could escape"),
    (b"", "could escape"),
    (b"a/b", "contains '/'"),
    (b".git", "'.git' entry"),
    (b".GiT", "'.git' entry"),
    (b"tab\there", "control character (U+0009)"),
    (b"new\nline", "control character (U+000A)"),
    (b"bad\xff.sh", "not valid UTF-8"),
    (b"x" * 256, "longer than 255 bytes"),
])
def test_check_name_refuses_names_that_could_escape_or_confuse(name, problem):
    text, message = check_name(name, "folder/")
    assert text is None
    assert problem in message
    assert message.startswith("path 'folder/")


@pytest.mark.parametrize("name", [b"hello.sh", b"with space.sh", "d\u00e9ploy \u2603.sh".encode(), b".gitignore",
                                  b"..hidden", b"a..b"])
def test_check_name_accepts_spaces_unicode_and_dots(name):
    assert check_name(name, "") == (name.decode(), None)


# What git itself takes for ".git" on some filesystem (its is_ntfs_dotgit / is_hfs_dotgit), and near misses.
DOTGIT_VARIANTS = [".git.", ".GIT.", ".git ", ".git. . ", ".git...", "git~1", "GIT~1", "Git~1 .",
                   ".git::$INDEX_ALLOCATION", ".git:stream", ".git\\hooks", ".g\u200cit", "\ufeff.GIT"]
NOT_DOTGIT = [".gitx", ".git.x", "git~2", "git~1x", "a.git", "git", ".gi", "x.git.", ".gitignore", ".g\u00eft"]


@pytest.mark.parametrize("name", DOTGIT_VARIANTS)
def test_check_name_refuses_what_windows_or_macos_take_for_dot_git(name):
    text, message = check_name(name.encode(), "sub/")
    assert text is None
    assert message == f"path {'sub/' + name!r} is a name that Windows or macOS take for '.git', which git reserves"


@pytest.mark.parametrize("name", NOT_DOTGIT)
def test_check_name_accepts_names_that_only_look_like_dot_git(name):
    assert check_name(name.encode(), "") == (name, None)


def test_the_dot_git_rule_agrees_with_git_fsck(tmp_path):
    # given one tree per name, each holding a folder of that name, in a real repository
    repo = tmp_path / "oracle.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)

    def git(*args: str, input: str = "") -> str:
        return subprocess.run(["git", *args], cwd=repo, input=input.encode(), capture_output=True,
                              check=True).stdout.decode().strip()
    inner = git("mktree", input=f"100644 blob {git('hash-object', '-w', '--stdin', input='x')}\tf\n")
    refused = [".git", ".GIT", *DOTGIT_VARIANTS]
    trees = {name: git("mktree", input=f"040000 tree {inner}\t{name}\n") for name in refused + NOT_DOTGIT}
    # when git fsck checks them all
    report = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=repo, capture_output=True).stderr
    flagged = {name for name, sha in trees.items() if f"{sha}: hasDotgit".encode() in report}
    # then git flags exactly the names that check_name takes for .git
    assert flagged == {name for name in trees if check_name(name.encode(), "")[0] is None}
    assert flagged == set(refused)


def test_symlinks_inside_the_repository_are_fine():
    assert check_symlinks({"link": "lib.sh", "sub/up": "../lib.sh", "sub/self": ".", "a/b/c": "../../x/./y"}) == []


@pytest.mark.parametrize("links, problem", [
    ({"evil": "../../etc/passwd"}, "points outside the repository"),
    ({"evil": "/etc/passwd"}, "absolute path"),
    ({"sub/evil": "../.."}, "points outside the repository"),
    ({"evil": ".git/config"}, "points into .git"),
    ({"sub/evil": "../.GIT/hooks"}, "points into .git"),
    # lexically "x" is inside; through the other link it is the repository's parent
    ({"up": "sub/../..", "evil": "up/x"}, "points outside the repository"),
    ({"l": "sub/..", "evil": "l/../x"}, "points outside the repository"),
    ({"a": "b", "b": "a"}, "loop"),
])
def test_symlinks_that_leave_the_repository_are_refused(links, problem):
    problems = check_symlinks(links)
    assert any(problem in p for p in problems), problems


# --- reading a whole tree ----------------------------------------------------------------------------------------

def test_read_tree_lists_jobs_supporting_files_and_symlinks():
    objects = MemoryObjectStore()
    tree = build_tree(objects, {"hello.sh": (SCRIPT, EXEC), "lib.sh": (b"x=1\n", FILE),
                                "reports/daily/run.sh": (SCRIPT, EXEC), "run-link": (b"hello.sh", LINK)})
    result = read_tree(objects, tree, max_file_bytes=1000)
    assert result.jobs == {"hello.sh": result.files["hello.sh"].sha,
                           "reports/daily/run.sh": result.files["reports/daily/run.sh"].sha}
    # a symlink to an executable script is a supporting file, never a job
    assert result.files["run-link"].is_symlink and not result.files["run-link"].is_job
    assert set(result.trees) == {tree, *(e["sha"] for t in result.trees.values() for e in t if e["mode"] == TREE_MODE)}
    assert {"name": "hello.sh", "mode": EXEC, "sha": result.files["hello.sh"].sha} in result.trees[tree]


def test_read_tree_reports_every_problem_at_once_naming_each_path():
    objects = MemoryObjectStore()
    big = blob(objects, b"x" * 101)
    link = blob(objects, b"../../etc/passwd")
    sub = raw_tree(objects, [(b"..", FILE, blob(objects, b"a"))])
    tree = raw_tree(objects, [(b"big.bin", FILE, big), (b"evil", LINK, link), (b"lib", GITLINK_MODE, big),
                              (b"sub", TREE_MODE, sub.encode())])
    with pytest.raises(DeployError) as caught:
        read_tree(objects, tree, max_file_bytes=100, label="abc1234")
    message = str(caught.value)
    assert message.startswith("cannot deploy abc1234, nothing was changed:")
    assert "file 'big.bin' is 101 bytes, over the limit of 100 (max_file_bytes)" in message
    assert "symlink 'evil' -> '../../etc/passwd' points outside the repository" in message
    assert "path 'lib' is a submodule" in message
    assert "path 'sub/..' has a '..' component" in message


def test_read_tree_refuses_a_git_folder_and_names_with_slashes():
    objects = MemoryObjectStore()
    hooks = raw_tree(objects, [(b"post-checkout", EXEC, blob(objects, SCRIPT))])
    tree = raw_tree(objects, [(b".git", TREE_MODE, hooks.encode()), (b"a/../../x", EXEC, blob(objects, SCRIPT))])
    with pytest.raises(DeployError, match=r"path '\.git' is a '\.git' entry.*contains '/'"):
        read_tree(objects, tree, max_file_bytes=100)


def test_read_tree_refuses_a_missing_object_and_duplicate_names():
    objects = MemoryObjectStore()
    script = blob(objects, SCRIPT)
    tree = raw_tree(objects, [(b"a.sh", EXEC, script), (b"a.sh", EXEC, script), (b"gone.sh", EXEC, b"1" * 40)])
    with pytest.raises(DeployError, match=r"'a.sh' appears twice.*object 1{40} of 'gone.sh' is missing"):
        read_tree(objects, tree, max_file_bytes=100)


# --- reconciling jobs -----------------------------------------------------------------------------------------------

def test_plan_job_changes_creates_updates_restores_and_removes():
    jobs = {"same.sh": {"blob": "a"}, "changed.sh": {"blob": "a"}, "gone.sh": {"blob": "a"},
            "back.sh": {"blob": "a", "deleted": True}, "still-gone.sh": {"blob": "a", "deleted": True}}
    scripts = {"same.sh": "a", "changed.sh": "b", "back.sh": "a", "new.sh": "c"}
    changes = plan_job_changes(scripts, jobs)
    assert changes == JobChanges(created={"new.sh": "c"}, updated={"changed.sh": "b"}, restored={"back.sh": "a"},
                                 removed=["gone.sh"])
    assert plan_job_changes({"same.sh": "a"}, {"same.sh": {"blob": "a"}}).empty


def test_bulk_job_changes_set_the_same_fields_as_one_by_one(any_store):
    jobs = any_store.jobs
    for name in ("updated.sh", "removed.sh", "restored.sh"):
        jobs.record_deployed(name, commit="c0", blob="b0")
    jobs.mark_deleted("restored.sh", commit="c0")
    jobs.record_deploy_changes(commit="c1", created={"new.sh": "b1"}, updated={"updated.sh": "b1"},
                               restored={"restored.sh": "b1"}, removed=["removed.sh"])
    jobs.record_deployed("one-by-one.sh", commit="c1", blob="b1")
    # the stored documents have the same fields, and the jobs the same values (times aside)
    times = {"created_at", "updated_at"}
    stored = {name: jobs.collection.find_one({"_id": name}) for name in ("new.sh", "one-by-one.sh")}
    assert set(stored["new.sh"]) - times == set(stored["one-by-one.sh"]) - times
    new, single = jobs.get("new.sh"), jobs.get("one-by-one.sh")
    assert replace(new, name="-", created_at=None, updated_at=None) == replace(single, name="-", created_at=None,
                                                                               updated_at=None)
    assert new.enabled is False and new.deleted is False and new.blob == "b1" and new.commit == "c1"
    assert jobs.get("updated.sh").blob == "b1"
    assert jobs.get("restored.sh").deleted is False and jobs.get("restored.sh").enabled is False
    assert jobs.get("removed.sh").deleted is True and jobs.get("removed.sh").commit == "c1"
    # creating a job that exists already leaves it alone
    jobs.set_enabled("new.sh", True)
    jobs.record_deploy_changes(commit="c2", created={"new.sh": "b2"})
    assert jobs.get("new.sh").enabled is True and jobs.get("new.sh").blob == "b1"


def test_refs_not_deployed_names_other_branches_and_tags_and_how_to_deploy_a_branch():
    assert refs_not_deployed(["refs/heads/main", "refs/heads/dev", "refs/tags/v1", "refs/heads/gone"], "main",
                             deleted=["refs/heads/gone"]) == [
        "sooner: branch 'dev' is not deployed (this site deploys 'main'); to deploy it: git push origin dev:main",
        "sooner: ref 'refs/tags/v1' is not deployed (this site deploys 'main')",
        "sooner: branch 'gone' is not deployed (this site deploys 'main')"]


def test_parse_push_lines_reads_old_new_ref():
    assert parse_push_lines([f"{'0' * 40} {'a' * 40} refs/heads/main\n", "\n"]) == [("0" * 40, "a" * 40, "refs/heads/main")]


# --- deploying -------------------------------------------------------------------------------------------------------

def test_deploy_creates_disabled_jobs_and_checks_out_the_tree(deployer):
    commit = commit_files(deployer.site, {"hello.sh": (SCRIPT, EXEC), "lib.sh": (b"x=1\n", FILE),
                                          "reports/daily.sh": (SCRIPT, EXEC), "link": (b"lib.sh", LINK)})
    report = deployer()
    assert report.lines()[:2] == ["sooner: created job hello.sh (disabled)",
                                  "sooner: created job reports/daily.sh (disabled)"]
    assert report.lines()[-1].startswith(f"sooner: deployed {commit[:7]} (2 created, 0 updated, 0 removed;")
    jobs = {job.name: job for job in deployer.store.jobs.list()}
    assert set(jobs) == {"hello.sh", "reports/daily.sh"}
    assert not jobs["hello.sh"].enabled and jobs["hello.sh"].commit == commit
    wc = deployer.working_copy
    assert (wc / "hello.sh").read_bytes() == SCRIPT and os.access(wc / "hello.sh", os.X_OK)
    assert not os.access(wc / "lib.sh", os.X_OK)
    assert os.readlink(wc / "link") == "lib.sh"
    latest = deployer.store.deploys.latest()
    assert latest["commit"] == commit and latest["created"] == ["hello.sh", "reports/daily.sh"]
    assert latest["author"] == "Tester <tester@example.com>" and latest["message"] == "change"


def test_deploy_updates_removes_and_restores(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC), "b.sh": (SCRIPT, EXEC), "c.sh": (SCRIPT, EXEC)})
    deployer()
    commit_files(deployer.site, {"a.sh": (SCRIPT + b"# v2\n", EXEC), "b.sh": (SCRIPT, FILE)})
    report = deployer()
    assert report.changes == JobChanges(updated={"a.sh": report.changes.updated["a.sh"]}, removed=["b.sh", "c.sh"])
    assert "sooner: removed job b.sh (history kept)" in report.lines()
    assert not (deployer.working_copy / "c.sh").exists()
    commit = commit_files(deployer.site, {"a.sh": (SCRIPT + b"# v2\n", EXEC), "b.sh": (SCRIPT, EXEC)})
    report = deployer()
    assert report.lines()[0] == "sooner: restored job b.sh (disabled)"
    assert [job.name for job in deployer.store.jobs.list()] == ["a.sh", "b.sh"]
    assert deployer.store.jobs.get("c.sh").deleted is True
    assert deployer.store.deploys.latest()["restored"] == ["b.sh"] and deployer.store.deploys.latest()["commit"] == commit


def test_deploying_the_same_commit_twice_changes_nothing(deployer):
    commit = commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    report = deployer()
    assert report.lines() == [f"sooner: already deployed {commit[:7]}, nothing changed"]
    assert len(deployer.store.deploys.list()) == 1


def test_a_commit_changing_only_supporting_files_is_recorded(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    commit = commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC), "lib/helpers.sh": (b"x\n", FILE)})
    report = deployer()
    assert report.recorded and report.changes.empty and report.written == ["lib/helpers.sh"]
    assert deployer.store.deploys.latest()["commit"] == commit


def test_a_refused_commit_changes_nothing_and_never_connects(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    calls = len(deployer.calls)
    before = sorted(p.name for p in deployer.working_copy.iterdir())
    hostile = add_raw_tree(deployer.site, lambda objects: raw_tree(objects, [
        (b"a.sh", EXEC, blob(objects, b"changed")), (b"..", EXEC, blob(objects, SCRIPT))]))
    commit_to(deployer.site, hostile)
    with pytest.raises(DeployError, match=r"path '\.\.' has a '\.\.' component"):
        deployer()
    assert len(deployer.calls) == calls
    assert sorted(p.name for p in deployer.working_copy.iterdir()) == before
    assert (deployer.working_copy / "a.sh").read_bytes() == SCRIPT


def test_max_file_bytes_is_checked_on_every_deploy(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    with pytest.raises(DeployError, match=r"'a.sh' is 21 bytes, over the limit of 10"):
        deployer(max_file_bytes=10)


class ReadRecorder:
    """A real object store that remembers which objects had their content read."""

    def __init__(self, objects) -> None:
        self.objects = objects
        self.read: list[bytes] = []

    def get_raw(self, sha):
        self.read.append(bytes(sha))
        return self.objects.get_raw(sha)


@pytest.mark.parametrize("packed", [False, True], ids=["loose", "packed with deltas"])
def test_an_oversized_file_is_refused_by_its_size_without_reading_its_content(quiet_site, packed):
    # given a commit with a 3 MB file and a variant of it (repacked, one is stored as a delta of the other)
    big, long_target = os.urandom(3_000_000), b"a/" * 500_000
    commit_files(quiet_site, {"a.sh": (SCRIPT, EXEC), "big.bin": (big, FILE)})
    commit_files(quiet_site, {"a.sh": (SCRIPT, EXEC), "big.bin": (big, FILE), "big2.bin": (big + b"!", FILE),
                              "link": (long_target, LINK)})
    bare = quiet_site / "scripts.git"
    if packed:
        subprocess.run(["git", "repack", "-adq"], cwd=bare, check=True)
    repo = Repo(str(bare))
    try:
        objects = ReadRecorder(repo.object_store)
        tree = repo[repo.refs[b"refs/heads/main"]].tree.decode()
        # when the tree is checked against a 1 MB limit
        with pytest.raises(DeployError) as caught:
            read_tree(objects, tree, max_file_bytes=1_000_000, sizes=GitObjectSizes(bare))
    finally:
        repo.close()
    # then both files (and a symlink with a 1 MB target) are refused by their full sizes, none of them read
    assert "file 'big.bin' is 3,000,000 bytes, over the limit of 1,000,000" in str(caught.value)
    assert "file 'big2.bin' is 3,000,001 bytes" in str(caught.value)
    assert "symlink 'link' has a target longer than 4000 bytes" in str(caught.value)
    big_shas = {Blob.from_string(content).id for content in (big, big + b"!", long_target)}
    assert big_shas.isdisjoint(objects.read) and objects.read  # trees and a.sh were read


def test_object_sizes_come_from_git_including_the_quarantine_and_skip_what_is_missing(quiet_site, tmp_path):
    commit_files(quiet_site, {"a.sh": (SCRIPT, EXEC)})
    script = Blob.from_string(SCRIPT).id
    sizes = GitObjectSizes(quiet_site / "scripts.git")
    assert sizes([script, b"1" * 40]) == {script: (3, len(SCRIPT))}
    # an object only in a quarantine (where pre-receive sees a push's objects) is found through it
    quarantine = tmp_path / "incoming"
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "other.git")], check=True)
    other = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=tmp_path / "other.git", input=b"new\n",
                           capture_output=True, check=True).stdout.strip()
    shutil.copytree(tmp_path / "other.git" / "objects", quarantine)
    assert GitObjectSizes(quiet_site / "scripts.git")([other]) == {}
    assert GitObjectSizes(quiet_site / "scripts.git", str(quarantine))([other, script]) == {
        other: (3, 4), script: (3, len(SCRIPT))}


def test_a_deploy_by_hand_refuses_an_oversized_file_by_its_size(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC), "big.bin": (b"x" * 2_000_000, FILE)})
    with pytest.raises(DeployError, match=r"'big.bin' is 2,000,000 bytes, over the limit of 1,000,000"):
        deployer(max_file_bytes=1_000_000)
    assert len(deployer.calls) == 0


def test_missing_branch_is_a_clear_error(deployer):
    with pytest.raises(DeployError, match="branch 'main' does not exist"):
        deployer()


def test_working_copy_is_rebuilt_when_files_and_folders_swap(deployer):
    commit_files(deployer.site, {"x/inner.sh": (SCRIPT, EXEC), "y": (b"file", FILE), "z": (b"x", LINK)})
    deployer()
    commit_files(deployer.site, {"x": (SCRIPT, EXEC), "y/inner.sh": (SCRIPT, EXEC), "z/f": (b"data", FILE)})
    report = deployer()
    wc = deployer.working_copy
    assert (wc / "x").is_file() and (wc / "y" / "inner.sh").is_file() and not (wc / "z").is_symlink()
    assert sorted(report.changes.created) == ["x", "y/inner.sh"] and report.changes.removed == ["x/inner.sh"]


def test_writing_never_follows_a_symlink_in_the_working_copy(deployer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (deployer.working_copy / "reports").symlink_to(outside)  # planted by someone, and ignored by git there
    (deployer.working_copy / ".git" / "info").mkdir(exist_ok=True)
    (deployer.working_copy / ".git" / "info" / "exclude").write_text("reports\n")
    commit_files(deployer.site, {"reports/daily.sh": (SCRIPT, EXEC)})
    deployer()
    assert list(outside.iterdir()) == []
    reports = deployer.working_copy / "reports"
    assert not reports.is_symlink() and (reports / "daily.sh").read_bytes() == SCRIPT


def test_a_file_edited_in_the_working_copy_is_never_put_back(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    (deployer.working_copy / "a.sh").write_bytes(b"edited, and longer than before\n")
    with pytest.raises(DeployError, match=r"uncommitted changes in 1 file\(s\) \(a.sh\).*--working-copy"):
        deployer()
    assert (deployer.working_copy / "a.sh").read_bytes() == b"edited, and longer than before\n"


def test_a_file_only_touched_in_the_working_copy_is_no_change(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    os.utime(deployer.working_copy / "a.sh", (1, 1))
    assert deployer().lines() == [f"sooner: already deployed {deployer.store.deploys.latest()['commit'][:7]}, "
                                  f"nothing changed"]


def test_a_deploy_from_the_hook_deploys_the_jobs_and_leaves_an_edited_working_copy_alone(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    (deployer.working_copy / "a.sh").write_bytes(b"edited\n")
    commit = commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC), "b.sh": (SCRIPT, EXEC)})
    report = deploy(load_settings(deployer.site / "config.json", environ={}), lambda: deployer.store,
                    keep_local_changes=True)
    assert report.changes.created == {"b.sh": report.changes.created["b.sh"]}
    assert (deployer.working_copy / "a.sh").read_bytes() == b"edited\n"
    assert not (deployer.working_copy / "b.sh").exists()
    assert report.lines()[-2] == (f"sooner: note: the server's working copy has uncommitted changes in 1 file(s) "
                                  f"(a.sh); it was left as it is, so it does not show {commit[:7]} "
                                  f"(`sooner deploy --working-copy` there deploys that work)")
    assert report.lines()[-1].endswith("; working copy left as it is) in %.2fs" % report.elapsed_s)


def test_files_with_a_shebang_but_no_executable_bit_get_a_note_when_they_change(deployer):
    commit_files(deployer.site, {"tools/x.sh": (SCRIPT, FILE), "data.txt": (b"#!not really, but starts so", FILE),
                                 "lib.sh": (b"x=1\n", FILE), "job.sh": (SCRIPT, EXEC), "short": (b"#", FILE)})
    lines = deployer().lines()
    assert [line for line in lines if "note:" in line] == [
        "sooner: note: data.txt has a shebang but is not executable: not a job (chmod +x to make it one)",
        "sooner: note: tools/x.sh has a shebang but is not executable: not a job (chmod +x to make it one)"]
    commit_files(deployer.site, {"tools/x.sh": (SCRIPT, FILE), "data.txt": (b"#!not really, but starts so", FILE),
                                 "lib.sh": (b"x=2\n", FILE), "job.sh": (SCRIPT, FILE), "short": (b"#", FILE)})
    lines = deployer().lines()
    assert [line for line in lines if "note:" in line] == [
        "sooner: note: job.sh has a shebang but is not executable: not a job (chmod +x to make it one)"]


def test_notes_about_non_executable_scripts_are_bounded(deployer):
    commit_files(deployer.site, {f"s{i:02d}.sh": (SCRIPT + str(i).encode(), FILE) for i in range(25)})
    notes = [line for line in deployer().lines() if "note:" in line]
    assert len(notes) == 21 and notes[19].startswith("sooner: note: s19.sh has a shebang")
    assert notes[20] == "sooner: note: ... and 5 more file(s) with a shebang that are not executable"


def test_objects_let_a_worker_rebuild_the_tree_without_git(deployer):
    files = {"a.sh": (SCRIPT, EXEC), "lib/x.py": (b"print(1)\n", FILE), "lib/deep/y": (b"y", FILE),
             "link": (b"lib/x.py", LINK)}
    commit_files(deployer.site, files)
    deployer()
    objects = deployer.store.objects
    rebuilt = {}

    def walk(sha, prefix):
        for entry in objects.get_tree(sha):
            if entry["mode"] == TREE_MODE:
                walk(entry["sha"], prefix + entry["name"] + "/")
            else:
                rebuilt[prefix + entry["name"]] = (objects.get_blob(entry["sha"]), entry["mode"])
    walk(deployer.store.deploys.latest()["tree"], "")
    assert rebuilt == files


def test_an_incremental_deploy_sends_only_new_objects(deployer, quiet_site):
    files = {f"f{i}/s.sh": (SCRIPT + str(i).encode(), EXEC) for i in range(5)}
    commit_files(quiet_site, files)
    deployer()
    files["f0/s.sh"] = (b"changed", EXEC)
    commit_files(quiet_site, files)
    repo = Repo(str(quiet_site / "scripts.git"))
    try:
        tree = read_tree(repo.object_store, repo[repo.refs[b"refs/heads/main"]].tree.decode(), max_file_bytes=100)
        sent = store_objects(deployer.store, repo.object_store, tree, deployer.store.deploys.latest()["tree"])
    finally:
        repo.close()
    assert sent == (1, 2)  # the changed blob, its folder and the root


def test_the_working_copy_is_a_clean_git_checkout(deployer):
    commit = commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC), "b/c": (b"x", FILE)})
    deployer()
    repo = Repo(str(deployer.working_copy))
    try:
        assert repo.refs[b"HEAD"].decode() == commit
        assert sorted(repo.open_index()) == [b"a.sh", b"b/c"]
        assert repo[repo[repo.refs[b"HEAD"]].tree]  # objects reachable through alternates
    finally:
        repo.close()
    assert stat.S_IMODE(os.stat(deployer.working_copy / "a.sh").st_mode) == 0o755


# --- pre-receive checks ------------------------------------------------------------------------------------------------

def test_check_push_rejects_another_branch_while_the_deployed_one_does_not_exist(quiet_site):
    settings = load_settings(quiet_site / "config.json", environ={})
    problems = check_push(settings, [("0" * 40, "a" * 40, "refs/heads/master")])
    assert problems == ["this site deploys branch 'main', which does not exist yet. "
                        "Push yours to it with: git push origin master:main"]


def test_check_push_checks_the_deployed_branch_and_refuses_its_deletion(quiet_site):
    settings = load_settings(quiet_site / "config.json", environ={})
    good = commit_files(quiet_site, {"a.sh": (SCRIPT, EXEC)})
    assert check_push(settings, [("0" * 40, good, "refs/heads/main"), ("0" * 40, good, "refs/heads/dev")]) == []
    assert "cannot be deleted" in check_push(settings, [(good, "0" * 40, "refs/heads/main")])[0]
    bad_tree = add_raw_tree(quiet_site, lambda objects: raw_tree(objects, [(b"evil", LINK, blob(objects, b"/etc"))]))
    bad = commit_to(quiet_site, bad_tree)
    assert check_push(settings, [(good, bad, "refs/heads/main")]) == [
        f"push rejected: cannot deploy {bad[:7]}, nothing was changed: symlink 'evil' points to an absolute path ('/etc')"]


def test_a_removed_working_copy_is_recreated(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    shutil.rmtree(deployer.working_copy)
    report = deployer()
    assert report.lines()[-1] == "sooner: put back 1 file(s) in the working copy"
    assert (deployer.working_copy / "a.sh").read_bytes() == SCRIPT


def test_a_restored_job_keeps_its_settings_but_comes_back_disabled(deployer):
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    deployer.store.jobs.update_settings("a.sh", {"schedule": "*/5 * * * *"})
    deployer.store.jobs.set_enabled("a.sh", True)
    commit_files(deployer.site, {"a.sh": (SCRIPT, FILE)})
    deployer()
    assert deployer.store.jobs.get("a.sh").enabled is False
    commit_files(deployer.site, {"a.sh": (SCRIPT, EXEC)})
    deployer()
    job = deployer.store.jobs.get("a.sh")
    assert job.schedule == "*/5 * * * *" and job.enabled is False and job.deleted is False


def test_a_big_deploy_shows_the_first_lines_and_counts_the_rest(deployer):
    commit_files(deployer.site, {f"s{i:03d}.sh": (SCRIPT + str(i).encode(), EXEC) for i in range(60)})
    lines = deployer().lines()
    assert lines[49] == "sooner: created job s049.sh (disabled)"
    assert lines[50] == "sooner: ... and 10 more job(s) created"
    assert lines[51].startswith("sooner: deployed") and "(60 created, 0 updated, 0 removed; 60 file(s) written" in lines[51]
