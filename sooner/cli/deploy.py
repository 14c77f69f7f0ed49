"""``sooner deploy`` (run by the git hooks, or by hand in the site)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from sooner.cli import AppContext, main, pass_app
from sooner.errors import StoreError

if TYPE_CHECKING:
    from sooner.config import Settings

# A push must not hang on a dead database: the hook gives up after two attempts.
HOOK_RETRY_ATTEMPTS = 2
MANUAL_RETRY_ATTEMPTS = 4


@main.command("deploy")
@click.option("--from-hook", "from_hook", is_flag=True,
              help="Run by the post-update hook: REFS are the refs git updated; deploys only if the site's "
                   "branch is among them, and gives up on an unreachable database quickly.")
@click.option("--check-push", "check_push", is_flag=True,
              help="Run by the pre-receive hook: read 'old new ref' lines on stdin and reject a push that "
                   "could not be deployed.")
@click.option("--working-copy", "working_copy", is_flag=True,
              help="Deploy what the site's working copy holds: its uncommitted changes and local commits become "
                   "a commit on the deployed branch (as your git identity), which is then pushed and deployed.")
@click.option("-m", "--message", help="Commit message for --working-copy (default: one naming the changed files).")
@click.argument("refs", nargs=-1)
@pass_app
def deploy_command(app: AppContext, from_hook: bool, check_push: bool, working_copy: bool, message: str | None,
                   refs: tuple[str, ...]) -> None:
    """Deploy the tip of the site's branch.

    Checks the whole commit first (paths, symlinks, file sizes) and refuses it
    with the reason if anything is wrong; then stores the scripts for workers,
    updates the working copy and creates, updates or removes jobs (new jobs
    start disabled). Deploying the same commit again changes nothing.

    Work in the working copy is never overwritten: with uncommitted changes or
    local commits there, this refuses; `--working-copy` deploys them instead.
    """
    from sooner.deploy import push as deployer

    settings = app.settings
    if message is not None and not working_copy:
        raise click.UsageError("-m/--message is the commit message of --working-copy; add --working-copy")
    if working_copy and (from_hook or check_push or refs):
        raise click.UsageError("--working-copy is for use by hand; it takes no REFS and no hook options")
    if check_push:
        _check_push(app)
        return
    if refs and not from_hook:
        raise click.UsageError("REFS are only given by the post-update hook (with --from-hook)")
    if from_hook:
        for line in deployer.refs_not_deployed(refs, settings.branch, deployer.deleted_refs(settings, refs)):
            click.echo(line)
        if f"refs/heads/{settings.branch}" not in refs:
            return
    if working_copy and _deploy_working_copy(settings, message):
        return
    opened = []

    def connect():
        from sooner.store import open_store

        opened.append(open_store(settings, retry_attempts=HOOK_RETRY_ATTEMPTS if from_hook else MANUAL_RETRY_ATTEMPTS))
        return opened[0]

    try:
        report = deployer.deploy(settings, connect, keep_local_changes=from_hook)
    except StoreError as exc:
        raise StoreError(f"{exc}. The push is in scripts.git but is not deployed yet: once the database is "
                         f"back, run `sooner deploy` in {settings.site_dir} (or push again)") from None
    finally:
        for store in opened:
            store.close()
    for line in report.lines():
        click.echo(line)


def _deploy_working_copy(settings: Settings, message: str | None) -> bool:
    """Commit and push the working copy's work; False if it has none (then the branch is deployed as it is)."""
    from sooner.deploy.working_copy import deploy_working_copy

    committed, lines = deploy_working_copy(settings, message)
    if committed.head is None:
        click.echo(f"sooner: the working copy has no changes of its own; deploying '{settings.branch}' as it is")
        return False
    if committed.message:
        click.echo(f"sooner: committed the working copy's changes as {committed.head[:7]} "
                   f"({committed.message!r} by {committed.author})")
    else:
        click.echo(f"sooner: pushing the working copy's local commits (up to {committed.head[:7]})")
    for line in lines:
        click.echo(line)
    if not any(line.startswith("sooner: deployed") or line.startswith("sooner: already deployed") for line in lines):
        click.echo(f"sooner: pushed to '{settings.branch}'; scripts.git's hook did not report a deploy: "
                   f"run `sooner deploy` in {settings.site_dir} to complete it")
    return True


def _check_push(app: AppContext) -> None:
    """pre-receive: print why the push is rejected (exit 1), or nothing."""
    from sooner.deploy import push as deployer

    updates = deployer.parse_push_lines(sys.stdin)
    problems = deployer.check_push(app.settings, updates, os.environ.get("GIT_QUARANTINE_PATH"))
    for problem in problems:
        click.echo(f"sooner: {problem}", err=True)
    if problems:
        click.get_current_context().exit(1)
