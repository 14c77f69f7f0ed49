"""A supervisor process per run, between the worker and the script, so a run's processes die with it.

Each worker starts one long-lived *launcher* (``python -I -S -c STUB …``, see
:class:`Launcher`); for each run it forks a *supervisor*, which starts the
script in a new session and stays its parent until the script and everything
it started are gone. Why a process, and not a child of the worker:

- The worker's death is seen on the supervisor's stdin, a pipe from the
  worker: the kernel closes it however the worker dies (``kill -9``
  included), so EOF means the worker is gone. The supervisor then SIGKILLs
  the whole tree, removes the run's socket directory and exits. This does
  not depend on which worker thread started the run (a parent-death signal
  would: it fires when the *thread* that forked ends, and setting it needs a
  ``preexec_fn``, unsafe in the threaded worker), and works on macOS too.
- Descendants that leave the script's process group (``setsid``, a double
  fork) would be reparented to init, out of reach of a group kill. The
  supervisor is a child subreaper (``PR_SET_CHILD_SUBREAPER``, Linux), so they
  are reparented to it instead: its descendants are the run's whole tree,
  which is what the worker signals on cancel and timeout and measures for
  the memory limit. Without a subreaper the worker also keeps a snapshot of
  the tree taken every :data:`SAMPLE_S`.
- The launcher is a child subreaper too: if a supervisor is killed (the OOM
  killer, a person), its script and what it adopted are reparented to the
  launcher, which SIGKILLs every child of its own that is not a supervisor,
  with all below it (:func:`_kill_orphans`). So the tree never outlives its
  supervisor, also where the script's group was left, without a parent-death
  signal on the script (which would need a fork of this interpreter to set).

Why a launcher that forks supervisors: a fresh interpreter per run cost about
28 ms of CPU (measured: no-op throughput fell from ~67 to ~29 runs/s); a fork
of the small launcher costs about 2.5 ms, and a supervisor that is handed the
next run once its last one is over costs a fraction of that (see
:class:`_Pool`). The launcher is stdlib-only, runs without ``site`` (``-I
-S``) from this file's cached bytecode (imported as the top-level module
``supervise``), and its only job is to hand runs to supervisors.

Protocol. The worker sends the launcher a request (length-prefixed JSON:
argv, cwd, env) with four descriptors: the script's stdout and stderr, a
status pipe and a control pipe; one request at a time, each answered with
``pid SUPERVISOR`` (or ``error ERRNO MESSAGE``). On the control pipe (the
supervisor's stdin) the worker writes ``K`` to have the tree killed; EOF
while the run's tree lives means the worker is gone. On the status pipe the
supervisor reports ``pid PID SUBREAPER`` once the script runs, ``exit
RETURNCODE`` when it ends (negative: killed by that signal) or ``error ERRNO
MESSAGE``, and ``usage CPU_S MAX_RSS`` (what the tree's processes used) once
the tree is gone; then it closes the status pipe. EOF on it means the
supervisor is done with the run (or was killed). The worker closes the
control pipe when it is done with the run's processes (:meth:`Supervised.close`),
which releases the supervisor for another run: until then it takes none, so
the worker never signals a tree that is not its run's. While it serves a run
a supervisor is named after it (``/proc/PID/comm``, :func:`supervisor_name`),
so a later worker can tell which run it serves.

Tests only: ``SOONER_TEST_KEEP_ORPHANS=1`` in a run's environment makes its
supervisor ignore EOF on the control pipe (nothing else changes), so a test
can show that a restarted worker kills what a killed one left (see
:func:`stop_recorded`). Nothing else reads it.

The bottom half of this module is the worker's side (psutil, imported only
when this is ``sooner.worker.supervise``, not the launcher's ``supervise``).
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs the launcher ~10 ms (re, enum, collections)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from sooner.worker.sampling import TreeUsage
if TYPE_CHECKING or __name__.startswith("sooner."):  # the launcher runs without site-packages
    import json
    import socket
    import subprocess
    import threading

    import psutil

# Run as the launcher: this directory first on sys.path, then `supervise` from its .pyc.
MARKER = "import supervise;"
STUB = f"import sys; sys.path.insert(0, sys.argv.pop(1)); {MARKER} sys.exit(supervise.launcher(*sys.argv[1:]))"
KEEP_ORPHANS_ENV = "SOONER_TEST_KEEP_ORPHANS"
SIGKILL, SIGTERM = 9, 15  # fixed by POSIX; importing `signal` costs ~7 ms
_PR_SET_NAME, _PR_SET_CHILD_SUBREAPER = 15, 36
REAP_S = 0.05  # after the script ended: how often leftover descendants are reaped
IDLE_S = 0.5  # how often an idle launcher reaps supervisors that ended
SERVE_RUNS = 1000  # runs one supervisor serves before it exits (bounds whatever it accumulates)
KEEP_IDLE_S = 10.0  # how long an idle supervisor is kept for the next run
MAX_IDLE = 16  # idle supervisors kept at most
POLL_S = 0.01  # without a pidfd: how often the script is polled
KILL_FOR_S = 10.0  # how long a supervisor keeps killing a tree that will not die
SAMPLE_S = 0.5  # how often the worker samples the tree (snapshot, memory)
CREATE_TIME_TOLERANCE_S = 0.01  # psutil's create times are in clock ticks


# -- the launcher and the supervisors it forks (stdlib only) --------------------------------------
def launcher(worker_pid: str, channel_fd: str, keep_idle_s: str = str(KEEP_IDLE_S)) -> int:
    """Hand each request on the channel to a supervisor until the worker closes it (or dies)."""
    import socket

    channel = socket.socket(fileno=int(channel_fd))
    if os.getppid() != int(worker_pid):
        return 1  # the worker died before we started
    _prctl(0, 0)  # load ctypes and libc once, here, not in every supervisor
    import gc
    import json  # noqa: F401 -- loaded here for the supervisors, which read each request
    import resource  # noqa: F401 -- loaded once here: each supervisor reports its tree's rusage
    import zlib  # noqa: F401 -- loaded once here: each supervisor names itself after its run

    # A supervisor copies every page it writes to (copy-on-write): its collector must not walk
    # the launcher's objects.
    gc.freeze()
    # Orphans of a supervisor that was killed (its script, and what left the script's group) come
    # to the nearest subreaper: this launcher, which kills them (see _kill_orphans).
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    pool = _Pool(channel, float(keep_idle_s))
    sweeping = False
    while True:
        sweeping = _kill_orphans(pool.alive, look=pool.reap() or sweeping)
        ready = readable([channel.fileno(), *pool.links], REAP_S if sweeping else pool.timeout())
        for fd in ready:
            if fd in pool.links:
                pool.returned(fd)
        pool.expire()
        if channel.fileno() not in ready:
            continue
        request = _receive(channel)
        if request is None:
            pool.close()
            _kill_orphans(pool.alive, look=True)
            return 0
        payload, fds = request
        try:
            pid = pool.hand_over(payload, fds)
        except OSError as exc:
            channel.sendall(f"error {exc.errno or 0} {exc.strerror}\n".encode())
            continue
        finally:
            _close(fds)
        channel.sendall(f"pid {pid}\n".encode())


class _Pool:
    """The launcher's supervisors: each serves one run at a time and, once released, the next.

    A fork of the launcher per run cost ~2.5 ms of CPU (the fork, and the copy-on-write of
    every page the new supervisor touched); a supervisor that served a run has those pages
    already. Each supervisor has a *link* (a socketpair) to the launcher: the launcher sends a
    run's request on it, the supervisor answers ``I`` once it is idle again. A supervisor that
    served :data:`SERVE_RUNS` runs exits; one idle for ``keep_idle_s`` (:data:`KEEP_IDLE_S`), or beyond
    :data:`MAX_IDLE` idle ones, is let go (its link closed: it exits).
    """

    def __init__(self, channel: socket.socket, keep_idle_s: float) -> None:
        self.channel = channel
        self.keep_idle_s = keep_idle_s
        self.alive: set[int] = set()  # every supervisor not reaped yet
        self.links: dict[int, tuple[socket.socket, int]] = {}  # link's descriptor -> (link, pid), while it may serve
        self.idle: dict[int, float] = {}  # link's descriptor -> idle since (monotonic), oldest first

    def hand_over(self, payload: bytes, fds: list[int]) -> int:
        """Give the request to the supervisor idle the shortest time (its pages are warm), or a new one."""
        import socket

        message = len(payload).to_bytes(4, "big") + payload
        while self.idle:
            fd = next(reversed(self.idle))
            del self.idle[fd]
            link, pid = self.links[fd]
            try:
                socket.send_fds(link, [message], fds)
                return pid
            except OSError:
                self._drop(fd)  # it died: reap() will see it
        return self._fork(payload, fds)

    def _fork(self, payload: bytes, fds: list[int]) -> int:
        import socket

        mine, its = socket.socketpair()
        try:
            pid = os.fork()
        except OSError:
            mine.close()
            its.close()
            raise
        if pid == 0:
            code = 1
            try:
                for link in [self.channel, mine, *(link for link, _ in self.links.values())]:
                    link.close()
                code = _serve(its, payload, fds)
            finally:
                os._exit(code)
        its.close()
        self.alive.add(pid)
        self.links[mine.fileno()] = (mine, pid)
        return pid

    def returned(self, fd: int) -> None:
        """The supervisor wrote on its link: ``I`` (idle again), or it is gone (EOF)."""
        try:
            data = self.links[fd][0].recv(64)
        except OSError:
            data = b""
        if data:
            self.idle[fd] = time.monotonic()
        else:
            self._drop(fd)

    def expire(self) -> None:
        now = time.monotonic()
        for fd, since in list(self.idle.items()):
            if now - since >= self.keep_idle_s or len(self.idle) > MAX_IDLE:
                self._drop(fd)

    def timeout(self) -> float:
        """How long the launcher may wait for a request before an idle supervisor is due to go."""
        if not self.idle:
            return IDLE_S
        oldest = next(iter(self.idle.values()))
        return max(0.0, min(IDLE_S, oldest + self.keep_idle_s - time.monotonic()))

    def reap(self) -> bool:
        """Reap the launcher's ended children; True if a run's tree may have been left to it.

        That is when a supervisor did not exit cleanly (killed, or failed), or an adopted orphan ended.
        """
        left = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return left
            if pid == 0:
                return left
            if pid in self.alive:
                self.alive.discard(pid)
                for fd in [fd for fd, (_, owner) in self.links.items() if owner == pid]:
                    self._drop(fd)
                left = left or status != 0
            else:
                left = True

    def close(self) -> None:
        for fd in list(self.links):
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        link, _ = self.links.pop(fd)
        self.idle.pop(fd, None)
        link.close()


def _receive(channel: socket.socket) -> tuple[bytes, list[int]] | None:
    import socket

    try:
        data, fds, _, _ = socket.recv_fds(channel, 1 << 16, 4)
    except OSError:
        return None
    if len(fds) != 4 or len(data) < 4:
        _close(fds)
        return None
    size, body = int.from_bytes(data[:4], "big"), data[4:]
    while len(body) < size:
        more = channel.recv(size - len(body))
        if not more:
            _close(fds)
            return None
        body += more
    return body, fds


def _serve(link: socket.socket, payload: bytes, fds: list[int]) -> int:
    """A supervisor's life: serve the first run, then each the launcher hands over, until told to go."""
    import json

    for _ in range(SERVE_RUNS):
        if not _supervisor(json.loads(payload), fds):
            return 0  # the worker is gone
        _released()
        try:
            link.sendall(b"I")
        except OSError:
            return 0
        _name(IDLE_NAME)  # after the I: a supervisor named idle is one the launcher may hand a run
        request = _receive(link)
        if request is None:
            return 0
        payload, fds = request
    return 0


