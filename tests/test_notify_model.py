"""The notification model: rules users type, which events a run's end is, labels without secrets, signing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sooner.model import ManualTrigger, Run, RunStatus
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.model.job import Job
from sooner.model.notify import (InvalidNotifyRule, NotifyEvent, notifications_for, parse_rules, run_events,
                                 run_message, target_label, webhook_request)
from sooner.model.webhook import Hook, read_delivery

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def a_run(status: RunStatus, **fields) -> Run:
    return Run(id="65a1" + "0" * 20, job="hello.sh", number=42, status=status, trigger=ManualTrigger(),
               started_at=NOW - timedelta(seconds=3), finished_at=NOW, **fields)


def test_rules_are_read_from_json_text_and_lists_and_bad_ones_say_where():
    rules = parse_rules('[{"on": ["failure", "recovery"], "to": ["json://127.0.0.1:9/x"]}]')
    assert rules[0].on == (NotifyEvent.FAILURE, NotifyEvent.RECOVERY)
    assert parse_rules("") == ()
    with pytest.raises(InvalidNotifyRule, match=r"notify\[0\]\.on\[0\]: 'fail' is not one of"):
        parse_rules([{"on": ["fail"], "to": ["json://h/x"]}])
    with pytest.raises(InvalidNotifyRule, match=r"notify\[1\]\.to\[0\]: .*not a URL apprise can notify"):
        parse_rules([{"on": "success", "to": "json://h/x"}, {"on": ["success"], "to": ["nosuch://x"]}])
    with pytest.raises(InvalidNotifyRule, match="unknown key 'jobs'"):
        parse_rules([{"on": ["success"], "to": ["json://h/x"], "jobs": "*"}])  # only site rules have jobs
    assert parse_rules([{"on": ["missed"], "to": ["webhook+https://h/x"], "jobs": "r/*"}], site=True)[0].jobs == "r/*"
    with pytest.raises(InvalidNotifyRule, match="webhook\\+https://host/path"):
        parse_rules([{"on": ["success"], "to": ["webhook+ftp://h/x"]}])
    with pytest.raises(InvalidNotifyRule, match="not JSON"):
        parse_rules("[{")


def test_a_job_setting_goes_through_the_rules_and_names_the_setting():
    job = Job("hello.sh")
    changes = settings_changes(job, {"notify": '[{"on": ["failure"], "to": ["json://127.0.0.1:9/x"]}]'})
    assert changes == {"notify": [{"on": ["failure"], "to": ["json://127.0.0.1:9/x"]}]}
    assert Job.from_doc({"_id": "hello.sh", **changes}).notify_rules()[0].to == ("json://127.0.0.1:9/x",)
    assert settings_changes(job, {"notify": "[]"}) == {"notify": []}
    with pytest.raises(InvalidJobSetting, match=r"^notify: rule\[0\]\.to: must be a non-empty list"):
        settings_changes(job, {"notify": [{"on": ["failure"], "to": []}]})


def test_labels_hide_passwords_tokens_and_queries():
    assert "secret" not in target_label("mailto://user:secret@example.com")
    slack = target_label("slack://TokenAAAA/TokenBBBB/TokenCCCC/#ops")
    assert "TokenBBBB" not in slack and slack.startswith("slack://")
    assert target_label("webhook+https://u:pw@hooks.example.com/in?token=abc") == \
        "webhook+https://***@hooks.example.com/in"
    assert "abc" not in target_label("json://example.com/path?token=abc")


def test_a_failure_notifies_only_when_no_retry_follows_and_a_success_after_a_failure_is_a_recovery():
    assert run_events(a_run(RunStatus.FAILED), retried=False, previous=None) == [NotifyEvent.FAILURE]
    assert run_events(a_run(RunStatus.TIMED_OUT), retried=True, previous=None) == []
    assert run_events(a_run(RunStatus.SUCCEEDED), retried=False, previous=RunStatus.LOST) == \
        [NotifyEvent.RECOVERY, NotifyEvent.SUCCESS]
    assert run_events(a_run(RunStatus.SUCCEEDED), retried=False, previous=RunStatus.SUCCEEDED) == \
        [NotifyEvent.SUCCESS]
    assert run_events(a_run(RunStatus.CANCELLED), retried=False, previous=None) == []


def test_one_entry_per_target_with_the_first_matching_event_and_ids_that_repeat():
    rules = parse_rules([{"on": ["success"], "to": ["json://a/x", "json://b/x"]},
                         {"on": ["recovery"], "to": ["json://a/x"]}])
    run = a_run(RunStatus.SUCCEEDED)

    def make() -> list:
        return notifications_for([NotifyEvent.RECOVERY, NotifyEvent.SUCCESS], run.job, rules,
                                 lambda event: run_message(event, run, now=NOW, public_url="https://s.example"),
                                 base_id=run.id, run=run.id, now=NOW)
    entries = make()
    assert [(e.target, e.event) for e in entries] == [("json://a/x", NotifyEvent.RECOVERY),
                                                      ("json://b/x", NotifyEvent.SUCCESS)]
    assert [e.id for e in entries] == [e.id for e in make()]
    assert entries[0].message.title == "hello.sh#42 recovered"
    assert f"https://s.example/runs/{run.id}" in entries[0].message.body
    assert "Duration: 3.0 s" in entries[0].message.body


def test_a_signed_webhook_verifies_with_the_standard_webhooks_verifier_of_incoming_hooks():
    # given a message signed for a webhook+ target
    message = run_message(NotifyEvent.FAILURE, a_run(RunStatus.FAILED, exit_code=3), now=NOW, public_url=None)
    url, headers, body = webhook_request("webhook+https://example.com/in", SECRET, message, msg_id="msg_1", now=NOW)
    assert url == "https://example.com/in"
    # when the repo's own verifier reads it, then it is accepted
    hook = Hook(name="h", provider="standard", job="j", secret=SECRET)
    delivery = read_delivery(hook, headers, body, now=NOW)
    assert delivery.id == "msg_1" and delivery.event == "sooner.failure"
    assert delivery.payload["data"]["exit_code"] == 3
    # and a changed body is refused
    with pytest.raises(Exception, match="no v1 webhook-signature"):
        read_delivery(hook, headers, body.replace(b"failure", b"success"), now=NOW)
