"""`sooner deploy --working-copy`: edits and local commits in the server's working copy are deployed, never lost.

Everything is real: a site made by `sooner init`, git pushes through its hooks,
the `sooner` CLI in a subprocess and the embedded database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import git, run_sooner
from sooner.config import load_settings
from test_push import add_script, commit_and_push, head, site_store

EDITOR = {"GIT_AUTHOR_NAME": "Wanda Editor", "GIT_AUTHOR_EMAIL": "wanda@example.com",
          "GIT_COMMITTER_NAME": "Wanda Editor", "GIT_COMMITTER_EMAIL": "wanda@example.com"}


def wc(site: Path) -> Path:
    return site / "scripts-working-copy"


def branch_tip(site: Path) -> str:
    return git("--git-dir", str(site / "scripts.git"), "rev-parse", "refs/heads/main", cwd=site).stdout.strip()


def blob_in_branch(site: Path, path: str) -> str:
    return git("--git-dir", str(site / "scripts.git"), "rev-parse", f"main:{path}", cwd=site).stdout.strip()


def deployed(site: Path, clone: Path) -> None:
    """A site with hello.sh pushed and deployed (the working copy shows it)."""
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    assert (wc(site) / "hello.sh").is_file()


def sooner_in_wc(site: Path, *args: str, env: dict | None = None):
    return run_sooner(*args, cwd=wc(site), env={**EDITOR, **(env or {})})


def test_an_edit_in_the_working_copy_is_committed_on_the_branch_and_deployed(site, clone):
    # given a deployed site whose working copy someone edits on the server
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho edited on the server\n")
    # when they deploy the working copy
    result = sooner_in_wc(site, "deploy", "--working-copy", "-m", "Say something else")
    # then the edit is a commit on main in scripts.git, by the local git identity, with their message
    assert result.returncode == 0, result.stderr
    tip = branch_tip(site)
    shown = git("--git-dir", str(site / "scripts.git"), "log", "-1", "--format=%an <%ae>|%s|%P", "main", cwd=site)
    assert shown.stdout.strip() == f"Wanda Editor <wanda@example.com>|Say something else|{head(clone)}"
    assert f"sooner: committed the working copy's changes as {tip[:7]} ('Say something else' by Wanda Editor " \
           f"<wanda@example.com>)" in result.stdout
    assert "sooner: updated job hello.sh" in result.stdout
    assert f"sooner: deployed {tip[:7]}" in result.stdout
    # and the job runs the new blob
    with site_store(site) as store:
        job = store.jobs.get("hello.sh")
        assert job.blob == blob_in_branch(site, "hello.sh") and job.commit == tip
        assert store.objects.get_blob(job.blob) == b"#!/bin/sh\necho edited on the server\n"
    # and the working copy is a clean checkout of that commit
    assert git("status", "--porcelain", cwd=wc(site)).stdout == ""
    assert git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip() == tip


@pytest.fixture
def store_of_site(site: Path):
    """The site's store, open until the test's workers have stopped (request it before start_worker)."""
    with site_store(site) as store:
        yield store


def test_the_deployed_edit_is_what_the_job_runs(site, clone, store_of_site, start_worker):
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho from the working copy\n")
    assert sooner_in_wc(site, "deploy", "--working-copy").returncode == 0
    assert run_sooner("job", "enable", "hello.sh", cwd=site).returncode == 0
    start_worker(store_of_site, load_settings(site / "config.json", environ={}), "w1", 1)
    result = run_sooner("run", "hello.sh", "--follow", cwd=site)
    assert result.returncode == 0, result.stderr
    assert "from the working copy" in result.stdout


def test_a_generated_message_names_the_changes(site, clone):
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho edited\n")
    add_script(wc(site), "tools/new.sh")
    result = sooner_in_wc(site, "deploy", "--working-copy")
    assert result.returncode == 0, result.stderr
    subject = git("--git-dir", str(site / "scripts.git"), "log", "-1", "--format=%s", "main", cwd=site).stdout
    assert subject.strip() == "Edit in the working copy: modify hello.sh; add tools/new.sh"
    assert "sooner: created job tools/new.sh (disabled)" in result.stdout


def test_local_commits_and_a_committed_new_file_are_kept_and_deployed(site, clone):
    # given a commit made by hand in the working copy, adding a file
    deployed(site, clone)
    add_script(wc(site), "reports/daily.sh")
    git("add", "-A", cwd=wc(site))
    git("commit", "-qm", "add daily report", cwd=wc(site))
    local = git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip()
    # when a plain deploy runs, it refuses and keeps the commit
    refused = sooner_in_wc(site, "deploy")
    assert refused.returncode == 1
    assert "local commits" in refused.stderr and "--working-copy" in refused.stderr
    assert git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip() == local
    assert (wc(site) / "reports" / "daily.sh").is_file()
    # when the working copy is deployed
    result = sooner_in_wc(site, "deploy", "--working-copy")
    # then that very commit is the branch's tip, and its file is a job
    assert result.returncode == 0, result.stderr
    assert branch_tip(site) == local
    assert git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip() == local
    assert "sooner: created job reports/daily.sh (disabled)" in result.stdout
    assert (wc(site) / "reports" / "daily.sh").is_file()


def test_a_local_commit_plus_uncommitted_edits_become_one_more_commit_on_top(site, clone):
    deployed(site, clone)
    add_script(wc(site), "one.sh")
    git("add", "-A", cwd=wc(site))
    git("commit", "-qm", "one", cwd=wc(site))
    local = git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip()
    add_script(wc(site), "two.sh")
    result = sooner_in_wc(site, "deploy", "--working-copy", "-m", "two")
    assert result.returncode == 0, result.stderr
    parents = git("--git-dir", str(site / "scripts.git"), "log", "-1", "--format=%P", "main", cwd=site).stdout.strip()
    assert parents == local
    with site_store(site) as store:
        assert {job.name for job in store.jobs.list()} == {"hello.sh", "one.sh", "two.sh"}


def test_a_plain_deploy_refuses_to_overwrite_edits_and_keeps_them(site, clone):
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho precious\n")
    (wc(site) / "notes.txt").write_text("new file\n")
    before = head(clone)
    result = sooner_in_wc(site, "deploy")
    assert result.returncode == 1
    assert "uncommitted changes in 2 file(s) (hello.sh, notes.txt)" in result.stderr
    assert "sooner deploy --working-copy" in result.stderr and "Traceback" not in result.stderr
    assert (wc(site) / "hello.sh").read_text() == "#!/bin/sh\necho precious\n"
    assert (wc(site) / "notes.txt").read_text() == "new file\n"
    assert branch_tip(site) == before


def test_a_push_while_the_working_copy_has_edits_deploys_and_leaves_the_edits(site, clone):
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho precious\n")
    add_script(clone, "other.sh")
    output = commit_and_push(clone, "someone else")
    assert "remote: sooner: created job other.sh (disabled)" in output
    assert "remote: sooner: note: the server's working copy has uncommitted changes in 1 file(s) (hello.sh)" in output
    assert (wc(site) / "hello.sh").read_text() == "#!/bin/sh\necho precious\n"


def test_a_diverged_working_copy_is_refused_with_commands_that_reconcile_it(site, clone):
    # given an edit in the working copy while someone else pushed
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho edited on the server\n")
    add_script(clone, "other.sh")
    commit_and_push(clone, "someone else")
    wc_head = git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip()
    # when the working copy is deployed
    result = sooner_in_wc(site, "deploy", "--working-copy")
    # then it is refused, nothing changed, and the message says what to run
    assert result.returncode == 1
    assert "has diverged from 'main': 'main' has 1 commit(s) the working copy lacks" in result.stderr
    assert "Nothing was changed" in result.stderr
    assert branch_tip(site) == head(clone)
    assert git("rev-parse", "HEAD", cwd=wc(site)).stdout.strip() == wc_head
    assert (wc(site) / "hello.sh").read_text() == "#!/bin/sh\necho edited on the server\n"
    commands = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert commands[0] == f"cd {wc(site)}" and commands[-1] == "sooner deploy --working-copy"
    # and running exactly those commands in a shell deploys both changes
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    final = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd=site.parent, capture_output=True, text=True,
                           env={**os.environ, **EDITOR, "PATH": path, "SOONER_CONFIG": ""}, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "sooner: updated job hello.sh" in final.stdout
    with site_store(site) as store:
        assert {job.name for job in store.jobs.list()} == {"hello.sh", "other.sh"}
        assert store.objects.get_blob(store.jobs.get("hello.sh").blob) == b"#!/bin/sh\necho edited on the server\n"


def test_a_commit_that_scripts_git_refuses_stays_in_the_working_copy(site, clone):
    deployed(site, clone)
    (wc(site) / "evil").symlink_to("/etc/passwd")
    before = branch_tip(site)
    result = sooner_in_wc(site, "deploy", "--working-copy", "-m", "evil")
    assert result.returncode == 1
    assert "symlink 'evil' points to an absolute path" in result.stderr
    assert "stays in the working copy, nothing is lost" in result.stderr
    assert branch_tip(site) == before
    assert git("log", "-1", "--format=%s", cwd=wc(site)).stdout.strip() == "evil"
    assert (wc(site) / "evil").is_symlink()


def test_nothing_to_deploy_from_the_working_copy_deploys_the_branch_as_it_is(site, clone):
    deployed(site, clone)
    result = sooner_in_wc(site, "deploy", "--working-copy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sooner: the working copy has no changes of its own; deploying 'main' as it is",
        f"sooner: already deployed {head(clone)[:7]}, nothing changed"]


def test_without_a_git_identity_nothing_is_committed(site, clone):
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho edited\n")
    no_identity = {"GIT_AUTHOR_NAME": "", "GIT_AUTHOR_EMAIL": "", "GIT_COMMITTER_NAME": "", "GIT_COMMITTER_EMAIL": "",
                   "HOME": str(site / "nobody"), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_COUNT": "1",
                   "GIT_CONFIG_KEY_0": "user.useConfigOnly", "GIT_CONFIG_VALUE_0": "true"}
    result = run_sooner("deploy", "--working-copy", cwd=wc(site), env=no_identity)
    assert result.returncode == 1
    assert "git does not know who you are" in result.stderr and "git config --global user.name" in result.stderr
    assert git("status", "--porcelain", cwd=wc(site)).stdout == " M hello.sh\n"


def test_message_without_working_copy_is_a_usage_error(site):
    result = run_sooner("deploy", "-m", "hello", cwd=site)
    assert result.returncode == 2 and "add --working-copy" in result.stderr


def test_a_conflicting_rebase_is_waited_for_and_then_deployed(site, clone):
    # given edits of the same line on the server and in a clone that pushed first
    deployed(site, clone)
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho server\n")
    (clone / "hello.sh").write_text("#!/bin/sh\necho clone\n")
    commit_and_push(clone, "clone's edit")
    # when the reconciling commands stop at the conflict
    git("add", "--all", cwd=wc(site))
    git("commit", "-qm", "server's edit", cwd=wc(site), env=EDITOR)
    assert git("pull", "--rebase", "origin", "main", cwd=wc(site), env=EDITOR, check=False).returncode != 0
    # then neither a deploy nor a push touches the working copy, and --working-copy waits for the rebase
    refused = sooner_in_wc(site, "deploy")
    assert refused.returncode == 1 and "a rebase in progress" in refused.stderr
    waiting = sooner_in_wc(site, "deploy", "--working-copy")
    assert waiting.returncode == 1 and "a rebase in progress: finish it there first" in waiting.stderr
    assert branch_tip(site) == head(clone)
    # and once it is resolved and continued, the server's version is deployed on top of the clone's
    (wc(site) / "hello.sh").write_text("#!/bin/sh\necho both\n")
    git("add", "hello.sh", cwd=wc(site))
    git("-c", "core.editor=true", "rebase", "--continue", cwd=wc(site), env=EDITOR)
    result = sooner_in_wc(site, "deploy", "--working-copy")
    assert result.returncode == 0, result.stderr
    log = git("--git-dir", str(site / "scripts.git"), "log", "--format=%s", "main", cwd=site).stdout.splitlines()
    assert log[:2] == ["server's edit", "clone's edit"]
    with site_store(site) as store:
        assert store.objects.get_blob(store.jobs.get("hello.sh").blob) == b"#!/bin/sh\necho both\n"
