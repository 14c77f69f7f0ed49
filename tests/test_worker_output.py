"""A run's output: every byte arrives, in order, in bounded memory; calls are parsed from any split.

The end-to-end tests run real scripts through an in-process worker on the
embedded store; the unit tests drive the writer, the stream decoder and the
call handler with small fakes (no threads racing on mongomock).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import wait_for
from sooner.clock import FakeClock
from sooner.config import Settings, load_settings
from sooner.model import FINISHED, ManualTrigger, Run
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.store.output import MAX_CHUNK_CHARS, OutputPolicy
from sooner.worker.calls import CallHandler
from sooner.worker.output import OutputWriter
from sooner.worker.protocol import MAX_LINE_BYTES, Call
from sooner.worker.streams import StreamDecoder, size_text
from sooner.worker.testing import deploy_files

SCRIPTS = Path(__file__).resolve().parent / "scripts"
PY = f"#!{sys.executable}\n"


@pytest.fixture
def store(embedded_site):
    """The embedded server, with room for the 50 MB test's output and its last stderr line."""
    settings = load_settings(embedded_site / "config.json", environ={}, overrides={
        "database": f"t{uuid.uuid4().hex[:12]}", "output_max_bytes_per_run": 64 * 1024 * 1024})
    store = open_store(settings)
    yield store
    store.client.drop_database(settings.database)
    store.close()


@pytest.fixture
def worker(store, start_worker):
    settings = Settings(mongo_url=store.url, database=store.database_name, heartbeat_s=0.2, lease_s=2.0,
                        cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=50)
    return start_worker(store, settings, "out", 2)


def run_job(store, job: str, data=None, timeout: float = 60) -> Run:
    run_id = RunService(store).queue(job, ManualTrigger(), data=data).id
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


def chunks_of(store, run_id: str) -> list[dict]:
    chunks = store.output.read(run_id)
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "seq must be consecutive from 0"
    return chunks


def test_fifty_megabytes_arrive_whole_and_in_order_in_bounded_memory(store, worker):
    deploy_files(store, {"big.py": PY + (SCRIPTS / "worker_big_output.py").read_text().split("\n", 1)[1]})
    process = psutil.Process()
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(process.memory_info().rss)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    run = run_job(store, "big.py", {"mb": 50}, timeout=90)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    assert run.status == "succeeded"
    stdout = [c for c in chunks_of(store, run.id) if c["stream"] == "stdout"]
    digest, size, line = hashlib.sha256(), 0, 0
    for chunk in stdout:
        assert len(chunk["text"]) <= MAX_CHUNK_CHARS
        digest.update(chunk["text"].encode())
        size += len(chunk["text"])
    expected = hashlib.sha256()
    while line * 1024 < 50 * 1024 * 1024:
        expected.update(b"".join(b"%09d " % (line + i) + b"x" * 1013 + b"\n" for i in range(64)))
        line += 64
    assert size == 50 * 1024 * 1024 and digest.hexdigest() == expected.hexdigest()
    print(f"\n50 MB in {elapsed:.1f}s ({50 / elapsed:.0f} MB/s); peak RSS of this test process with the worker: "
          f"{max(peak) / 1e6:.0f} MB (before: {peak[0] / 1e6:.0f} MB)")
    assert max(peak) - peak[0] < 100e6


def test_a_single_ten_megabyte_line_is_cut_to_the_line_limit_in_chunks(store, worker):
    deploy_files(store, {"line.py": PY + "import sys\nsys.stdout.write('y' * 10_000_000)\n"
                                         "sys.stderr.write('>>> sooner.' + 'z' * 3_000_000)\n"})
    run = run_job(store, "line.py")
    chunks = chunks_of(store, run.id)
    stdout = "".join(c["text"] for c in chunks if c["stream"] == "stdout")
    assert stdout == "y" * MAX_LINE_BYTES + "\n" and all(len(c["text"]) <= MAX_CHUNK_CHARS for c in chunks)
    # an endless "call" on stderr is passed on as text with a note, never held whole
    stderr = "".join(c["text"] for c in chunks if c["stream"] == "stderr")
    assert stderr == (">>> sooner." + "z" * 3_000_000)[:MAX_LINE_BYTES] + "\n"
    system = store.output.text(run.id)
    assert "sooner: line truncated: 9.5 MB, kept the first 1 MB" in system
    assert "sooner: ignored malformed call: call too long" in system
    assert run.status == "succeeded"