def supervisor_name(run_id: str) -> str:
    """The name (``/proc/PID/comm``, 15 characters) a supervisor has while it serves ``run_id``.

    Supervisors serve one run after another, so a pid and create time alone do not say which
    run a supervisor serves now: a later worker checks this name too (:func:`is_supervisor_of`).
    """
    import zlib

    return f"sooner {zlib.crc32(run_id.encode()):08x}"


IDLE_NAME = "sooner idle"


def _name(name: str) -> None:
    _prctl(_PR_SET_NAME, name.encode())


def _released() -> None:
    """Wait until the worker closes the run's control pipe: then nothing of the worker uses this run."""
    try:
        while os.read(0, 64):
            pass  # a late K: the tree is gone already
    except OSError:
        pass


def _supervisor(request: dict, fds: list[int]) -> bool:
    """Serve one run until its tree is gone; False if the worker died meanwhile."""
    out, err, status_fd, control = fds
    for fd in fds:
        os.set_inheritable(fd, False)
    os.dup2(control, 0, inheritable=False)
    os.close(control)
    try:
        env = request["env"]
        _name(supervisor_name(env.get("SOONER_RUN_ID", "")))
        subreaper = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        try:
            pid = _spawn(request["argv"], request["cwd"], env, out, err)
        except OSError as exc:
            _report(status_fd, f"error {exc.errno or 0} {exc.strerror or exc}")
            return True
        finally:
            os.close(out)  # only the script's tree holds the worker's output pipes
            os.close(err)
        _report(status_fd, f"pid {pid} {int(subreaper)}")
        return _supervise(pid, status_fd, keep_orphans=env.get(KEEP_ORPHANS_ENV) == "1",
                          socket=env.get("SOONER_SOCKET"))
    finally:
        os.close(status_fd)  # EOF: the worker knows this run's supervision is over


