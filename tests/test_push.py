"""End to end: `git push` into a site made by `sooner init`; the real hooks deploy (or refuse) the push."""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from conftest import git, run_sooner
from sooner.config import load_settings
from sooner.model import Job
from sooner.store import open_store

SCRIPT = "#!/bin/sh\necho hello\n"


@contextmanager
def site_store(site: Path):
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        yield store
    finally:
        store.close()


def jobs_of(site: Path, include_deleted: bool = True) -> dict[str, Job]:
    with site_store(site) as store:
        return {job.name: job for job in store.jobs.list(include_deleted=include_deleted)}


def add_script(clone: Path, path: str, text: str = SCRIPT, executable: bool = True) -> None:
    target = clone / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o755 if executable else 0o644)


def commit_and_push(clone: Path, message: str = "change", *push_args: str) -> str:
    """Commit everything and push; returns git's output (where the hooks' lines appear)."""
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", message, cwd=clone)
    result = git("push", "origin", *(push_args or ("main",)), cwd=clone, check=False)
    return result.stdout + result.stderr


def head(clone: Path) -> str:
    return git("rev-parse", "HEAD", cwd=clone).stdout.strip()


def set_config(site: Path, **values) -> None:
    path = site / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


def test_a_pushed_script_becomes_a_disabled_job(site, clone):
    add_script(clone, "hello.sh")
    output = commit_and_push(clone)
    assert "remote: sooner: created job hello.sh (disabled)" in output
    assert f"remote: sooner: deployed {head(clone)[:7]} (1 created, 0 updated, 0 removed" in output
    job = jobs_of(site)["hello.sh"]
    assert job.enabled is False and job.commit == head(clone)
    assert (site / "scripts-working-copy" / "hello.sh").read_text() == SCRIPT


def test_update_delete_chmod_and_restore(site, clone):
    add_script(clone, "a.sh")
    add_script(clone, "b.sh")
    add_script(clone, "c.sh")
    commit_and_push(clone)

    add_script(clone, "a.sh", SCRIPT + "echo v2\n")
    output = commit_and_push(clone)
    assert "remote: sooner: updated job a.sh" in output
    assert jobs_of(site)["a.sh"].commit == head(clone)

    git("rm", "-q", "b.sh", cwd=clone)
    (clone / "c.sh").chmod(0o644)
    output = commit_and_push(clone)
    assert "remote: sooner: removed job b.sh (history kept)" in output
    assert "remote: sooner: removed job c.sh (history kept)" in output
    jobs = jobs_of(site)
    assert jobs["b.sh"].deleted and jobs["c.sh"].deleted and not jobs["a.sh"].deleted
    assert (site / "scripts-working-copy" / "c.sh").is_file()  # still a supporting file

    (clone / "c.sh").chmod(0o755)
    output = commit_and_push(clone)
    assert "remote: sooner: restored job c.sh (disabled)" in output
    assert "(0 created, 0 updated, 0 removed, 1 restored;" in output
    job = jobs_of(site)["c.sh"]
    assert not job.deleted and not job.enabled


def test_nested_paths_supporting_files_spaces_and_unicode(site, clone):
    add_script(clone, "reports/daily/run.sh")
    add_script(clone, "lib.sh", "helper() { :; }\n", executable=False)
    add_script(clone, "with space/d\u00e9j\u00e0 vu \u2603.sh")
    os.symlink("reports/daily/run.sh", clone / "run-link")
    output = commit_and_push(clone)
    assert "remote: sooner: created job reports/daily/run.sh (disabled)" in output
    assert "remote: sooner: created job with space/d\u00e9j\u00e0 vu \u2603.sh (disabled)" in output
    assert set(jobs_of(site)) == {"reports/daily/run.sh", "with space/d\u00e9j\u00e0 vu \u2603.sh"}
    wc = site / "scripts-working-copy"
    assert (wc / "lib.sh").read_text() == "helper() { :; }\n"
    assert os.readlink(wc / "run-link") == "reports/daily/run.sh"
    assert git("status", "--porcelain", cwd=wc).stdout == ""


def test_an_escaping_symlink_is_refused_and_nothing_changes(site, clone):
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    before = head(clone)
    add_script(clone, "new.sh")
    os.symlink("../../etc/passwd", clone / "evil")
    output = commit_and_push(clone)
    assert "remote: sooner: push rejected: cannot deploy" in output
    assert "symlink 'evil' -> '../../etc/passwd' points outside the repository" in output
    assert "[remote rejected] main -> main (pre-receive hook declined)" in output
    assert git("rev-parse", "main", cwd=site / "scripts.git").stdout.strip() == before
    assert set(jobs_of(site)) == {"hello.sh"}
    assert sorted(p.name for p in (site / "scripts-working-copy").iterdir()) == [".git", "hello.sh"]


