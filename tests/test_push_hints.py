"""What a push tells the pusher besides the job changes: scripts that are not jobs, branches that are not deployed."""

from __future__ import annotations

from conftest import git
from test_push import add_script, commit_and_push, jobs_of


def test_a_pushed_script_with_a_shebang_but_no_executable_bit_gets_a_note(site, clone):
    # given a job, a script someone forgot to chmod, and files that are not scripts
    add_script(clone, "hello.sh")
    add_script(clone, "tools/x.sh", executable=False)
    add_script(clone, "README.md", "# not a script\n", executable=False)
    # when it is pushed
    output = commit_and_push(clone)
    # then the push says why tools/x.sh is no job, and nothing about the others
    assert ("remote: sooner: note: tools/x.sh has a shebang but is not executable: not a job "
            "(chmod +x to make it one)") in output
    assert output.count("note:") == 1
    assert set(jobs_of(site)) == {"hello.sh"}


def test_the_note_comes_back_when_a_job_loses_its_executable_bit_and_is_bounded(site, clone):
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    (clone / "hello.sh").chmod(0o644)
    for i in range(30):
        add_script(clone, f"many/s{i:02d}.sh", executable=False)
    output = commit_and_push(clone)
    assert "remote: sooner: removed job hello.sh (history kept)" in output
    assert "remote: sooner: note: hello.sh has a shebang but is not executable" in output
    assert output.count("has a shebang but is not executable") == 20
    assert "remote: sooner: note: ... and 11 more file(s) with a shebang that are not executable" in output


def test_a_push_to_a_branch_that_is_not_deployed_says_how_to_deploy_it(site, clone):
    # given a site that deploys main, with main pushed
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    # when someone pushes master
    git("checkout", "-q", "-b", "master", cwd=clone)
    add_script(clone, "other.sh")
    output = commit_and_push(clone, "on master", "master")
    # then the push is kept but not deployed, and says the command that deploys it
    assert ("remote: sooner: branch 'master' is not deployed (this site deploys 'main'); "
            "to deploy it: git push origin master:main") in output
    assert set(jobs_of(site)) == {"hello.sh"}
    # and that command works
    output = git("push", "origin", "master:main", cwd=clone).stderr
    assert "remote: sooner: created job other.sh (disabled)" in output


def test_deleting_a_branch_that_is_not_deployed_gives_no_hint(site, clone):
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    git("push", "-q", "origin", "main:feature", cwd=clone)
    output = git("push", "origin", "--delete", "feature", cwd=clone).stderr
    assert "remote: sooner: branch 'feature' is not deployed (this site deploys 'main')" in output
    assert "to deploy it" not in output
