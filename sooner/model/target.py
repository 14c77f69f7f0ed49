"""Where a run may go: the forms of a run's ``target`` and the one rule for which workers serve it.

A run's ``target`` is one of:

* ``None``: any worker (and for :meth:`RunService.queue`: the job's ``worker`` setting applies);
* ``*``: any worker, whatever the job's setting (``sooner move --any``: a new attempt queued for a
  relocation, or a retry of a moved run, keeps going to any worker);
* ``NAME``: the worker named NAME or any worker tagged NAME (the job's ``worker`` setting and
  ``sooner run --worker`` give this form: names and tags share one namespace there);
* ``worker:NAME``: only the worker named NAME (``sooner move --worker``);
* ``tag:TAG``: only workers tagged TAG (``sooner move --tag``).

Worker names and tags never contain ``:`` (:func:`~sooner.model.job_settings.validate_worker_name`),
so the prefixed forms cannot be mistaken for a name. A claim asks for runs whose target is one
of :func:`served_targets`, so the store query and :meth:`Worker.serves` agree by construction.
"""

from __future__ import annotations

from collections.abc import Iterable

from sooner.model.job_settings import validate_worker_name

WORKER_PREFIX = "worker:"
TAG_PREFIX = "tag:"
ANY_WORKER = "*"


def worker_target(name: str, where: str = "worker") -> str:
    """The target of exactly the worker ``name`` (validated; ``where`` starts the error message)."""
    return WORKER_PREFIX + validate_worker_name(name, where, "worker name")


def tag_target(tag: str, where: str = "tag") -> str:
    """The target of every worker carrying ``tag`` (validated; ``where`` starts the error message)."""
    return TAG_PREFIX + validate_worker_name(tag, where, "tag")


def served_targets(name: str, tags: Iterable[str]) -> list[str | None]:
    """Every target value a worker called ``name`` with ``tags`` may take runs of (None = untargeted)."""
    tags = list(tags)
    return [None, ANY_WORKER, name, WORKER_PREFIX + name, *tags, *(TAG_PREFIX + tag for tag in tags)]


def describe_target(target: str | None) -> str:
    """The target in words: ``any worker``, ``worker 'b'``, ``tag 'gpu'`` or ``worker or tag 'gpu'``."""
    if target is None or target == ANY_WORKER:
        return "any worker"
    if target.startswith(WORKER_PREFIX):
        return f"worker {target[len(WORKER_PREFIX):]!r}"
    if target.startswith(TAG_PREFIX):
        return f"tag {target[len(TAG_PREFIX):]!r}"
    return f"worker or tag {target!r}"


def matching(target: str | None) -> str:
    """How workers that serve ``target`` are called in a sentence: ``named 'b' ``, ``tagged 'gpu' `` …"""
    if target is None or target == ANY_WORKER:
        return ""
    if target.startswith(WORKER_PREFIX):
        return f"named {target[len(WORKER_PREFIX):]!r} "
    if target.startswith(TAG_PREFIX):
        return f"tagged {target[len(TAG_PREFIX):]!r} "
    return f"named or tagged {target!r} "