def _spawn(argv: list[str], cwd: str, env: dict[str, str], out: int, err: int) -> int:
    """Start the script in a new session (stdin empty, stdout and stderr the worker's pipes); OSError if it cannot.

    ``posix_spawn`` (a vfork) rather than a fork of this interpreter: the fork and its
    copy-on-write cost ~1.3 ms of CPU per run (measured). posix_spawn has no working directory
    of its own, so the supervisor, which serves one run at a time, moves to it first.
    """
    os.chdir(cwd)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, out, 1),
               (os.POSIX_SPAWN_DUP2, err, 2)]
    return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)


def _supervise(pid: int, status_fd: int, keep_orphans: bool, socket: str | None) -> bool:
    """Until the script and every descendant are gone; False if the worker died (its tree is killed then)."""
    script = _Script(pid, status_fd)
    try:
        watch = [0] + ([script.pidfd] if script.pidfd is not None else [])
        while True:
            timeout = REAP_S if script.ended else (None if script.pidfd is not None else POLL_S)
            ready = readable(watch, timeout)
            if 0 in ready:
                order = os.read(0, 64)
                if order or not keep_orphans:
                    _kill_tree(script)
                    if order:
                        _report_usage(status_fd, script)
                        return True
                    _remove_socket_dir(socket)  # the worker died: nobody else will
                    return False
                watch.remove(0)
            left = script.reap()
            if script.ended and script.pidfd is not None:
                if script.pidfd in watch:
                    watch.remove(script.pidfd)
                script.close()
            if script.ended and not left:
                _report_usage(status_fd, script)
                return True
    finally:
        script.close()


