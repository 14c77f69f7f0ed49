"""Turn a script's stdout/stderr bytes into output text and protocol calls.

Bytes arrive in pieces of any size (a pipe read). They are decoded as UTF-8
incrementally (a character split between two reads stays whole; invalid
bytes become U+FFFD), so binary output is stored, replaced, never fatal.
Stdout is text only. On stderr, a line starting ``>>> sooner.`` is a call:
it is held until its newline (at most ``MAX_LINE_BYTES`` + one read), parsed
against ``on_call``'s method registry, and handed to ``on_call``; it does not
appear in the output. A malformed or refused call stays in the output as an
ordinary stderr line, followed by a system note saying why it was ignored.
Every other byte is passed on as soon as it is read, so memory stays bounded
whatever the line length.
"""

from __future__ import annotations

import codecs
import re
import logging
from typing import Any, Callable

from sooner.errors import ProtocolError
from sooner.worker.methods import METHODS, registry_of
from sooner.worker.output import OutputWriter
from sooner.worker.protocol import MAX_LINE_BYTES, PREFIX, Call, parse_stderr_line

logger = logging.getLogger(__name__)

_PREFIX = PREFIX.encode()
# The common call, `>>> sooner.progress(5, 10)` with whole numbers, skips the general parser. It builds
# what the built-in progress declaration's validate would, so it is used only where that declaration is.
_NUMBER = rb"(0|[1-9][0-9]{0,14})"
_PROGRESS = re.compile(rb">>> sooner\.progress\(" + _NUMBER + rb"(?:, ?" + _NUMBER + rb")?\)\r?\n?")


def _fast_progress(raw: bytes) -> Call | None:
    match = _PROGRESS.fullmatch(raw)
    if match is None:
        return None
    current, maximum = match.group(1), match.group(2)
    if maximum is not None and int(maximum) == 0:
        return None  # the parser explains what is wrong
    return Call("progress", {"current": int(current), "max": int(maximum) if maximum is not None else None})


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class StreamDecoder:
    """Feed it pipe reads with :meth:`stdout` / :meth:`stderr`; call :meth:`close` at the end.

    Calls are parsed against ``on_call``'s ``registry`` (a plain callable gets
    the default :data:`~sooner.worker.methods.METHODS`).
    """

    def __init__(self, output: OutputWriter, on_call: Callable[[Call], Any]) -> None:
        self.output = output
        self.on_call = on_call
        self.registry = registry_of(on_call)
        self._fast = "progress" in self.registry and self.registry.get("progress") is METHODS.get("progress")
        self._out = _decoder()
        self._err = _decoder()
        self._err_at_line_start = True
        self._held: bytearray | None = None  # the start of a stderr line that may be a call

    def stdout(self, data: bytes) -> None:
        self.output.write("stdout", self._out.decode(data))

    def stderr(self, data: bytes) -> None:
        start, end = 0, len(data)
        while start < end:
            newline = data.find(b"\n", start)
            stop = end if newline < 0 else newline + 1
            piece = data[start:stop]
            start = stop
            if self._held is not None:
                self._held += piece
                self._check_held(complete=newline >= 0)
            elif self._err_at_line_start:
                self._held = bytearray(piece)
                self._check_held(complete=newline >= 0)
            else:
                self._err_text(piece)
            self._err_at_line_start = newline >= 0

    def close(self) -> None:
        """End of both streams: a held call without a final newline still counts; decoders flush."""
        if self._held is not None:
            held, self._held = self._held, None
            if held.startswith(_PREFIX):
                self._call(bytes(held))
            else:
                self._err_text(held)
        self.output.write("stdout", self._out.decode(b"", final=True))
        self.output.write("stderr", self._err.decode(b"", final=True))

    def _check_held(self, complete: bool) -> None:
        held = self._held
        assert held is not None
        size = min(len(held), len(_PREFIX))
        if held[:size] != _PREFIX[:size]:
            self._held = None
            self._err_text(held)
        elif complete:
            self._held = None
            self._call(bytes(held))
        elif len(held) > MAX_LINE_BYTES:
            # Too long to be a call: pass it on (the rest of the line follows as text).
            self._held = None
            self._err_text(held)
            self.output.system(f"sooner: ignored malformed call: call too long: over {MAX_LINE_BYTES} bytes")

    def _call(self, raw: bytes) -> None:
        try:
            call = _fast_progress(raw) if self._fast else None
            if call is None:
                call = parse_stderr_line(raw.decode("utf-8", "replace"), self.registry)
            if call is None:  # cannot happen: the prefix was checked
                self._err_text(raw)
                return
            self.on_call(call)
        except ProtocolError as exc:
            self._ignored(raw, f"sooner: ignored malformed call: {exc}")
        except Exception as exc:  # a database failure must not end the run's output
            logger.warning("call from stderr failed: %s", exc, exc_info=True)
            self._ignored(raw, f"sooner: call failed: {type(exc).__name__}: {exc}")

    def _ignored(self, raw: bytes, note: str) -> None:
        self._err_text(raw if raw.endswith(b"\n") else raw + b"\n")
        self.output.system(note)

    def _err_text(self, data: bytes | bytearray) -> None:
        self.output.write("stderr", self._err.decode(bytes(data)))
