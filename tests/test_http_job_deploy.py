"""End to end: `git push` of ``*.http.json`` files into a site made by `sooner init`; the real hooks deploy or refuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import git, run_sooner
from test_http_runner import Server
from test_push import add_script, commit_and_push, head, jobs_of, set_config

from sooner.clock import SYSTEM_CLOCK
from sooner.model.http_job import JobKind

VALID = {"description": "ping the API", "steps": [
    {"name": "ping", "method": "GET", "url": "https://api.example.com/ping",
     "headers": {"Authorization": "Bearer ${secret:API_TOKEN}"}},
    {"name": "report", "method": "POST", "url": "https://api.example.com/report", "body": {"ok": True},
     "retry_exponent": 2},
]}


def add_document(clone, path: str, document) -> None:
    target = clone / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document if isinstance(document, str) else json.dumps(document, indent=2))
    target.chmod(0o644)


def test_a_pushed_http_document_becomes_a_disabled_http_job(site, clone):
    # given a regular (not executable) file named *.http.json beside a script
    add_document(clone, "api/ping.http.json", VALID)
    add_script(clone, "hello.sh")
    # when it is pushed
    output = commit_and_push(clone)
    # then both are jobs, of their kinds
    assert "remote: sooner: created job api/ping.http.json (disabled)" in output
    assert f"remote: sooner: deployed {head(clone)[:7]} (2 created" in output
    jobs = jobs_of(site)
    assert jobs["api/ping.http.json"].kind is JobKind.HTTP and not jobs["api/ping.http.json"].enabled
    assert jobs["hello.sh"].kind is JobKind.SCRIPT


def test_an_invalid_http_document_is_refused_with_each_problem_and_where(site, clone):
    # given a deployed site, then a push of a document with a bad method, an unknown field and a duplicate name
    add_script(clone, "hello.sh")
    commit_and_push(clone)
    before = head(clone)
    bad = {"steps": [{"name": "a", "url": "https://x.example/"},
                     {"name": "a", "method": "FETCH", "url": "https://x.example/", "retries": 3}]}
    add_document(clone, "api/bad.http.json", bad)
    # when it is pushed
    output = commit_and_push(clone)
    # then the push is rejected, saying exactly what is wrong and where
    assert "remote: sooner: push rejected: cannot deploy" in output
    assert "HTTP job 'api/bad.http.json': steps[1].method: must be one of GET, PUT, POST, DELETE, PATCH, got 'FETCH'" \
        in output
    assert "HTTP job 'api/bad.http.json': steps[1].retries: unknown field" in output
    assert "HTTP job 'api/bad.http.json': steps[1].name: 'a' is the name of steps[0] already" in output
    assert "[remote rejected]" in output
    # and nothing was deployed: the branch did not move and no job was created
    assert git("ls-remote", "origin", "main", cwd=clone).stdout.split()[0] == before
    assert "api/bad.http.json" not in jobs_of(site)


def test_invalid_json_is_refused_with_its_line_and_column(site, clone):
    add_document(clone, "broken.http.json", '{"steps": [\n  {"name": "x",}\n]}')
    output = commit_and_push(clone)
    assert "HTTP job 'broken.http.json': invalid JSON at line 2 column 16" in output
    assert jobs_of(site) == {}


def test_a_host_not_allowed_is_not_a_deploy_error(site, clone):
    # the allow-list is the worker's setting, checked when the run calls out
    add_document(clone, "far.http.json", {"steps": [{"name": "x", "url": "https://not-allowed.example/"}]})
    output = commit_and_push(clone)
    assert "remote: sooner: created job far.http.json (disabled)" in output


def test_job_show_lists_the_kind_and_steps_without_secrets(site, clone):
    add_document(clone, "api/ping.http.json", VALID)
    commit_and_push(clone)
    result = run_sooner("job", "show", "api/ping.http.json", cwd=site)
    assert result.returncode == 0, result.stderr
    assert "kind:      http" in result.stdout
    assert "1. ping: GET https://api.example.com/ping" in result.stdout
    assert "2. report: POST https://api.example.com/report" in result.stdout
    assert "waits 1+4+9+16s" in result.stdout


def test_a_real_worker_runs_a_pushed_http_job_retrying_then_poison(site, clone):
    # given a local server that fails twice then answers, a pushed job calling it, and a site that allows it
    server = Server(SYSTEM_CLOCK)
    server.answers = [(503, {}, b"busy"), (503, {}, b"busy"), (200, {}, b"pong ${SECRET} s3cr3t")]
    set_config(site, http_allow=["127.0.0.1"], http_secrets={"TOKEN": "s3cr3t"})
    add_document(clone, "api/ping.http.json", {"retry_base_s": 0.05, "steps": [
        {"name": "ping", "url": server.url("/ping"), "headers": {"X-Token": "${secret:TOKEN}"}}]})
    add_document(clone, "api/dead.http.json", {"retry_base_s": 0.05, "steps": [
        {"name": "never", "url": server.url("/dead"), "attempts": 2}]})
    commit_and_push(clone)
    env = {**os.environ, "SOONER_CONFIG": str(site / "config.json")}
    worker = subprocess.Popen([sys.executable, "-m", "sooner", "worker", "-n", "w1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "ready" in worker.stdout.readline()
        # when the first job runs
        ok = run_sooner("run", "api/ping.http.json", "--follow", cwd=site, timeout=60)
        # then it succeeded on the third attempt, the secret was sent and never shown
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert [r["headers"]["X-Token"] for r in server.requests] == ["s3cr3t"] * 3
        assert "s3cr3t" not in ok.stdout + ok.stderr and "pong ${SECRET} ***" in ok.stdout
        assert ok.stdout.count("< 503 Service Unavailable") == 2 and "< 200 OK" in ok.stdout
        # when the other one runs: the server now fails for good
        server.answers = [(500, {}, b"down")]
        dead = run_sooner("run", "api/dead.http.json", "--follow", cwd=site, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
        server.close()
    # then it is poison, exits 1, and is on the poison list
    assert dead.returncode == 1, dead.stdout + dead.stderr
    listed = run_sooner("runs", "--poison", cwd=site)
    assert "api/dead.http.json#1" in listed.stdout and "failed 2 times, last: HTTP 500" in listed.stdout