class _Script:
    """The supervised script: reaps every child, adds up what they used, reports the script's own end once."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.status_fd = status_fd
        self.ended = False
        self.pidfd = _pidfd(pid)
        self.cpu_s = 0.0  # of every process reaped (each with what it waited for), as RUSAGE_CHILDREN counts
        self.max_rss = 0  # the largest ru_maxrss among them (Linux: KiB)

    def reap(self) -> bool:
        """Reap whatever ended; True while any child (the script or an adopted orphan) is left."""
        while True:
            try:
                child, status, usage = os.wait3(os.WNOHANG)
            except ChildProcessError:
                return False
            if child == 0:
                return True
            self.cpu_s += usage.ru_utime + usage.ru_stime
            self.max_rss = max(self.max_rss, usage.ru_maxrss)
            if child == self.pid:
                self.ended = True
                _report(self.status_fd, f"exit {os.waitstatus_to_exitcode(status)}")

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _report_usage(status_fd: int, script: _Script) -> None:
    """Report what the run's tree used, from the rusage of every process reaped: ``usage CPU_S MAX_RSS_BYTES``.

    Exact where the worker's samples are not: it includes processes that ended between two
    samples. The max RSS is that of the largest single process (Linux counts it in KiB).
    """
    maxrss = script.max_rss * (1 if sys.platform == "darwin" else 1024)
    _report(status_fd, f"usage {script.cpu_s:.3f} {maxrss}")


def _report(status_fd: int, line: str) -> None:
    try:
        os.write(status_fd, line.encode() + b"\n")
    except OSError:
        pass  # the worker is gone (EPIPE): the tree is being killed anyway


def _kill_tree(script: _Script) -> None:
    """SIGKILL the script's group (while it runs) and every descendant, until none is left."""
    deadline = time.monotonic() + KILL_FOR_S
    while True:
        if not script.ended:
            try:
                os.killpg(script.pid, SIGKILL)
            except OSError:
                pass
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, SIGKILL)
            except OSError:
                pass
        if not script.reap() or time.monotonic() > deadline:
            return
        select.select([], [], [], POLL_S)


