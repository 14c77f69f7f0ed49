"""``sooner web``, ``sooner user add|list|remove|passwd|role`` and ``sooner token create|list|revoke``."""

from __future__ import annotations

import sys

import click

from sooner.cli import AppContext, main, pass_app
from sooner.cli.output import ago, echo_table
from sooner.errors import SoonerError


@main.command("web")
@click.option("--host", envvar="SOONER_WEB_HOST", help="Address to listen on (env SOONER_WEB_HOST; default: "
                                                       "web_host from the config, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), envvar="SOONER_WEB_PORT",
              help="Port to listen on (env SOONER_WEB_PORT; default: web_port, 8080).")
@click.option("--threads", type=click.IntRange(4, 10_000), default=100, show_default=True,
              help="Server threads: each open browser tab holds one (its WebSocket).")
@click.option("--trusted-proxies", type=click.IntRange(0, 10), default=None,
              help="How many reverse proxies in front set X-Forwarded-For/-Proto/-Host to trust (default 0; "
                   "1 behind nginx).")
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
@pass_app
def web_command(app: AppContext, host: str | None, port: int | None, threads: int, trusted_proxies: int | None,
                access_log: bool) -> None:
    """Serve the web UI (gunicorn, one process, threads) until Ctrl-C."""
    from sooner.webapp.server import check_can_listen, serve

    settings = app.settings
    host = host or settings.web_host
    port = port or settings.web_port
    check_can_listen(host, port)  # before anything is said or started: a taken port is one clear line
    store = app.store  # fail now, clearly, if there is no site or database
    if store.users.count() == 0:
        click.echo("No web user exists yet: create one with `sooner user add NAME --admin`.", err=True)
    app.close()
    click.echo(f"Sooner web UI on http://{host}:{port}  (Ctrl-C stops it)", err=True)
    serve(settings, host, port, threads=threads, trusted_proxies=trusted_proxies, access_log=access_log)


def _read_password(password_stdin: bool, prompt: str = "Password") -> str:
    if password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise SoonerError("no password on stdin (give one line)")
        return password
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)


@main.group("user")
def user_group() -> None:
    """Manage web UI users (roles: viewer reads, admin also changes jobs, runs and queues)."""


@user_group.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Give the admin role (default: viewer).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@pass_app
def user_add(app: AppContext, name: str, admin: bool, password_stdin: bool) -> None:
    """Create a web user; asks for the password twice unless --password-stdin."""
    from sooner.store.users import validate_user_name

    validate_user_name(name)
    store = app.store
    if store.users.get(name) is not None:
        raise SoonerError(f"a web user named {name!r} exists already (change it with `sooner user passwd`)")
    store.users.add(name, _read_password(password_stdin), admin=admin)
    click.echo(f"created web user {name} ({'admin' if admin else 'viewer'})")


@user_group.command("list")
@pass_app
def user_list(app: AppContext) -> None:
    """List web users with their role and last sign-in."""
    users = app.store.users.list()
    echo_table(["name", "role", "created", "last sign-in"],
               [[u["_id"], u.get("role"), ago(u.get("created_at")), ago(u.get("last_login_at"))] for u in users],
               "no web users yet: `sooner user add NAME --admin`")


@user_group.command("remove")
@click.argument("name")
@pass_app
def user_remove(app: AppContext, name: str) -> None:
    """Delete a web user and its API tokens (its sessions end at once)."""
    app.store.users.remove(name)
    click.echo(f"removed {name}")


@user_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@pass_app
def user_passwd(app: AppContext, name: str, password_stdin: bool) -> None:
    """Set a user's password (the user's web sessions end)."""
    from sooner.store.users import UserNotFound

    store = app.store
    if store.users.get(name) is None:
        raise UserNotFound(name)
    ended = store.users.set_password(name, _read_password(password_stdin, "New password"))
    click.echo(f"changed the password of {name} ({_sessions_ended(ended)})")


@user_group.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "admin"]))
@pass_app
def user_role(app: AppContext, name: str, role: str) -> None:
    """Make a user a viewer or an admin (the user's web sessions end)."""
    from sooner.store.users import Role

    ended = app.store.users.set_role(name, Role(role))
    click.echo(f"{name} is now {role} ({_sessions_ended(ended)})")


def _sessions_ended(count: int) -> str:
    return f"{count} web session{'' if count == 1 else 's'} ended"


@main.group("token")
def token_group() -> None:
    """Manage API tokens for the REST API (Authorization: Bearer TOKEN)."""


@token_group.command("create")
@click.argument("user")
@click.option("--name", default="", help="What the token is for.")
@click.option("--scope", type=click.Choice(["read", "run", "admin"]), default="admin", show_default=True,
              help="read: GET only; run: also start/cancel runs and emit events; admin: all USER's role allows.")
@click.option("--job", "job_glob", metavar="GLOB", help="Scope run only: the jobs it may act on ('reports/*').")
@click.option("--expires", metavar="DURATION", help="Expire after this long: 30m, 12h, 90d, 2w (default: never).")
@pass_app
def token_create(app: AppContext, user: str, name: str, scope: str, job_glob: str | None,
                 expires: str | None) -> None:
    """Create a token acting as USER; it is printed once, only its hash is kept."""
    from sooner.model.token import TokenScope, parse_expiry

    token, document = app.store.tokens.create(user, name, scope=TokenScope(scope), job_glob=job_glob,
                                              expires_in=parse_expiry(expires) if expires is not None else None)
    click.echo(token)
    click.echo(f"(token {document['_id']} for {user}: store it now, it is not shown again)", err=True)


@token_group.command("list")
@click.argument("user_arg", metavar="[USER]", required=False)
@click.option("--user", help="Only this user's tokens (the same as USER).")
@pass_app
def token_list(app: AppContext, user_arg: str | None, user: str | None) -> None:
    """List tokens (ids, never the secrets), with scope, expiry and last use."""
    tokens = app.store.tokens.list(user_arg or user)
    echo_table(["id", "user", "name", "scope", "expires", "created", "last used", "from"],
               [[t["_id"], t["user"], t.get("name"), (t.get("scope") or "admin") + (f" {t['job']}" if t.get("job") else ""),
                 t["expires_at"].strftime("%Y-%m-%d %H:%M") if t.get("expires_at") else "never",
                 ago(t.get("created_at")), ago(t.get("last_used_at")), t.get("last_used_address") or "-"]
                for t in tokens], "no API tokens")


@token_group.command("revoke")
@click.argument("token_id")
@pass_app
def token_revoke(app: AppContext, token_id: str) -> None:
    """Delete a token by id; clients using it get 401 within web_token_cache_s (10 s)."""
    app.store.tokens.revoke(token_id)
    click.echo(f"revoked {token_id}")