def test_binary_output_is_stored_with_replacement_characters(store, worker):
    payload = bytes(range(256)) * 64 + "ünïcødé ✓\n".encode()
    deploy_files(store, {"binary.py": PY + f"import sys\ndata = {payload!r}\nout = sys.stdout.buffer\n"
                                          "for i in range(0, len(data), 7):\n    out.write(data[i:i + 7]); out.flush()\n"
                                          "sys.stderr.buffer.write(b'\\xff\\xfe>>> not a call\\n')\n"})
    run = run_job(store, "binary.py")
    assert run.status == "succeeded"
    text = "".join(c["text"] for c in chunks_of(store, run.id) if c["stream"] == "stdout")
    assert text == payload.decode("utf-8", "replace")
    assert text.endswith("ünïcødé ✓\n")  # characters split across reads stay whole


def test_no_output_is_lost_when_a_script_dies_abruptly(store, worker):
    deploy_files(store, {"abrupt.sh": "#!/bin/bash\nfor i in $(seq 1 2000); do echo \"out $i\"; echo \"err $i\" >&2; done\n"
                                      "printf 'no newline at the end'\nkill -9 $$\n"})
    run = run_job(store, "abrupt.sh")
    assert run.status == "failed" and run.note == "killed by SIGKILL"
    chunks = chunks_of(store, run.id)
    stdout = "".join(c["text"] for c in chunks if c["stream"] == "stdout")
    stderr = "".join(c["text"] for c in chunks if c["stream"] == "stderr")
    assert stdout == "".join(f"out {i}\n" for i in range(1, 2001)) + "no newline at the end"
    assert stderr == "".join(f"err {i}\n" for i in range(1, 2001))


def test_a_background_process_holding_the_pipes_does_not_keep_the_run_open(store, worker):
    deploy_files(store, {"leaves.sh": "#!/bin/sh\necho parent done\nsleep 60 &\nexit 0\n"})
    run = run_job(store, "leaves.sh", timeout=15)
    assert run.status == "succeeded" and run.duration_s < 5
    assert "still hold its output open" in store.output.text(run.id)


# -- units -------------------------------------------------------------------------


class FakeOutputRepo:
    """Records appended batches; ``gate`` (when set) blocks appends, like a slow database."""

    def __init__(self, policy: OutputPolicy | None = None) -> None:
        self.batches: list[list[tuple]] = []
        self.gate: threading.Event | None = None
        self.policy = policy or OutputPolicy.from_settings()

    def append(self, run_id: str, chunks) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append(list(chunks))


class FakeStore:
    def __init__(self, policy: OutputPolicy | None = None) -> None:
        self.output = FakeOutputRepo(policy)
        self.runs = self
        self.progress: list[tuple] = []

    def set_progress(self, run_id: str, current, maximum) -> None:
        self.progress.append((current, maximum))


def test_writer_coalesces_a_stream_and_numbers_chunks():
    store = FakeStore()
    writer = OutputWriter(store, "r1", flush_s=0.1)
    for text in ("a\n", "b\n"):
        writer.write("stdout", text)
    writer.write("stderr", "oops\n")
    writer.write("stdout", "c\n")
    writer.system("sooner: done")
    assert writer.due() is not None
    writer.flush()
    writer.write("stdout", "d\n")
    writer.flush()
    assert [[c[:3] for c in batch] for batch in store.output.batches] == [
        [(0, "stdout", "a\nb\n"), (1, "stderr", "oops\n"), (2, "stdout", "c\n"), (3, "system", "sooner: done\n")],
        [(4, "stdout", "d\n")]]
    assert writer.due() is None


