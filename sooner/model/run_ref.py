"""How people name a run: its job's run number (``hello.sh#42``) beside the full id.

A run id is an ObjectId: unique, but ids made close together differ only in
their last characters, and a prefix that looks unique today is not tomorrow.
So every run gets a number per job when it is inserted (``number``, see
:mod:`sooner.store.counters`), and ``JOB#N`` is the one short form the UI,
the CLI, the API and notes show. What a person may type wherever a run is
asked for (:func:`parse_run_ref`; :meth:`sooner.store.runs.RunRepo.get`
looks it up):

* the full id;
* ``JOB#N``, or ``JOB:N`` (nothing to quote in any shell or URL);
* for older habits, at least :data:`MIN_PARTIAL_ID` hex characters from the
  start of an id (what the CLI printed) or from its end (what the UI showed),
  when exactly one run matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A number reference: everything up to the last separator is the job (job paths may hold '#' or ':').
_NUMBERED = re.compile(r"(?P<job>.+)[#:](?P<number>[0-9]{1,18})", re.DOTALL)
_HEX = re.compile(r"[0-9a-f]+")
ID_LENGTH = 24
MIN_PARTIAL_ID = 6
FORMS = (f"a run id, JOB#N such as hello.sh#42 (or JOB:N), or {MIN_PARTIAL_ID}+ characters "
         f"from the start or end of an id")


def run_label(job: str, number: int | None, run_id: str) -> str:
    """The short form of a run: ``hello.sh#42``; its id when it has no number (stored before numbers)."""
    return f"{job}#{number}" if number is not None else run_id


@dataclass(frozen=True)
class RunRef:
    """What a typed run reference may mean; the store tries :attr:`text` as an id first.

    ``job``/``number`` are set for ``JOB#N``/``JOB:N``; ``partial`` (lower-case hex, shorter
    than an id) is matched against the start and the end of ids.
    """

    text: str
    job: str | None = None
    number: int | None = None
    partial: str | None = None


def parse_run_ref(text: str) -> RunRef:
    """Read what someone typed for a run (see the module docstring); never fails, the lookup may."""
    text = text.strip()
    numbered = _NUMBERED.fullmatch(text)
    if numbered and int(numbered["number"]) > 0:
        return RunRef(text, job=numbered["job"], number=int(numbered["number"]))
    lowered = text.lower()
    if MIN_PARTIAL_ID <= len(lowered) < ID_LENGTH and _HEX.fullmatch(lowered):
        return RunRef(text, partial=lowered)
    return RunRef(text)
