"""The README tour, followed verbatim from a fresh clone, leaves the clone clean; no site lands where git tracks it.

The tour's commands are read out of README.md and run in a shell, in a
temporary `git clone` of this checkout (with this checkout's README.md and
.gitignore, as they will be committed), with a home folder of its own. Only
`pip install .` is left out: the test's virtualenv stands in for the one it
builds, and the folders pip leaves behind are checked to be ignored.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, git, run_sooner, wait_for
from sooner.errors import ConfigError
from sooner.site import init_site, unignored_work_tree
from test_up import free_port, http_status

INSTALL = "python3 -m venv .venv && .venv/bin/pip install . && "


def readme_blocks(section: str) -> list[str]:
    """The fenced code blocks of the README section under the heading ``section`` (up to the next heading)."""
    blocks: list[str] = []
    inside, code = False, None
    for line in (ROOT / "README.md").read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if code is not None and inside:
                blocks.append("".join(code))
            code = [] if code is None else None
        elif code is not None:
            code.append(line)
        elif line.startswith("#"):
            inside = line.lstrip("#").strip() == section
    assert blocks, f"README has no code in section {section!r}"
    return blocks


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A clone of this checkout holding its working tree as it is (committed in the clone), and a virtualenv.

    The working tree matters beyond README.md and .gitignore: `python -m
    sooner …` run from the clone imports the clone's own package.
    """
    clone = tmp_path / "checkout"
    git("clone", "-q", str(ROOT), str(clone), cwd=tmp_path)
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout.split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, clone / name
        if source.is_symlink() or source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
        elif not source.exists():
            target.unlink(missing_ok=True)  # deleted in the working tree
    git("add", "-A", cwd=clone)
    git("commit", "-q", "--allow-empty", "-m", "as in the working tree", cwd=clone)
    # What `python3 -m venv .venv && .venv/bin/pip install .` would make, borrowed from the test's virtualenv.
    (clone / ".venv").mkdir()
    (clone / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    return clone


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    (path / ".gitconfig").write_text("[user]\n\tname = Tour Taker\n\temail = tour@example.com\n")
    return path


def tour_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOONER_", "GIT_", "VIRTUAL_ENV"))}
    return {**env, "HOME": str(home), "SOONER_WEB_PORT": str(port)}


def shell(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_the_readme_tour_leaves_the_clone_clean(fresh_clone: Path, home: Path):
    # given the README's first command (without the install, done already)
    first = readme_blocks("Two commands")[0].strip()
    assert first.startswith(INSTALL), first
    port = free_port()
    env = tour_env(home, port)
    up = subprocess.Popen(["bash", "-c", "exec " + first.removeprefix(INSTALL)], cwd=fresh_clone, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: up.poll() is not None or http_status(f"http://127.0.0.1:{port}/login") == 200,
                 timeout=90, message="sooner up to serve the web UI")
        assert up.poll() is None, up.communicate()[0]
        # when the tour and then the server-side edit are followed, command by command, in one terminal
        script = readme_blocks("A five-minute tour")[0] + readme_blocks("Editing scripts on the server")[0]
        tour = shell(script, fresh_clone, env)
        assert tour.returncode == 0, tour.stdout + tour.stderr
        assert "remote: sooner: created job hello.sh (disabled)" in tour.stderr
        assert "done!" in tour.stdout
        assert "sooner: updated job hello.sh" in tour.stdout
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=90)
    assert up.returncode == 0, output
    # then the clone is as clean as before: nothing untracked, nothing ignored but the virtualenv and bytecode
    assert git("status", "--porcelain", cwd=fresh_clone).stdout == ""
    ignored = git("status", "--porcelain", "--ignored", cwd=fresh_clone).stdout.splitlines()
    assert [line for line in ignored if line != "!! .venv/" and not line.endswith("/__pycache__/")] == []
    # and the site and the scripts clone are where the tour said, outside the clone
    assert (home / "sooner-site" / "config.json").is_file() and (home / "sooner-scripts" / "hello.sh").is_file()
    # and what `pip install .` leaves in a checkout is ignored
    ignored = git("check-ignore", "build/lib/sooner/__init__.py", "sooner.egg-info/PKG-INFO", cwd=fresh_clone)
    assert len(ignored.stdout.splitlines()) == 2


def test_no_site_is_created_where_git_add_would_commit_its_secret(fresh_clone: Path, tmp_path: Path):
    inside = fresh_clone / "examples" / "my-site"
    with pytest.raises(ConfigError, match=r"inside the git work tree .*checkout, which does not ignore it.*"
                                          r"'/examples/my-site/'"):
        init_site(inside)
    assert not inside.exists()
    result = run_sooner("init", str(inside), cwd=tmp_path)
    assert result.returncode == 1 and "git add -A" in result.stderr and "Traceback" not in result.stderr
    assert git("status", "--porcelain", cwd=fresh_clone).stdout == ""


def test_a_site_is_fine_where_git_ignores_it_or_outside_any_work_tree(fresh_clone: Path, tmp_path: Path):
    assert unignored_work_tree(fresh_clone / "site") is None  # .gitignore's second line of defence
    init_site(fresh_clone / "site")
    assert git("status", "--porcelain", cwd=fresh_clone).stdout == ""
    assert unignored_work_tree(tmp_path / "elsewhere" / "site") is None
    init_site(tmp_path / "elsewhere" / "site")


def test_up_warns_loudly_about_an_existing_site_git_would_commit(fresh_clone: Path, tmp_path: Path):
    site = tmp_path / "site"
    init_site(site)
    moved = fresh_clone / "examples" / "site"
    shutil.move(site, moved)  # a site that got into a work tree after it was made
    with __import__("socket").socket() as holder:  # a busy port ends `up` right after its checks
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        result = run_sooner("up", str(moved), "--port", str(holder.getsockname()[1]), cwd=tmp_path)
    assert result.returncode == 1
    assert "WARNING: the site" in result.stderr and "does not ignore it" in result.stderr
    assert "'/examples/site/'" in result.stderr
