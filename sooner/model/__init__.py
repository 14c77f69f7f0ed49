"""Sooner's model: small typed values for jobs, runs, triggers and workers, and the words for their states.

Repositories in :mod:`sooner.store` turn documents into these with
``from_doc`` and back with ``to_doc``; the stored layout is the documented
one (docs/architecture.md). Status and policy values are spelled only here.
"""

from sooner.model.job import JOB_DEFAULTS, Job, RetryPolicy
from sooner.model.run import Progress, Run
from sooner.model.status import ACTIVE, BUSY, FAILED_KINDS, FINISHED, Missed, Overlap, RunStatus, WorkerHealth
from sooner.model.trigger import (ApiTrigger, CronTrigger, EventTrigger, ManualTrigger, OtherTrigger, RelocateTrigger,
                                  RetryTrigger, Trigger, trigger_from_doc, trigger_kind)
from sooner.model.worker import Worker, late_after_s

__all__ = [
    "ACTIVE", "BUSY", "FAILED_KINDS", "FINISHED", "JOB_DEFAULTS", "ApiTrigger", "CronTrigger", "EventTrigger", "Job",
    "ManualTrigger", "Missed", "OtherTrigger", "Overlap", "Progress", "RelocateTrigger", "RetryPolicy", "RetryTrigger",
    "Run", "RunStatus", "Trigger", "Worker", "WorkerHealth", "late_after_s", "trigger_from_doc", "trigger_kind",
]
