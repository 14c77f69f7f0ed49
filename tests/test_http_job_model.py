"""The HTTP job model: documents and their errors (with JSON paths), the retry delay rule, secrets, the allow-list."""

from __future__ import annotations

import json

import pytest

from sooner.config import load_settings
from sooner.errors import ConfigError
from sooner.model import Job, RunStatus
from sooner.model.http_job import (AllowList, HttpMethod, InvalidHttpJob, JobKind, MissingSecret, check_allow_pattern,
                                   parse_http_job, redact, resolve_body, resolve_secrets, step_delay)


def problems_of(doc) -> list[str]:
    with pytest.raises(InvalidHttpJob) as caught:
        parse_http_job(doc if isinstance(doc, (str, bytes)) else json.dumps(doc))
    return caught.value.problems


def test_a_valid_document_gets_the_defaults():
    spec = parse_http_job(json.dumps({"steps": [{"name": "ping", "url": "https://api.example.com/ping"}]}))
    (step,) = spec.steps
    assert step.method is HttpMethod.GET
    assert (step.timeout_s, step.retry_exponent, step.attempts) == (30.0, 1.0, 5)
    assert step.delays() == [1.0, 2.0, 3.0, 4.0]
    assert spec.retry_base_s == 1.0


@pytest.mark.parametrize(("exponent", "total_s"), [(2, 30.0), (2.5, 54.2), (3, 100.0)])
def test_seed_002_exponents_give_poison_after_about_35_s_a_minute_and_almost_two_minutes(exponent, total_s):
    waits = [step_delay(attempt, exponent) for attempt in range(1, 5)]
    assert sum(waits) == pytest.approx(total_s, abs=0.1)
    assert step_delay(3, 2, base_s=0.5) == 4.5


def test_every_problem_is_reported_with_its_json_path():
    problems = problems_of({"steps": [
        {"name": "a", "url": "https://x.example/"},
        {"name": "b", "method": "FETCH", "url": "ftp://x.example/", "retry": 3},
        {"name": "a", "url": "https://x.example/", "timeout_s": 0, "attempts": 0, "headers": {"bad name": "x"}},
    ], "extra": 1})
    assert "extra: unknown field (known: description, retry_base_s, steps)" in problems
    assert "steps[1].method: must be one of GET, PUT, POST, DELETE, PATCH, got 'FETCH'" in problems
    assert "steps[1].url: must start with http:// or https://, got 'ftp://x.example/'" in problems
    assert any(p.startswith("steps[1].retry: unknown field") for p in problems)
    assert "steps[2].timeout_s: must be a number more than 0 and at most 3600, got 0" in problems
    assert "steps[2].attempts: must be a whole number from 1 to 100, got 0" in problems
    assert "steps[2].headers: 'bad name' is not a valid header name" in problems


def test_duplicate_step_names_are_refused():
    problems = problems_of({"steps": [{"name": "a", "url": "http://h/"}, {"name": "a", "url": "http://h/"}]})
    assert problems == ["steps[1].name: 'a' is the name of steps[0] already; step names must be unique"]


@pytest.mark.parametrize(("doc", "expected"), [
    ("{", "invalid JSON at line 1 column 2"),
    (b"\xff", "not UTF-8 text"),
    ("[]", 'must be a JSON object with "steps", got a list'),
    ('{"steps": []}', "steps: must be a list of 1 to 100 steps, got a list"),
    ('{"steps": [1]}', "steps[0]: must be an object with name, method and url, got a number"),
    ('{"steps": [{"name": "x", "url": "http:///nohost"}]}', "steps[0].url: has no host"),
    ('{"steps": [{"name": "x", "url": "http://h:99999/"}]}', "steps[0].url: is not a valid URL"),
    ('{"steps": [{"name": "x", "url": "http://h/${env:HOME}"}]}', "steps[0].url: '${env:HOME}' is not a placeholder"),
    ('{"steps": [{"name": "x", "url": "http://h/", "body": {"k": "${oops}"}}]}', "steps[0].body: '${oops}'"),
    ('{"steps": [{"name": "", "url": "http://h/"}]}', "steps[0].name: must be 1-100 letters"),
])
def test_malformed_documents_say_what_is_wrong(doc, expected):
    assert any(p.startswith(expected) for p in problems_of(doc)), problems_of(doc)


