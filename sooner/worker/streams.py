"""Turn a script's stdout/stderr bytes into output text and protocol calls, within the output limits.

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

The store's :class:`~sooner.store.output.OutputPolicy` limits what is stored:

* a line longer than ``max_line_bytes`` keeps its first ``max_line_bytes``
  (cut back to a whole character) and its newline, and then a system line
  ``sooner: line truncated: 3.2 MB, kept the first 1 MB``;
* once ``max_bytes_per_run`` bytes are stored (stdout, stderr and the notes
  about them), the rest is counted, not stored: one system line says so when
  it starts, and one at the end gives the total. A line cut there is ended
  with a newline, so the marker starts a line of its own.

Notes about a line (truncated, ignored call) always come after the line's
newline, never inside it. Calls keep working past the limit, and the run's
status never depends on it. The worker's own lines (start, exit, kill) go to
the writer directly and are not limited.

:class:`ArrivalOrder` tells the run's loop which of the two pipes to read
first, so output is stored in the order it was written as far as the kernel
can tell.
"""

from __future__ import annotations

import array
import codecs
import fcntl
import logging
import re
import select
import termios
from typing import Any, Callable, Iterable

from sooner.errors import ProtocolError
from sooner.store.output import OutputPolicy
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


def size_text(size: int) -> str:
    """A byte count as the limit notes say it: ``999 bytes``, ``4.9 KB``, ``1 MB`` (powers of 1024)."""
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024
    return f"{value:.1f}".removesuffix(".0") + " GB"


def _whole_characters(data: bytes, limit: int) -> int:
    """The longest prefix of ``data`` of at most ``limit`` bytes that does not split a UTF-8 character."""
    if limit >= len(data):
        return len(data)
    if limit <= 0:
        return 0
    for cut in range(limit, max(limit - 3, 0) - 1, -1):  # a character has at most 3 continuation bytes
        if data[cut] & 0xC0 != 0x80:
            return cut
    return limit  # not UTF-8 here anyway: it is decoded with replacement characters


def _drop_partial_character(stream: _Stream) -> None:
    # The start of a character split between reads waits in the decoder; once its line is cut, its
    # other bytes never come, so it is dropped rather than stored as a replacement character.
    if stream.decoder.getstate()[0]:
        stream.decoder.reset()


class ArrivalOrder:
    """The order in which the script's pipes became readable, as far as the kernel can tell.

    Two pipes share no order, and the run's selector (level-triggered epoll) reports a
    pipe read in an earlier round ahead of one that became readable first: a stdout
    line was stored before the stderr line written just before it, in about one step
    of five (tests/test_output_order.py). An edge-triggered epoll on the same pipes reports a
    pipe once per burst of writes, in the order of each pipe's first write since it was
    last reported. :meth:`order` sorts the pipes the selector found readable that way,
    adding one the selector missed because it was written while the selector looked;
    a pipe with data left from before (a read that did not drain it) comes first. So
    a line written earlier, and readable when the worker reads, is stored first; lines
    of one pipe keep their order; lines both pipes got between two looks stay
    per pipe, in the order the pipes started receiving them. Without epoll (not
    Linux), the selector's order stands.
    """

    def __init__(self, fds: Iterable[int]) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is not None:
            for fd in fds:
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        self._pending: list[int] = []  # pipes with unread data, the first to become readable first

    def order(self, ready: Iterable[int], watched: Iterable[int] = ()) -> list[int]:
        """The pipes to read now, the one that became readable first first.

        ``ready`` are the pipes the selector found readable just now; a pipe of
        ``watched`` (those being read) that the kernel saw written to since, and
        that holds data, is added: it was written while the selector looked.
        """
        ready = list(ready)
        if self._epoll is None:
            return ready
        # Polled every round, even for one readable pipe: edge events left unpolled would order a later round.
        for fd, _ in self._epoll.poll(0):
            if fd not in self._pending:
                self._pending.append(fd)
        watched = set(watched)
        # A pipe neither readable nor holding data had its event for bytes a read took already.
        self._pending = [fd for fd in self._pending if fd in ready or fd in watched and _unread(fd) > 0]
        rank = {fd: n for n, fd in enumerate(self._pending)}
        missed = [fd for fd in self._pending if fd not in ready]
        return sorted(ready + missed, key=lambda fd: rank.get(fd, -1))

    def read(self, fd: int, drained: bool) -> None:
        """``fd`` was read; ``drained`` when the read emptied it (new data then counts from its next write)."""
        if drained and fd in self._pending:
            self._pending.remove(fd)

    def forget(self, fd: int) -> None:
        """``fd`` is closed or no longer read."""
        self.read(fd, drained=True)
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (KeyError, OSError, ValueError):
                pass

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