def test_a_file_over_the_size_limit_is_refused(site, clone):
    set_config(site, max_file_bytes=100)
    add_script(clone, "big.sh", SCRIPT + "#" * 200 + "\n")
    output = commit_and_push(clone)
    assert "file 'big.sh' is 222 bytes, over the limit of 100 (max_file_bytes)" in output
    assert "pre-receive hook declined" in output
    assert git("branch", "--list", "main", cwd=site / "scripts.git").stdout == ""


def test_deploying_by_hand_twice_changes_nothing(site, clone):
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    for _ in range(2):
        result = run_sooner("deploy", cwd=site / "scripts-working-copy")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"sooner: already deployed {head(clone)[:7]}, nothing changed\n"
    with site_store(site) as store:
        assert len(store.deploys.list()) == 1


def test_a_first_push_of_master_is_rejected_with_the_command_to_use(site, clone):
    git("checkout", "-q", "-b", "master", cwd=clone)
    add_script(clone, "hello.sh")
    output = commit_and_push(clone, "first", "master")
    assert ("remote: sooner: this site deploys branch 'main', which does not exist yet. "
            "Push yours to it with: git push origin master:main") in output
    assert "pre-receive hook declined" in output
    output = git("push", "origin", "master:main", cwd=clone).stderr
    assert "remote: sooner: created job hello.sh (disabled)" in output
    output = git("push", "origin", "master", cwd=clone).stderr
    assert "remote: sooner: branch 'master' is not deployed (this site deploys 'main')" in output


def test_a_push_while_the_database_is_down_is_reconciled_by_the_next_deploy(site, clone):
    add_script(clone, "kept.sh")
    add_script(clone, "gone.sh")
    commit_and_push(clone)
    set_config(site, mongo_url="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500")
    git("rm", "-q", "gone.sh", cwd=clone)
    add_script(clone, "new.sh")
    output = commit_and_push(clone)  # git() gives up after 120 s: the hook must not hang
    assert "remote: sooner: error: cannot reach the database at mongodb://127.0.0.1:1/" in output
    assert "run `sooner deploy`" in output
    assert git("rev-parse", "main", cwd=site / "scripts.git").stdout.strip() == head(clone)  # git kept the push

    set_config(site, mongo_url=None)
    result = run_sooner("deploy", cwd=site)
    assert result.returncode == 0, result.stderr
    assert "sooner: created job new.sh (disabled)" in result.stdout
    assert "sooner: removed job gone.sh (history kept)" in result.stdout
    jobs = jobs_of(site)
    assert not jobs["new.sh"].deleted and jobs["gone.sh"].deleted
    assert (site / "scripts-working-copy" / "new.sh").is_file()
    assert not (site / "scripts-working-copy" / "gone.sh").exists()


def _hostile_commit(repo_path: Path, parent: str, name: bytes, mode: int = 0o100755) -> str:
    """A commit git's own tools would never make: a tree entry named ``name``."""
    repo = Repo(str(repo_path))
    try:
        script = Blob.from_string(SCRIPT.encode())
        repo.object_store.add_object(script)
        tree = Tree()
        tree.set_raw_string(b"%o %s\0" % (mode, name) + bytes.fromhex(script.id.decode()))
        repo.object_store.add_object(tree)
        commit = Commit()
        commit.tree = tree.id
        commit.parents = [parent.encode()]
        commit.author = commit.committer = b"Mallory <m@example.com>"
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"hostile\n"
        repo.object_store.add_object(commit)
        return commit.id.decode()
    finally:
        repo.close()


def test_a_hostile_tree_is_refused_at_push_and_by_hand(site, clone):
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    pushed = _hostile_commit(clone / ".git", head(clone), b"..")
    result = git("push", "origin", f"{pushed}:refs/heads/main", cwd=clone, check=False)
    assert "path '..' has a '..' component, which could escape the repository" in result.stderr
    assert result.returncode != 0

    # The ref moved behind the hooks' back (e.g. by hand on the server): `sooner deploy` refuses too.
    bare = site / "scripts.git"
    hostile = _hostile_commit(bare, head(clone), b".git")
    git("update-ref", "refs/heads/main", hostile, cwd=bare)
    result = run_sooner("deploy", cwd=site)
    assert result.returncode == 1
    assert result.stderr.startswith(f"sooner: error: cannot deploy {hostile[:7]}, nothing was changed: "
                                    "path '.git' is a '.git' entry")
    assert set(jobs_of(site)) == {"hello.sh"}
    assert sorted(p.name for p in (site / "scripts-working-copy").iterdir()) == [".git", "hello.sh"]