def test_secrets_are_resolved_and_redacted():
    secrets = {"TOKEN": "abc123", "USER": "me"}
    assert resolve_secrets("Bearer ${secret:TOKEN}", secrets) == "Bearer abc123"
    assert resolve_body({"u": "${secret:USER}", "n": [1, "${secret:TOKEN}"]}, secrets) == {"u": "me", "n": [1, "abc123"]}
    assert redact("got abc123 for me", secrets) == "got *** for ***"
    with pytest.raises(MissingSecret, match="secrets A, B not in the http_secrets setting"):
        resolve_secrets("${secret:B}${secret:A}", secrets)


@pytest.mark.parametrize(("patterns", "url", "allowed"), [
    ((), "http://127.0.0.1/", False),
    (("127.0.0.1",), "http://127.0.0.1:8080/x", True),
    (("127.0.0.1:8080",), "http://127.0.0.1:8080/x", True),
    (("127.0.0.1:8080",), "http://127.0.0.1:8081/x", False),
    (("api.example.com:443",), "https://API.example.com/", True),
    (("api.example.com:443",), "http://api.example.com/", False),
    (("*.internal",), "http://a.b.internal/", True),
    (("*.internal",), "http://internal/", False),
    (("*.internal",), "http://evilinternal/", False),
    (("[::1]:8080",), "http://[::1]:8080/", True),
    (("*",), "https://anything.example/", True),
    (("*",), "ftp://anything.example/", False),
])
def test_the_allow_list(patterns, url, allowed):
    assert AllowList(patterns).allows(url) is allowed


def test_a_refusal_names_the_setting():
    text = AllowList(()).refusal("http://10.0.0.1:81/x")
    assert "host 10.0.0.1:81 is not in the http_allow setting, which allows nothing (it is empty)" in text


@pytest.mark.parametrize("pattern", ["", "a/b", "*.*.x", "a*.x", "h:0", "h:http", 5])
def test_bad_allow_patterns_are_refused(pattern):
    assert check_allow_pattern(pattern) is not None


def test_settings_check_the_allow_list_and_secrets_and_never_show_secret_values(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"http_allow": ["ok.example", "a/b"]}))
    with pytest.raises(ConfigError, match=r"http_allow.*entry 1"):
        load_settings(config, environ={})
    config.write_text(json.dumps({"http_secrets": {"TOKEN": 5}}))
    with pytest.raises(ConfigError, match="http_secrets"):
        load_settings(config, environ={})
    settings = load_settings(None, environ={"SOONER_HTTP_SECRETS": '{"TOKEN": "hunter2"}',
                                            "SOONER_HTTP_ALLOW": "a.example, b.example:8080"})
    assert settings.http_allow == ("a.example", "b.example:8080")
    assert settings.http_secrets == {"TOKEN": "hunter2"}
    assert "hunter2" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"SOONER_HTTP_SECRETS": '{"bad name": "hunter2"}'})
    assert "hunter2" not in str(caught.value)


def test_a_job_knows_its_kind_from_its_name_or_document():
    assert JobKind.of("api/ping.http.json") is JobKind.HTTP
    assert JobKind.of("ping.json") is JobKind.SCRIPT
    assert Job.from_doc({"_id": "api/ping.http.json"}).kind is JobKind.HTTP
    assert Job.from_doc({"_id": "hello.sh"}).kind is JobKind.SCRIPT
    assert Job.from_doc({"_id": "hello.sh"}).to_doc()["kind"] == "script"


def test_poison_is_an_unsuccessful_end_that_the_retry_policy_leaves_alone():
    assert RunStatus.POISON.finished and RunStatus.POISON.unsuccessful
    assert not RunStatus.POISON.failed  # the job's retry policy applies to failed runs only
    assert RunStatus.POISON.outcome == "failed"