def _unread(fd: int) -> int:
    """Bytes waiting in pipe ``fd`` (FIONREAD); 0 when it cannot tell."""
    size = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, size)
    except OSError:
        return 0
    return size[0]


class _Stream:
    """One of the script's two streams: its decoder and where its current line stands."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.line_bytes = 0  # bytes of the current line so far, stored or not, without its newline
        self.cut = False  # the current line passed the line limit: the rest of it is counted, not stored
        self.notes: list[str] = []  # notes about the current line, written once it ends
        self.open_line = False  # what is stored of this stream ends inside a line


class StreamDecoder:
    """Feed it pipe reads with :meth:`stdout` / :meth:`stderr`; call :meth:`close` at the end.

    Calls are parsed against ``on_call``'s ``registry`` (a plain callable gets
    the default :data:`~sooner.worker.methods.METHODS`). ``policy`` holds the
    limits; by default the store's (``open_store`` reads it from the settings).
    """

    def __init__(self, output: OutputWriter, on_call: Callable[[Call], Any], *,
                 policy: OutputPolicy | None = None) -> None:
        self.output = output
        self.on_call = on_call
        self.registry = registry_of(on_call)
        self.policy = policy or output.store.output.policy
        self._fast = "progress" in self.registry and self.registry.get("progress") is METHODS.get("progress")
        self._out = _Stream("stdout")
        self._err = _Stream("stderr")
        self._err_at_line_start = True
        self._held: bytearray | None = None  # the start of a stderr line that may be a call
        self.stored_bytes = 0  # output stored, with the notes about it
        self.dropped_bytes = 0  # output not stored because the run's limit was reached

    def stdout(self, data: bytes) -> None:
        self._text(self._out, data)

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
                self._text(self._err, piece)
            self._err_at_line_start = newline >= 0

    def close(self) -> None:
        """End of both streams: a held call without a final newline still counts; decoders flush; notes follow."""
        if self._held is not None:
            held, self._held = self._held, None
            if held.startswith(_PREFIX):
                self._call(bytes(held))
            else:
                self._text(self._err, bytes(held))
        for stream in (self._out, self._err):
            self.output.write(stream.name, stream.decoder.decode(b"", final=True))
            if stream.cut or stream.notes:  # a line left unfinished: end it, so what follows starts a line
                if stream.open_line:
                    self.output.write(stream.name, "\n")
                self._line_ended(stream)
        if self.dropped_bytes:
            self.output.system(f"sooner: output limit of {size_text(self.policy.max_bytes_per_run)} reached: "
                               f"{size_text(self.dropped_bytes)} ({self.dropped_bytes:,} bytes) more were not stored")

    # -- calls on stderr -------------------------------------------------------
    def _check_held(self, complete: bool) -> None:
        held = self._held
        assert held is not None
        size = min(len(held), len(_PREFIX))
        if held[:size] != _PREFIX[:size]:
            self._held = None
            self._text(self._err, bytes(held))
        elif complete:
            self._held = None
            self._call(bytes(held))
        elif len(held) > MAX_LINE_BYTES:
            # Too long to be a call: pass it on (the rest of the line follows as text, then the note).
            self._held = None
            self._err.notes.append(f"sooner: ignored malformed call: call too long: over {MAX_LINE_BYTES} bytes")
            self._text(self._err, bytes(held))

    def _call(self, raw: bytes) -> None:
        try:
            call = _fast_progress(raw) if self._fast else None
            if call is None:
                call = parse_stderr_line(raw.decode("utf-8", "replace"), self.registry)
            if call is None:  # cannot happen: the prefix was checked
                self._text(self._err, raw)
                return
            self.on_call(call)
        except ProtocolError as exc:
            self._ignored(raw, f"sooner: ignored malformed call: {exc}")
        except Exception as exc:  # a database failure must not end the run's output
            logger.warning("call from stderr failed: %s", exc, exc_info=True)
            self._ignored(raw, f"sooner: call failed: {type(exc).__name__}: {exc}")

    def _ignored(self, raw: bytes, note: str) -> None:
        self._err.notes.append(note)
        self._text(self._err, raw if raw.endswith(b"\n") else raw + b"\n")

    # -- output within the limits ----------------------------------------------
    def _text(self, stream: _Stream, data: bytes) -> None:
        """Script output: lines over the line limit are cut, then the run's limit applies."""
        if not data:
            return
        if self.dropped_bytes:  # past the run's limit: only counted
            self.dropped_bytes += len(data)
            return
        limit = self.policy.max_line_bytes
        if not stream.cut and not stream.notes and stream.line_bytes + len(data) <= limit:
            # No line in data can pass the limit: keep it whole (the common case, without a loop over lines).
            last = data.rfind(b"\n")
            stream.line_bytes = stream.line_bytes + len(data) if last < 0 else len(data) - last - 1
            self._store(stream, data)
            return
        kept = bytearray()
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            if not stream.cut:
                piece = data[start:end]
                keep = _whole_characters(piece, limit - stream.line_bytes)
                kept += piece[:keep]
                if keep < len(piece):
                    stream.cut = True
                    if self._store_kept(stream, kept, rest=len(data) - start - keep):
                        return
                    _drop_partial_character(stream)
            stream.line_bytes += end - start
            if newline < 0:
                break
            kept += b"\n"
            if stream.cut or stream.notes:
                if self._store_kept(stream, kept, rest=len(data) - newline - 1):
                    return
                self._line_ended(stream)
            stream.line_bytes = 0
            start = newline + 1
        self._store(stream, bytes(kept))

    def _store_kept(self, stream: _Stream, kept: bytearray, rest: int) -> bool:
        """Store ``kept``; True when that reached the run's limit, and the ``rest`` bytes of the read are dropped."""
        self._store(stream, bytes(kept))
        kept.clear()
        if self.dropped_bytes:
            self.dropped_bytes += rest
            return True
        return False

    def _line_ended(self, stream: _Stream) -> None:
        if stream.cut:
            self._note(f"sooner: line truncated: {size_text(stream.line_bytes)}, "
                       f"kept the first {size_text(self.policy.max_line_bytes)}")
        for note in stream.notes:
            self._note(note)
        stream.line_bytes, stream.cut, stream.notes = 0, False, []

    def _note(self, line: str) -> None:
        """A note about the script's output: it counts towards the run's limit, and is left out once the
        limit is reached (so the notes about one line may pass it by their own few bytes)."""
        if not self.dropped_bytes:
            self.stored_bytes += len(line.encode()) + 1
            self.output.system(line)

    def _store(self, stream: _Stream, data: bytes) -> None:
        if not data:
            return
        if self.dropped_bytes:
            self.dropped_bytes += len(data)
            return
        room = self.policy.max_bytes_per_run - self.stored_bytes
        if len(data) <= room:
            self.stored_bytes += len(data)
            self.output.write(stream.name, stream.decoder.decode(data))
            stream.open_line = not data.endswith(b"\n")
            return
        keep = _whole_characters(data, room)
        self.stored_bytes += keep
        self.dropped_bytes = len(data) - keep
        text = stream.decoder.decode(data[:keep])
        _drop_partial_character(stream)
        if (data[keep - 1:keep] != b"\n") if keep else stream.open_line:
            text += "\n"
        self.output.write(stream.name, text)
        stream.open_line = False
        self.output.system(f"sooner: output limit of {size_text(self.policy.max_bytes_per_run)} reached; "
                           "the rest is not stored (its size is given at the end)")
