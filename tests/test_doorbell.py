"""The doorbell across processes: a run queued by another process on this host wakes an idle worker at once.

Real processes and real unix datagram sockets: the run is queued by a
``python`` subprocess through the run service, and the worker, whose loop
would not look at the queue again for a minute, takes it within seconds.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path


from conftest import LongWaits, wait_for
from sooner.config import Settings
from sooner.model import RunStatus
from sooner.runs import doorbell
from sooner.worker.testing import deploy_files

QUEUE_FROM_ANOTHER_PROCESS = """
import sys
from sooner.config import Settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.store import Store
store = Store(sys.argv[1], sys.argv[2])
print(RunService(store, Settings()).queue("noop.sh", ManualTrigger()).id)
store.close()
"""


class Named:
    """What the doorbell knows of a store: its URL and database name."""

    def __init__(self, url: str = "mongodb://127.0.0.1:1/", database_name: str = "bells") -> None:
        self.url, self.database_name, self.is_mongomock = url, database_name, False


def test_a_run_queued_by_another_process_wakes_an_idle_worker_at_once(embedded_store, start_worker):
    # given a worker that would not poll or heartbeat again for a minute, waiting
    deploy_files(embedded_store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    worker = start_worker(embedded_store, Settings(heartbeat_s=60, lease_s=180), "bell", poll_s=60, start=False)
    worker.finished = waits = LongWaits()
    stop = threading.Event()
    loop = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        assert waits.long_wait.wait(30), "the worker never started its long wait"
        # when another process queues a run of the same database
        queued = subprocess.run([sys.executable, "-c", QUEUE_FROM_ANOTHER_PROCESS, embedded_store.url,
                                 embedded_store.database_name], capture_output=True, text=True, timeout=60)
        assert queued.returncode == 0, queued.stderr
        run_id = queued.stdout.strip()
        # then the worker takes and runs it now, not after its minute
        wait_for(lambda: embedded_store.runs.get(run_id).status is RunStatus.SUCCEEDED, timeout=20,
                 message="the run to be taken without a poll")
    finally:
        stop.set()
        waits.set()  # as `sooner worker` does on SIGTERM: wakes the loop
        loop.join(30)
    # and its bell is gone with the loop
    assert not [p for p in doorbell.directory_for(embedded_store).glob(f"{os.getpid()}-*")]


def test_a_bell_is_a_0600_socket_in_a_0700_directory_and_closing_removes_it(short_tmp):
    woken = threading.Event()
    bell = doorbell.HostBell.open(Named(), woken, parent=str(short_tmp))
    assert bell is not None
    try:
        assert stat.S_IMODE(os.stat(bell.path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(bell.path).st_mode)
        assert stat.S_IMODE(os.stat(bell.path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(bell.path.parent.parent).st_mode) == 0o700
        # a ring from this process leaves it to the in-process listeners; a ring from elsewhere reaches it
        assert doorbell.ring_host(bell.path.parent) == 0
        ringer = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                 "from sooner.runs import doorbell; print(doorbell.ring_host(Path(sys.argv[1])))",
                                 str(bell.path.parent)], capture_output=True, text=True, timeout=60)
        assert ringer.stdout.strip() == "1", ringer.stderr
        assert woken.wait(10)
    finally:
        bell.close()
    assert not bell.path.exists()
    assert not bell.path.parent.exists()  # it was the database's last bell here


def test_a_socket_nobody_listens_on_is_removed_by_the_next_ring_and_ringing_never_fails(short_tmp):
    directory = doorbell.directory_for(Named(), str(short_tmp))
    assert doorbell.ring_host(directory) == 0  # no directory yet: nothing to ring, no error
    live = doorbell.HostBell.open(Named(), threading.Event(), parent=str(short_tmp))
    assert live is not None
    # a worker killed with its bell bound leaves the socket file behind
    stale = directory / "999999-dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()
    (directory / "999998-notes.txt").write_text("not a bell")
    try:
        ringer = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                 "from sooner.runs import doorbell; print(doorbell.ring_host(Path(sys.argv[1])))",
                                 str(directory)], capture_output=True, text=True, timeout=60)
        assert ringer.returncode == 0, ringer.stderr
        assert ringer.stdout.strip() == "1"  # the live bell (this test's process); the dead one was refused
        assert not stale.exists()
        assert (directory / "999998-notes.txt").exists()
        assert live.path.exists()
    finally:
        live.close()
    assert (directory / "999998-notes.txt").exists()  # the folder is not empty: it stays


def test_a_directory_others_may_enter_is_never_used(short_tmp):
    directory = doorbell.directory_for(Named(), str(short_tmp))
    directory.mkdir(parents=True)
    os.chmod(directory.parent, 0o700)
    os.chmod(directory, 0o777)
    # given a socket someone else could have put there
    planted = directory / "1-planted.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(planted))
    listener.setblocking(False)
    try:
        # then no bell opens there, and a ring sends nothing into it
        assert doorbell.HostBell.open(Named(), threading.Event(), parent=str(short_tmp)) is None
        assert doorbell.ring_host(directory) == 0
        try:
            listener.recv(8)
            raise AssertionError("a ring reached a socket in a directory others may enter")
        except BlockingIOError:
            pass
    finally:
        listener.close()


def test_bells_of_different_databases_live_apart(short_tmp):
    one = doorbell.directory_for(Named(database_name="a"), str(short_tmp))
    other = doorbell.directory_for(Named(database_name="b"), str(short_tmp))
    elsewhere = doorbell.directory_for(Named(url="mongodb://db.example:27017/", database_name="a"), str(short_tmp))
    assert len({one, other, elsewhere}) == 3 and one.parent == other.parent == elsewhere.parent
    assert Path(one.parent).name == f"sooner-bell-{os.geteuid()}"


def test_a_ring_wakes_as_many_workers_as_runs_were_queued(short_tmp):
    # given three workers' bells for one database
    events = [threading.Event() for _ in range(3)]
    bells = [doorbell.HostBell.open(Named(), event, parent=str(short_tmp)) for event in events]
    assert all(bells)
    directory = doorbell.directory_for(Named(), str(short_tmp))
    try:
        for runs, woken in ((1, 1), (2, 2), (5, 3)):
            for event in events:
                event.clear()
            # when another process queues that many runs
            ringer = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                     "from sooner.runs import doorbell; "
                                     "print(doorbell.ring_host(Path(sys.argv[1]), int(sys.argv[2])))",
                                     str(directory), str(runs)], capture_output=True, text=True, timeout=60)
            # then that many workers (at most all of them) are rung, not every one for each run
            assert ringer.stdout.strip() == str(woken), ringer.stderr
            wait_for(lambda: sum(event.is_set() for event in events) == woken, timeout=10,
                     message=f"{woken} worker(s) to be woken")
            assert sum(event.is_set() for event in events) == woken
    finally:
        for bell in bells:
            assert bell is not None
            bell.close()