def test_writer_blocks_the_reader_while_the_database_is_behind():
    store = FakeStore()
    store.output.gate = threading.Event()
    writer = OutputWriter(store, "r1", flush_s=10, max_buffer_chars=1000)
    wrote = []

    def produce() -> None:
        for i in range(10):
            writer.write("stdout", "x" * 500)
            wrote.append(i)
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    # one batch is being written (blocked) and one is full: the producer must wait, holding ~2 batches
    wait_for(lambda: len(wrote) >= 3, 5)
    time.sleep(0.05)  # give a wrongly unbounded producer the chance to run ahead (not a synchronisation)
    assert len(wrote) <= 4
    store.output.gate.set()
    producer.join(10)
    writer.flush()
    writer.release()
    texts = "".join(c[2] for batch in store.output.batches for c in batch)
    assert texts == "x" * 5000
    seqs = [c[0] for batch in store.output.batches for c in batch]
    assert seqs == list(range(len(seqs)))


def test_decoder_finds_calls_split_across_reads_and_keeps_other_text():
    store = FakeStore()
    writer = OutputWriter(store, "r1", flush_s=1)
    calls: list[Call] = []
    decoder = StreamDecoder(writer, calls.append)
    data = b"plain\n>>> sooner.progress(3, 9)\n>> not\n  >>> sooner.progress(1)\n>>> sooner.emit(\"e\", {\"k\": [1]})"
    for i in range(len(data)):  # one byte per read
        decoder.stderr(data[i:i + 1])
    decoder.stdout("é".encode()[:1])
    decoder.stdout("é".encode()[1:])
    decoder.close()
    writer.flush()
    assert calls == [Call("progress", {"current": 3, "max": 9}), Call("emit", {"event": "e", "data": {"k": [1]}})]
    text = {s: "".join(c[2] for b in store.output.batches for c in b if c[1] == s) for s in ("stdout", "stderr")}
    assert text == {"stdout": "é", "stderr": "plain\n>> not\n  >>> sooner.progress(1)\n"}


def decoded(store: FakeStore) -> list[tuple[str, str]]:
    """What was written, as (stream, text), consecutive text of one stream joined."""
    entries: list[tuple[str, str]] = []
    for _, stream, text, _ in (c for batch in store.output.batches for c in batch):
        if entries and entries[-1][0] == stream:
            entries[-1] = (stream, entries[-1][1] + text)
        else:
            entries.append((stream, text))
    return entries


def limited(max_bytes_per_run: int = 2 ** 30, max_line_bytes: int = 2 ** 30) -> FakeStore:
    return FakeStore(OutputPolicy(max_bytes_per_run=max_bytes_per_run, max_line_bytes=max_line_bytes,
                                  retention_days=30))


def test_decoder_passes_on_an_overlong_call_line_with_its_note_after_it():
    store = limited()
    writer = OutputWriter(store, "r1", flush_s=1)
    decoder = StreamDecoder(writer, lambda call: pytest.fail("no call expected"))
    decoder.stderr(b">>> sooner.progress(" + b"1" * (MAX_LINE_BYTES + 10))
    decoder.stderr(b"2)\nnext\n")
    decoder.close()
    writer.flush()
    assert decoded(store) == [("stderr", ">>> sooner.progress(" + "1" * (MAX_LINE_BYTES + 10) + "2)\n"),
                              ("system", f"sooner: ignored malformed call: call too long: over {MAX_LINE_BYTES} bytes\n"),
                              ("stderr", "next\n")]


def test_decoder_notes_a_malformed_call_after_its_line_even_when_it_is_cut():
    store = limited(max_line_bytes=16)
    writer = OutputWriter(store, "r1", flush_s=1)
    decoder = StreamDecoder(writer, lambda call: pytest.fail("no call expected"))
    decoder.stderr(b'>>> sooner.progress("not a number")\nok\n')
    decoder.close()
    writer.flush()
    (_, first), (_, notes), (_, rest) = decoded(store)
    assert first == ">>> sooner.progr\n" and rest == "ok\n"
    assert notes.startswith("sooner: line truncated: 35 bytes, kept the first 16 bytes\nsooner: ignored malformed call: ")


