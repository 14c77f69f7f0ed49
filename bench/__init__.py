"""Benchmarks for people, not tests (``python -m bench`` runs the suite; see ``bench/__main__.py``).

This package holds the suite's one figure protocol. A bench run with
``--json`` prints one JSON line per figure, made by :func:`figure`; the
suite reads every line that starts with ``{"figure"`` and ignores the rest.
A bench is still a plain script (``python bench/runtime.py``), and the
package is not shipped in the wheel (``[tool.setuptools] packages`` lists
only ``sooner.*``).
"""

from __future__ import annotations

import json
import math
import operator
import sys
from typing import Any

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_printing = False  # set by use_json(): benches call figure() always, and it prints only in --json mode


def use_json(on: bool) -> None:
    """Make :func:`figure` print its JSON lines (a bench calls this with its ``--json`` flag)."""
    global _printing
    _printing = on


def met(target: str | None, value: float | None, ratio: float | None) -> bool | None:
    """Whether ``target`` holds: ``">= 100"`` tests the value, ``"ratio >= 0.5"`` the ratio; None if unknown.

    A leading name other than ``ratio`` (``"p95 < 250 ms"``) names the value.
    A target in any other form is text for people only (None).
    """
    if not target:
        return None
    words = target.split()
    subject = value
    if words and words[0] == "ratio":
        subject, words = ratio, words[1:]
    elif len(words) >= 3 and words[0] not in _OPS and words[1] in _OPS:
        words = words[1:]
    if len(words) < 2 or words[0] not in _OPS or subject is None or math.isnan(subject):
        return None
    try:
        bound = float(words[1].replace(",", ""))
    except ValueError:
        return None
    return bool(_OPS[words[0]](subject, bound))


def make_figure(name: str, value: float | None, unit: str, *, baseline: str | None = None,
                baseline_value: float | None = None, target: str | None = None, key: str | None = None,
                note: str | None = None, baseline_unit: str | None = None) -> dict[str, Any]:
    """One figure as the suite reads it; ``ratio`` is ``value / baseline_value``, ``met`` from :func:`met`.

    ``key`` names the figure for the suite's cross-bench rows
    (``bench/__main__.py``); it defaults to ``name``. ``baseline_unit``
    defaults to ``unit``.
    """
    ratio = value / baseline_value if value is not None and baseline_value else None
    return {"figure": name, "key": key or name, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "baseline_unit": baseline_unit or unit, "ratio": ratio,
            "target": target, "met": met(target, value, ratio), "note": note}


def figure(name: str, value: float | None, unit: str, *, out: Any = None, **details: Any) -> dict[str, Any]:
    """:func:`make_figure`, printed as one JSON line (to ``out``, default stdout) in ``--json`` mode."""
    line = make_figure(name, value, unit, **details)
    if _printing:
        print(json.dumps(line), file=out or sys.stdout, flush=True)
    return line