def descendants(root: int) -> list[int]:
    """Pids below ``root``, from /proc (Linux; elsewhere an empty list)."""
    return _below(_children_map(), root)


def _children_map() -> dict[int, list[int]]:
    """{parent pid: child pids} of every process, from /proc/*/stat (empty without /proc)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _below(children: dict[int, list[int]], root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _remove_socket_dir(path: str | None) -> None:
    directory = os.path.dirname(path or "")
    if not os.path.basename(directory).startswith("sooner-rpc-"):
        return
    try:
        if os.lstat(directory).st_uid == os.geteuid():
            os.unlink(path or "")
            os.rmdir(directory)
    except OSError:
        pass  # gone already, or not ours to remove: a starting worker sweeps what is left


def _kill_orphans(supervisors: set[int], look: bool) -> bool:
    """SIGKILL the launcher's children that are not supervisors, and all below them; True if there were any.

    Only a run's processes can be such children: a child subreaper adopts nothing but orphans
    among its own descendants. Its children are read from ``/proc/PID/task/PID/children`` (one
    small read, done on every pass); where that file is missing, from a scan of /proc, and only
    when ``look`` says a tree may have been left.
    """
    me = os.getpid()
    children_map: dict[int, list[int]] | None = None
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as listing:
            children = [int(pid) for pid in listing.read().split()]
    except OSError:
        if not look:
            return False
        children_map = _children_map()
        children = children_map.get(me, [])
    orphans = [pid for pid in children if pid not in supervisors]
    if not orphans:
        return False
    if children_map is None:
        children_map = _children_map()
    for orphan in orphans:
        for pid in [orphan, *_below(children_map, orphan)]:
            try:
                os.kill(pid, SIGKILL)
            except OSError:
                pass
    return True


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


_libc: list = []


def _prctl(option: int, value: int | bytes) -> bool:
    """prctl(2) on Linux (option 0 only loads libc); False where it is missing or refused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not _libc:
            import ctypes

            _libc.append(ctypes.CDLL(None, use_errno=True).prctl)
        return option != 0 and _libc[0](option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def readable(fds: list[int], timeout_s: float | None) -> list[int]:
    """The descriptors among ``fds`` that are readable (or at EOF) within ``timeout_s`` (None: no limit).

    ``poll``, not ``select``: select() refuses descriptors from 1024 up, which a busy worker
    (or a launcher with that many supervisors) can reach.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000 + 0.999))
    return [fd for fd, _ in poller.poll(timeout_ms)]


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# -- the worker's side ------------------------------------------------------------------------
class Launcher:
    """The worker's launcher process, started on first use and again if it died; thread-safe."""

    def __init__(self, timeout_s: float = 30.0, keep_idle_s: float = KEEP_IDLE_S) -> None:
        self.timeout_s = timeout_s
        self.keep_idle_s = keep_idle_s  # how long the launcher keeps an idle supervisor for the next run
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._channel: socket.socket | None = None

    def start(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> Supervised:
        """Start ``argv`` under a new supervisor; OSError (e.g. FileNotFoundError) if it cannot start."""
        pipes = [os.pipe() for _ in range(4)]  # stdout, stderr, status, control
        ours = [pipes[0][0], pipes[1][0], pipes[2][0], pipes[3][1]]
        theirs = [pipes[0][1], pipes[1][1], pipes[2][1], pipes[3][0]]
        payload = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode()
        try:
            try:
                with self._lock:
                    supervisor = self._request(len(payload).to_bytes(4, "big") + payload, theirs)
            finally:
                _close(theirs)
            script, subreaper, rest = self._first_report(ours[2])
        except BaseException:
            _close(ours)
            raise
        supervised = Supervised(supervisor, script, subreaper, stdout=ours[0], stderr=ours[1], status=ours[2],
                                control=ours[3])
        supervised.feed(rest)
        return supervised

    def warm(self) -> None:
        """Start the launcher now rather than with the first run (its start-up is ~30 ms)."""
        with self._lock:
            if self._channel is None:
                self._start()

    def close(self) -> None:
        """Stop the launcher (supervisors it started go on until their runs end)."""
        with self._lock:
            self._discard(wait=True)

    def _request(self, message: bytes, fds: list[int]) -> int:
        for attempt in (1, 2):
            try:
                channel = self._channel or self._start()
                socket.send_fds(channel, [message], fds)
                reply = _line(channel.fileno(), time.monotonic() + self.timeout_s)[0]
                break
            except OSError:
                self._discard()
                if attempt == 2:
                    raise
        if reply.startswith("pid "):
            return int(reply[4:])
        if reply.startswith("error "):
            number, _, text = reply[6:].partition(" ")
            raise OSError(int(number), text)
        self._discard()
        raise OSError(f"the run launcher did not answer ({reply or 'no reply'})")

    def _start(self) -> socket.socket:
        mine, its = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", STUB, os.path.dirname(os.path.abspath(__file__)),
                 str(os.getpid()), str(its.fileno()), repr(self.keep_idle_s)], pass_fds=(its.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            mine.close()
            raise
        finally:
            its.close()
        self._channel = mine
        return mine

    def _discard(self, wait: bool = False) -> None:
        if self._channel is not None:
            self._channel.close()  # EOF: the launcher exits
            self._channel = None
        if self._process is not None:
            if not wait:
                self._process.kill()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _first_report(self, status: int) -> tuple[int, bool, bytes]:
        line, rest = _line(status, time.monotonic() + self.timeout_s)
        if line.startswith("pid "):
            _, pid, subreaper = line.split()
            return int(pid), subreaper == "1", rest
        if line.startswith("error "):
            number, _, text = line[6:].partition(" ")
            raise OSError(int(number), text)
        raise OSError(f"the run's supervisor did not start ({line or 'no report'})")


def _line(fd: int, deadline: float) -> tuple[str, bytes]:
    """The first line read from ``fd`` (empty at EOF or the deadline) and any bytes after it."""
    data = b""
    while b"\n" not in data:
        ready = readable([fd], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 256) if ready else b""
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line.decode(errors="replace"), rest


class Supervised:
    """The worker's handle on one run's supervisor and script: output pipes, status, tree, signals, memory."""

    def __init__(self, supervisor_pid: int, script_pid: int, subreaper: bool, *, stdout: int, stderr: int,
                 status: int, control: int) -> None:
        self.supervisor_pid = supervisor_pid
        self.script_pid = script_pid
        self.subreaper = subreaper
        self.stdout, self.stderr, self.status_fd, self.control = stdout, stderr, status, control
        self.returncode: int | None = None  # the script's, once reported
        self.status_closed = False  # the supervisor is done with the run: nothing of its tree is left
        self._buffer = b""
        self._known: dict[int, psutil.Process] = {}  # the tree as last sampled
        # (CPU seconds, max RSS bytes) the supervisor reported once the tree was gone (see _report_usage).
        self.reported_usage: tuple[float, int] | None = None
        try:
            self._supervisor: psutil.Process | None = psutil.Process(supervisor_pid)
            self.supervisor_started_at: float | None = self._supervisor.create_time()
        except psutil.Error:  # a quick script: all of it is over already
            self._supervisor, self.supervisor_started_at = None, None

    def script_started_at(self) -> float | None:
        """The script's create time, if it still runs under the supervisor (None if it ended already)."""
        try:
            script = psutil.Process(self.script_pid)
            return script.create_time() if script.ppid() == self.supervisor_pid else None
        except psutil.Error:
            return None

    def read_status(self) -> None:
        """Read what the supervisor reported (call when ``status_fd`` is readable)."""
        data = os.read(self.status_fd, 4096)
        if not data:
            self.status_closed = True
            if self.returncode is None:  # the supervisor was killed before the script ended
                self.returncode = -SIGKILL
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"exit "):
                self.returncode = int(line[5:])
            elif line.startswith(b"usage "):
                try:
                    cpu, rss = line[6:].split()
                    self.reported_usage = (float(cpu), int(rss))
                except ValueError:
                    pass

    def tree(self) -> list[psutil.Process]:
        """The run's live processes: the supervisor's descendants, plus any sampled earlier that still run."""
        current = {p.pid: p for p in _children(self._supervisor)} if self._supervisor is not None else {}
        for pid, process in self._known.items():
            if pid not in current and _running(process):
                current[pid] = process
        return list(current.values())

    def sample(self, usage: TreeUsage | None = None) -> int:
        """Remember the tree (for kills without a subreaper) and return its resident memory in bytes.

        With ``usage``, the sample also feeds it (memory and CPU times, for monitoring).
        """
        tree = self.tree()
        self._known = {p.pid: p for p in tree}
        if usage is not None:
            return usage.observe(tree)
        total = 0
        for process in tree:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total

    def signal(self, sig: int) -> int:
        """Send ``sig`` to the script's group (while it runs) and every process of the tree; how many got it."""
        if self.returncode is None:
            try:
                os.killpg(self.script_pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return signal_all(self.tree(), sig)

    def kill(self) -> None:
        """SIGKILL the whole tree: tell the supervisor (it keeps at it until all are gone) and do it here too."""
        try:
            os.write(self.control, b"K")
        except OSError:
            pass  # it exited already
        self.signal(SIGKILL)

    def kill_supervisor(self) -> None:
        if self._supervisor is not None:
            signal_all([self._supervisor], SIGKILL)

    def close(self) -> None:
        """Close the run's pipes; closing the control pipe releases the supervisor to serve another run.

        Call it once nothing more is done with this run's processes: until then the supervisor
        takes no other run, so its tree, its pid and its name are this run's.
        """
        _close([self.stdout, self.stderr, self.status_fd, self.control])


def signal_all(processes: Iterable[psutil.Process], sig: int) -> int:
    """Signal each process unless it ended or its pid was recycled (psutil checks the create time)."""
    count = 0
    for process in processes:
        try:
            process.send_signal(sig)
            count += 1
        except psutil.Error:
            pass
    return count


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [child for child in process.children(recursive=True) if _running(child)]
    except psutil.Error:
        return []


# -- what a later worker on the host can check --------------------------------------------------
def process_matching(pid: int | None, started_at: float | None) -> psutil.Process | None:
    """The live (non-zombie) process with this pid and create time (None: any create time), or None."""
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if started_at is not None and abs(process.create_time() - started_at) > CREATE_TIME_TOLERANCE_S:
            return None
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def is_run_script(process: psutil.Process, run_id: str) -> bool:
    """Whether the process's environment names this run (scripts get ``SOONER_RUN_ID``)."""
    try:
        return process.environ().get("SOONER_RUN_ID") == run_id
    except psutil.Error:  # not ours to read: not verified
        return False


def is_supervisor_of(process: psutil.Process, run_id: str) -> bool:
    """Whether the process is a Sooner supervisor serving this run now.

    Forked supervisors keep the launcher's command line (:data:`MARKER`); a supervisor serves
    one run after another, and while it serves one it is named after it (:func:`supervisor_name`).
    Without ``/proc`` (not Linux) supervisors cannot be named, and the command line alone counts.
    """
    try:
        if not any(MARKER in part for part in process.cmdline()):
            return False
        with open(f"/proc/{process.pid}/comm") as comm:
            return comm.read().strip() == supervisor_name(run_id)
    except psutil.Error:
        return False
    except FileNotFoundError:
        return not os.path.isdir("/proc")
    except OSError:
        return False


Recorded = tuple[int | None, float | None]  # (pid, create time) as a run recorded it


def stop_recorded(run_id: str, supervisor: Recorded, script: Recorded, group: int | None,
                  timeout_s: float = 5.0) -> tuple[list[int], bool]:
    """Kill what is left of a run from its recorded processes; (pids killed, whether none of them is left).

    Only processes that verify are touched: same pid and create time, and a
    Sooner supervisor that serves this run (:func:`is_supervisor_of`) or, for the
    script, ``SOONER_RUN_ID`` in its environment. Their descendants go too and, if the script verifies,
    its process group. A pid without a create time never verifies (its
    process had ended when it was recorded) and counts as gone.
    """
    checks = ((supervisor, lambda p: is_supervisor_of(p, run_id)), (script, lambda p: is_run_script(p, run_id)))
    roots = [p for (pid, started), verify in checks if started is not None
             and (p := process_matching(pid, started)) is not None and verify(p)]
    if group is not None and any(root.pid == script[0] == group for root in roots):  # the script leads its group
        try:
            os.killpg(group, SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + timeout_s
    # Descendants first, while a surviving supervisor still adopts orphans; then the roots.
    while roots and time.monotonic() < deadline:
        below = [child for root in roots if _running(root) for child in _children(root)]
        if not below:
            break
        signal_all(below, SIGKILL)
        time.sleep(POLL_S)
    signal_all(roots, SIGKILL)
    while any(_running(root) for root in roots) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    gone = all(process_matching(pid, started) is None for pid, started in (supervisor, script) if started is not None)
    return [root.pid for root in roots], gone