def _commit_with_folders(clone: Path, names: list[str]) -> str:
    """A commit on HEAD whose root holds, beside hello.sh, a folder (with a hook-like script) per name; made by git."""
    def plumb(*args: str, input: str) -> str:
        return subprocess.run(["git", *args], cwd=clone, input=input.encode(), capture_output=True,
                              check=True).stdout.decode().strip()
    script = plumb("hash-object", "-w", "--stdin", input=SCRIPT)
    folder = plumb("mktree", input=f"100755 blob {script}\tpost-checkout\n")
    entries = [f"100755 blob {script}\thello.sh"] + [f"040000 tree {folder}\t{name}" for name in names]
    tree = plumb("mktree", input="\n".join(entries) + "\n")
    return plumb("commit-tree", tree, "-p", "HEAD", "-m", "dot-git look-alikes", input="")


def test_folders_that_windows_or_macos_take_for_dot_git_are_refused_at_push_and_by_hand(site, clone):
    # given a deployed site, and a commit adding folders git itself would never check out
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    before = head(clone)
    names = [".git.", ".GIT.", ".git  ", ".git. .", "git~1", ".g\u200cit"]
    pushed = _commit_with_folders(clone, names)
    # when it is pushed, then the pre-receive hook refuses it, naming each one
    result = git("push", "origin", f"{pushed}:refs/heads/main", cwd=clone, check=False)
    assert result.returncode != 0 and "pre-receive hook declined" in result.stderr
    for name in names:
        assert f"path {name!r} is a name that Windows or macOS take for '.git'" in result.stderr
    assert git("rev-parse", "main", cwd=site / "scripts.git").stdout.strip() == before
    # and a deploy of it by hand (the ref moved behind the hooks' back) refuses too
    bare = site / "scripts.git"
    git("push", "-q", str(bare), f"{pushed}:refs/heads/incoming", cwd=clone)  # objects only: not the deployed branch
    git("update-ref", "refs/heads/main", pushed, cwd=bare)
    deployed = run_sooner("deploy", cwd=site)
    assert deployed.returncode == 1 and "path '.git.' is a name that Windows or macOS take for '.git'" in deployed.stderr
    assert sorted(p.name for p in (site / "scripts-working-copy").iterdir()) == [".git", "hello.sh"]


def _measure_pre_receive(site: Path, tmp_path: Path) -> Path:
    """Run the installed pre-receive hook's Python under a parent that records its peak RSS; returns that file."""
    probe, out = tmp_path / "maxrss.py", tmp_path / "maxrss.txt"
    probe.write_text("import resource, subprocess, sys\n"
                     "code = subprocess.call(sys.argv[2:])\n"
                     "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
                     "open(sys.argv[1], 'a').write(f'{peak}\\n')\n"
                     "sys.exit(code)\n")
    hook = site / "scripts.git" / "hooks" / "pre-receive"
    text = hook.read_text()
    python = text.split("exec '", 1)[1].split("'", 1)[0]
    hook.write_text(text.replace(f"exec '{python}' -m", f"exec '{python}' '{probe}' '{out}' '{python}' -m"))
    return out


def test_an_oversized_push_is_refused_by_size_with_bounded_memory(site, clone, tmp_path):
    # given a site with a 4 MB limit whose pre-receive hook reports its peak memory
    set_config(site, max_file_bytes=4_000_000)
    peaks = _measure_pre_receive(site, tmp_path)
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    # when a 48 MB file (incompressible) is pushed
    (clone / "big.bin").write_bytes(os.urandom(48_000_000))
    output = commit_and_push(clone, "big")
    # then it is refused by size, and the check used about as much memory as for the small push
    assert "file 'big.bin' is 48,000,000 bytes, over the limit of 4,000,000 (max_file_bytes)" in output
    assert "pre-receive hook declined" in output
    small_kb, big_kb = (int(line) for line in peaks.read_text().split())
    assert big_kb < small_kb + 16_000, f"the check grew from {small_kb} kB to {big_kb} kB for a 48 MB file"
