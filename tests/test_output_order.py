"""A run's output is stored in the order it happened: both pipes, and the worker's own lines around them.

Two pipes have no shared order, so what the kernel can tell is the order in
which each pipe first became readable since the worker last looked. The
worker asks the kernel for exactly that (an edge-triggered epoll), instead of
taking the selector's order, which lists a pipe read in an earlier round
before one that became readable first.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from conftest import wait_for
from sooner.config import Settings, load_settings
from sooner.model import FINISHED, ManualTrigger, Run
from sooner.runs.service import RunService
from sooner.store import open_store
from sooner.worker.streams import ArrivalOrder
from sooner.worker.testing import deploy_files

SCRIPTS = Path(__file__).resolve().parent / "scripts"
PY = f"#!{sys.executable}\n"


@pytest.fixture
def store(embedded_site):
    settings = load_settings(embedded_site / "config.json", environ={},
                             overrides={"database": f"t{uuid.uuid4().hex[:12]}"})
    store = open_store(settings)
    yield store
    store.client.drop_database(settings.database)
    store.close()


@pytest.fixture
def worker(store, start_worker):
    settings = Settings(mongo_url=store.url, database=store.database_name, heartbeat_s=0.2, lease_s=5.0,
                        cancel_grace_s=1.0, shutdown_grace_s=2.0, output_flush_ms=1)
    return start_worker(store, settings, "order", 2)


def run_job(store, job: str, data=None, timeout: float = 60) -> Run:
    run_id = RunService(store).queue(job, ManualTrigger(), data=data).id
    return wait_for(lambda: (r := store.runs.get(run_id)).status in FINISHED and r, timeout,
                    message=f"run {run_id} to finish")


def stored_lines(store, run_id: str) -> list[tuple[str, str]]:
    """(stream, line) in the stored order (chunks by seq, each chunk's lines in order)."""
    chunks = store.output.read(run_id)
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    return [(c["stream"], line) for c in chunks for line in c["text"].splitlines()]


def test_a_line_written_first_is_stored_first_when_both_pipes_are_readable(store, worker):
    # given a script that writes `solo i` alone, then `err i` and `out i`, and waits until the worker has read
    # both pipes before each step (a worker busy storing output between reads sees both pipes readable)
    deploy_files(store, {"pairs.py": PY + (SCRIPTS / "interleaved_pipes.py").read_text().split("\n", 1)[1]})
    # when it runs on a real worker
    run = run_job(store, "pairs.py", data=300)
    # then its lines are stored exactly in the order they were written
    assert run.status == "succeeded"
    script = [(stream, line) for stream, line in stored_lines(store, run.id) if stream != "system"]
    expected = [line for i in range(300)
                for line in (("stdout", f"solo {i}"), ("stderr", f"err {i}"), ("stdout", f"out {i}"))]
    assert sorted(script) == sorted(expected)  # nothing lost or doubled
    misplaced = [i for i in range(300) if script[3 * i:3 * i + 3] != expected[3 * i:3 * i + 3]]
    assert not misplaced, f"{len(misplaced)} of 300 steps stored out of order, e.g. {script[3 * misplaced[0]:][:3]}"


def test_the_workers_lines_come_first_and_last_and_times_follow_the_order(store, worker):
    # given a script that prints on both pipes and ends at once
    deploy_files(store, {"both.sh": "#!/bin/bash\nfor i in $(seq 1 300); do echo \"out $i\"; echo \"err $i\" >&2; done\n"})
    # when it runs
    run = run_job(store, "both.sh")
    # then the run's first line is the worker's start line, its last the exit line, each pipe keeps its order
    assert run.status == "succeeded"
    lines = stored_lines(store, run.id)
    assert lines[0][0] == "system" and lines[0][1].startswith(f"sooner: run {run.id} of both.sh on worker order")
    assert lines[-1][0] == "system" and lines[-1][1].startswith("sooner: exited with code 0 after ")
    assert [line for stream, line in lines if stream == "stdout"] == [f"out {i}" for i in range(1, 301)]
    assert [line for stream, line in lines if stream == "stderr"] == [f"err {i}" for i in range(1, 301)]
    # and every chunk's time comes from one clock, so time order is stored order
    times = [chunk["t"] for chunk in store.output.read(run.id)]
    assert times == sorted(times)


# -- units -------------------------------------------------------------------------


class Pipes:
    """Two real pipes, like a script's stdout and stderr, watched by the run's kind of selector."""

    def __init__(self) -> None:
        import selectors

        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.selector = selectors.DefaultSelector()
        for fd in (self.out_r, self.err_r):
            self.selector.register(fd, selectors.EVENT_READ)
        self.arrival = ArrivalOrder([self.out_r, self.err_r])
        self.names = {self.out_r: "out", self.err_r: "err"}

    def ready(self) -> list[int]:
        return [key.fd for key, _ in self.selector.select(0)]

    def read(self, fd: int, size: int = 65536) -> bytes:
        data = os.read(fd, size)
        self.arrival.read(fd, drained=len(data) < size)
        return data

    def close(self) -> None:
        self.arrival.close()
        self.selector.close()
        for fd in (self.out_r, self.out_w, self.err_r, self.err_w):
            os.close(fd)


@pytest.fixture
def pipes():
    pipes = Pipes()
    yield pipes
    pipes.close()


def test_the_selector_lists_a_pipe_read_before_ahead_of_one_readable_first(pipes):
    # given stdout was read in an earlier round (every round asks the arrival order, as the run's loop does)
    os.write(pipes.out_w, b"solo\n")
    assert pipes.arrival.order(pipes.ready()) == [pipes.out_r]
    pipes.read(pipes.out_r)
    # when stderr is written and then stdout
    os.write(pipes.err_w, b"err\n")
    os.write(pipes.out_w, b"out\n")
    # then the selector (level-triggered epoll) puts stdout first: the bug; the arrival order puts stderr first
    ready = pipes.ready()
    if sys.platform.startswith("linux"):
        assert ready == [pipes.out_r, pipes.err_r], "the kernel's epoll changed: this test shows the cause no more"
    assert [pipes.names[fd] for fd in pipes.arrival.order(ready)] == ["err", "out"]


@pytest.mark.parametrize("first", ["out", "err"])
def test_arrival_order_follows_the_first_write_of_each_pipe(pipes, first):
    write = {"out": pipes.out_w, "err": pipes.err_w}
    second = "err" if first == "out" else "out"
    for _ in range(3):
        # given both pipes got lines since the last look, `first` before `second`
        os.write(write[first], b"a\n")
        os.write(write[second], b"b\n")
        os.write(write[first], b"c\n")
        # then `first` is read first, whatever the selector says
        order = pipes.arrival.order(pipes.ready())
        assert [pipes.names[fd] for fd in order] == [first, second]
        for fd in order:
            pipes.read(fd)
        assert pipes.arrival.order(pipes.ready()) == []


def test_a_pipe_with_data_left_from_an_earlier_read_comes_first(pipes):
    # given stdout got more than one read takes, and then stderr a line
    os.write(pipes.out_w, b"x" * 100)
    assert pipes.arrival.order(pipes.ready()) == [pipes.out_r]
    pipes.read(pipes.out_r, size=10)  # 90 bytes of it are still unread
    os.write(pipes.err_w, b"err\n")
    os.write(pipes.out_w, b"y\n")
    # then what is left of stdout is older than stderr's line
    assert [pipes.names[fd] for fd in pipes.arrival.order(pipes.ready())] == ["out", "err"]
    # and once drained, stdout's next write counts from then
    pipes.read(pipes.out_r)
    pipes.read(pipes.err_r)
    os.write(pipes.err_w, b"e\n")
    os.write(pipes.out_w, b"o\n")
    assert [pipes.names[fd] for fd in pipes.arrival.order(pipes.ready())] == ["err", "out"]


def test_a_stale_edge_event_of_a_drained_pipe_does_not_put_it_first(pipes):
    # given stdout was ordered, then written again just before it was read (the read drained both lines)
    os.write(pipes.out_w, b"1\n")
    assert pipes.arrival.order(pipes.ready()) == [pipes.out_r]
    os.write(pipes.out_w, b"2\n")
    assert pipes.read(pipes.out_r) == b"1\n2\n"
    # when stderr gets a line, and stdout only later one more
    os.write(pipes.err_w, b"e\n")
    assert pipes.arrival.order(pipes.ready()) == [pipes.err_r]
    os.write(pipes.out_w, b"3\n")
    # then stderr, still unread, comes before stdout's new line
    assert [pipes.names[fd] for fd in pipes.arrival.order(pipes.ready())] == ["err", "out"]


class StagedRuns:
    """``runs.get`` of a real store, but each call first makes the next thing a worker would do happen."""

    def __init__(self, store, steps) -> None:
        self.store, self.steps = store, list(steps)

    def get(self, run_id: str) -> Run:
        if self.steps:
            self.steps.pop(0)()
        return self.store.runs.get(run_id)


def test_run_follow_prints_started_on_before_output_read_in_the_same_poll(mock_store, capsys):
    from types import SimpleNamespace

    from sooner.cli.runtime import _follow
    from sooner.model import RunStatus

    # given a run that a worker claims, runs to its end (the exit line stored) and finishes between two polls
    service = RunService(mock_store)
    deploy_files(mock_store, {"quick.sh": "#!/bin/sh\necho hi\n"})
    run_id = service.queue("quick.sh", ManualTrigger()).id
    now = mock_store.clock.now()

    def runs_to_its_end() -> None:
        assert service.claim("local", [], 30).id == run_id
        mock_store.output.append(run_id, [(0, "system", f"sooner: run {run_id} of quick.sh on worker local\n", now),
                                          (1, "stdout", "hi\n", now),
                                          (2, "system", "sooner: exited with code 0 after 0.0s\n", now)])

    steps = [lambda: None, runs_to_its_end, lambda: service.finish(run_id, RunStatus.SUCCEEDED, exit_code=0)]
    store = SimpleNamespace(runs=StagedRuns(mock_store, steps), output=mock_store.output, reads=mock_store.reads,
                            clock=mock_store.clock)
    # when `sooner run --follow` follows it
    final = _follow(store, run_id, 1.0)
    # then "started on" comes before everything the worker wrote, the exit line included
    err = capsys.readouterr().err
    assert final.status is RunStatus.SUCCEEDED
    assert err.index("sooner: started on local") < err.index("sooner: run ") < err.index("sooner: exited with code 0")


def test_a_pipe_written_while_the_selector_looked_is_read_in_its_place(pipes):
    # given stderr and then stdout were written, and the selector saw only stdout (stderr came during its scan)
    os.write(pipes.err_w, b"err\n")
    os.write(pipes.out_w, b"out\n")
    # then the pipes being read include stderr, first
    order = pipes.arrival.order([pipes.out_r], watched=[pipes.out_r, pipes.err_r])
    assert [pipes.names[fd] for fd in order] == ["err", "out"]
    # and a pipe not being read (output paused) is left alone
    assert pipes.arrival.order([pipes.out_r]) == [pipes.out_r]
