"""``sooner deploy`` (run by the post-update hook, or by hand in the working copy)."""

from __future__ import annotations

import click

from sooner.cli import main


@main.command("deploy")
def deploy_command() -> None:
    """Deploy the site's branch (placeholder until sooner.deploy lands)."""
    raise click.ClickException("not implemented yet")