def test_decoder_cuts_lines_on_whole_characters_split_across_reads():
    store = limited(max_line_bytes=5)
    writer = OutputWriter(store, "r1", flush_s=1)
    decoder = StreamDecoder(writer, lambda call: None)
    data = "aé€xyz\n".encode()  # 1 + 2 + 3 + 3 bytes: 5 bytes would split the euro sign
    for i in range(len(data)):
        decoder.stdout(data[i:i + 1])
    decoder.close()
    writer.flush()
    assert decoded(store) == [("stdout", "aé\n"), ("system", "sooner: line truncated: 9 bytes, kept the first 5 bytes\n")]


def test_decoder_counts_both_streams_and_its_notes_towards_the_run_limit_and_keeps_calling():
    # given a run limit of 30 bytes and a handler that records calls
    store = limited(max_bytes_per_run=30, max_line_bytes=8)
    writer = OutputWriter(store, "r1", flush_s=1)
    calls: list[Call] = []
    decoder = StreamDecoder(writer, calls.append)
    # when 8 bytes go to stdout, a 12-byte line is cut to 8 (its marker counts too), and more follows
    decoder.stdout(b"1234567\n")
    decoder.stderr(b"abcdefghijkl\n")
    decoder.stderr(b">>> sooner.progress(1, 2)\n")
    decoder.stdout(b"after the limit\n")
    decoder.stderr(b">>> sooner.emit(oops)\n>>> sooner.progress(2, 2)\n")
    decoder.close()
    writer.flush()
    # then storing stops at the limit (passed here by the marker), and the rest is counted: 16 + 22 bytes
    marker = "sooner: line truncated: 12 bytes, kept the first 8 bytes\n"
    assert decoded(store) == [
        ("stdout", "1234567\n"), ("stderr", "abcdefgh\n"),
        ("system", marker + "sooner: output limit of 30 bytes reached; the rest is not stored (its size is given at "
                            "the end)\nsooner: output limit of 30 bytes reached: 38 bytes (38 bytes) more were not stored\n")]
    assert decoder.stored_bytes == 8 + 9 + len(marker) and decoder.dropped_bytes == 16 + 22
    # and calls past the limit still went through; the malformed one's line and note were left out
    assert calls == [Call("progress", {"current": 1, "max": 2}), Call("progress", {"current": 2, "max": 2})]


def test_decoder_ends_a_line_cut_by_the_run_limit():
    store = limited(max_bytes_per_run=4)
    writer = OutputWriter(store, "r1", flush_s=1)
    decoder = StreamDecoder(writer, lambda call: None)
    decoder.stdout(b"ab")
    decoder.stdout(b"cdef\n")
    decoder.close()
    writer.flush()
    assert decoded(store)[0] == ("stdout", "abcd\n")
    assert decoder.dropped_bytes == 3


@pytest.mark.parametrize("size, text", [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1 KB"), (5000, "4.9 KB"),
                                        (2 ** 20, "1 MB"), (int(3.2 * 2 ** 20), "3.2 MB"), (50 * 2 ** 20, "50 MB"),
                                        (3 * 2 ** 30, "3 GB")])
def test_sizes_read_as_the_notes_say_them(size, text):
    assert size_text(size) == text


def test_progress_writes_are_throttled_and_the_last_value_is_kept():
    store = FakeStore()
    service = RunService(store, Settings(chain_depth_limit=3), FakeClock())
    handler = CallHandler(service, Run(id="r1", job="j"), throttle_s=60)
    for i in range(1000):
        handler(Call("progress", {"current": i, "max": None}))
    assert store.progress == [(0, 100)]  # the first is written, the rest wait for the throttle
    assert handler.progress_due() is not None
    handler.flush_progress()  # not due yet
    assert len(store.progress) == 1
    handler.flush_progress(force=True)
    assert store.progress[-1] == (999, 100) and handler.progress_due() is None
