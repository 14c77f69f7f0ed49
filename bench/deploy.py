"""Benchmark: deploying 1,000 scripts by `git push` (not a test; prints figures).

Makes a temporary site with `sooner.site.init_site`, commits N executable
scripts with the real git CLI in a clone and pushes them (the pre-receive and
post-update hooks really run), then changes 10 scripts and pushes again.

Figures:
- deploy: the time `sooner deploy` reports for itself (connect, check every
  path, store objects, working copy, jobs, deploy record) — targets: first
  deploy < 2 s, incremental < 0.3 s;
- push: wall time of the whole `git push` into the site, hooks included
  (two Python process starts);
- baseline: the same `git push` into a plain bare repository without hooks,
  and the ratio Sooner/baseline.

The embedded database is started before the first push (its start-up is
printed on its own), so the deploy figures are the deploy's own work. The
whole run is repeated on fresh sites and medians are printed, because a
shared 2-CPU machine is noisy.

    python bench/deploy.py [--scripts 1000] [--folders 20] [--changed 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sooner.site import init_site
from sooner.store import open_store
from sooner.store.embedded import EmbeddedServer

ELAPSED = re.compile(r"sooner: deployed \w+ \((\d+) created, (\d+) updated.*\) in ([\d.]+)s")
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def timed_push(clone: Path, remote: str) -> tuple[float, str]:
    started = time.perf_counter()
    output = git("push", "-q", remote, "main", cwd=clone)
    return time.perf_counter() - started, output


def write_scripts(clone: Path, count: int, folders: int, version: int, only: int | None = None) -> None:
    for i in range(count if only is None else only):
        path = clone / f"folder{i % folders:02d}" / f"script{i:04d}.sh"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\n# script {i}, version {version}\necho 'hello from {i}'\n")
        path.chmod(0o755)


def deploy_figures(output: str) -> tuple[int, int, float]:
    match = ELAPSED.search(output)
    if not match:
        sys.exit(f"no deploy summary in the push output:\n{output}")
    return int(match.group(1)), int(match.group(2)), float(match.group(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripts", type=int, default=1000)
    parser.add_argument("--folders", type=int, default=20)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="fresh sites to measure (medians are printed)")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="sooner-bench-") as tmp:
            root = Path(tmp)
            settings = init_site(root / "site")
            started = time.perf_counter()
            open_store(settings).close()
            db_start = time.perf_counter() - started
            try:
                runs.append({"db_start": db_start, **measure(root, settings, args)})
            finally:
                EmbeddedServer(settings.state_dir).stop()
    report(runs, args)


def measure(root: Path, settings, args: argparse.Namespace) -> dict[str, float]:
    plain = root / "plain.git"
    git("init", "-q", "--bare", str(plain), cwd=root)
    clone = root / "clone"
    git("clone", "-q", str(settings.repo_path), str(clone), cwd=root)
    git("checkout", "-q", "-B", "main", cwd=clone)
    write_scripts(clone, args.scripts, args.folders, version=1)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", f"{args.scripts} scripts", cwd=clone)
    figures = {"base_first": timed_push(clone, str(plain))[0]}
    figures["push_first"], output = timed_push(clone, "origin")
    created, _, figures["deploy_first"] = deploy_figures(output)
    assert created == args.scripts, output

    write_scripts(clone, args.scripts, args.folders, version=2, only=args.changed)
    git("commit", "-q", "-am", f"change {args.changed} scripts", cwd=clone)
    figures["base_incr"] = timed_push(clone, str(plain))[0]
    figures["push_incr"], output = timed_push(clone, "origin")
    _, updated, figures["deploy_incr"] = deploy_figures(output)
    assert updated == args.changed, output

    started = time.perf_counter()
    again = subprocess.run([sys.executable, "-m", "sooner", "deploy"], cwd=settings.working_copy_path,
                           capture_output=True, text=True)
    figures["redeploy"] = time.perf_counter() - started
    assert "already deployed" in again.stdout, again.stdout + again.stderr
    return figures


def report(runs: list[dict[str, float]], args: argparse.Namespace) -> None:
    m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    best = {key: min(run[key] for run in runs) for key in runs[0]}
    print(f"Sooner deploy benchmark: {args.scripts} executable scripts in {args.folders} folders, "
          f"{os.cpu_count()} CPUs, embedded database (nx-27017); median of {len(runs)} fresh sites (best)")
    print(f"  embedded database start (once per site, before the pushes): {m['db_start']:.2f}s")
    print()
    print(f"  {'':30}{'deploy':>16}{'jobs/s':>9}{'push':>9}{'baseline':>10}{'ratio':>8}")
    row = "  {:30}{:>7.3f}s ({:.3f}s){:>9}{:>8.2f}s{:>9.3f}s{:>7.1f}x"
    print(row.format(f"first push ({args.scripts} created)", m["deploy_first"], best["deploy_first"],
                     f"{args.scripts / m['deploy_first']:,.0f}", m["push_first"], m["base_first"],
                     m["push_first"] / m["base_first"]))
    print(row.format(f"incremental ({args.changed} updated)", m["deploy_incr"], best["deploy_incr"],
                     f"{args.changed / m['deploy_incr']:,.0f}", m["push_incr"], m["base_incr"],
                     m["push_incr"] / m["base_incr"]))
    print(f"  {'by hand, same commit again':30}{'':16}{'':9}{m['redeploy']:>8.2f}s  (whole `sooner deploy` "
          "command, process start included)")
    print()
    print("  deploy   = time `sooner deploy` reports for itself (targets: first < 2 s, incremental < 0.3 s)")
    print("  push     = wall time of `git push` into the site, both hooks (two Python processes) included")
    print("  baseline = the same `git push` into a plain bare repository without hooks; ratio = push / baseline")
    print(f"  deploy / baseline: first {m['deploy_first'] / m['base_first']:.1f}x, "
          f"incremental {m['deploy_incr'] / m['base_incr']:.1f}x")


if __name__ == "__main__":
    main()
