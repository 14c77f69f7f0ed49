"""Hostile values from scripts: progress beyond what BSON holds, a flood of malformed calls and emits.

Each trial runs its scripts on a real ``sooner worker`` process. A run must
succeed with every line it printed, its good calls recorded and its bad ones
answered (a note on stderr, an error reply on the socket), and the worker must
live on. Counted: a run that did not succeed (lost), an event stored twice or
stored without the script having been told so (doubled), a numbered line or a
reply missing, repeated or out of order, a call that vanished without being
stored or refused (lines lost), a dead worker, a ``worker error`` or a
traceback in a run's output (crashes).
"""

from __future__ import annotations

from collections import Counter

from _faults.harness import PY, Lab, Tally, finished, numbered_loss, queue, stored
from sooner.model import Run, RunStatus
from sooner.store import Store
from sooner.worker.calls import EMIT_BURST
from sooner.worker.testing import deploy_files

BIG = 100000000000000000000  # 10**20, the value

# Progress calls on stderr that BSON (or the model) cannot take; each is followed by a numbered line.
BAD_STDERR = [f"{BIG}, 10", f"-{BIG}, 10", "9223372036854775808, 10", "1e309, 10", "1, 1e400", "1, -5",
              "'x', 10", "[1], 10", "1, 10, 3", "True, 10", "0x10000000000000000, 10", "(" * 200 + "1" + ")" * 200,
              "10**20, 10", "float('nan'), 10", "current=" + str(BIG)]
STDERR_SCRIPT = PY + """import sys, time
err = sys.stderr
print('>>> sooner.progress(1, 10)', file=err, flush=True)
print('>>> sooner.progress(@BIG@, 10)', file=err, flush=True)  # within the throttle of the first
for i, args in enumerate(@BAD@):
    print(f'>>> sooner.progress({args})', file=err, flush=True)
    print(f'after {i}', flush=True)
time.sleep(0.2)  # several throttle periods, so a held value is written while the script runs
print('>>> sooner.progress(7, 10)', file=err, flush=True)
print('done', flush=True)
""".replace("@BIG@", str(BIG)).replace("@BAD@", repr(BAD_STDERR))

# JSON-RPC params the store cannot hold; every request must get an error reply, then a good one a result.
BAD_RPC = [f"[{BIG}, 10]", f"[-{BIG}, 10]", "[9223372036854775808, 10]", "[1e400, 10]", "[1, 1e400]",
           "[NaN, 10]", "[Infinity, 10]", f'{{"current": {BIG}, "max": 10}}', '["1", 10]', "[1, 2, 3]",
           "[true, 10]", "[[1], 10]"]
SOCKET_SCRIPT = PY + """import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(20)
sock.connect(sys.argv[1])
replies = sock.makefile('rb')
for i, params in enumerate(@BAD@ + ['[7, 10]']):
    sock.sendall(('{"jsonrpc": "2.0", "id": %d, "method": "progress", "params": %s}\\n' % (i, params)).encode())
    reply = json.loads(replies.readline())
    outcome = 'error %d' % reply['error']['code'] if 'error' in reply else 'result'
    print(f'reply {i} {reply.get("id")} {outcome}', flush=True)
from sooner import api
try:
    api.progress(10**20, 10)
    print('api accepted 10**20', flush=True)
except ValueError:
    print('api refused 10**20', flush=True)
api.progress(8, 10)
print('done', flush=True)
""".replace("@BAD@", repr(BAD_RPC))

VERBATIM = "#!/bin/bash\necho '>>> sooner.progress(100000000000000000000, 10)' >&2; echo ok; exit 0\n"


def progress_overflow(lab: Lab, tally: Tally, index: int) -> None:
    """Progress values beyond 64 bits (and other unstorable ones) on stderr, over the socket, via sooner.api."""
    store, env = lab.database()
    deploy_files(store, {"stderr.py": STDERR_SCRIPT, "raw_rpc.py": SOCKET_SCRIPT, "verbatim.sh": VERBATIM})
    lab.worker(env, "w1", "--capacity", "3")
    runs = {job: queue(store, job).id for job in ("stderr.py", "raw_rpc.py", "verbatim.sh")}
    expected_progress = {"stderr.py": 7, "raw_rpc.py": 8, "verbatim.sh": None}
    for job, run_id in runs.items():
        run = _succeeded(store, tally, job, run_id)
        if run is None:
            continue
        out = stored(store, run_id, "stdout").splitlines()
        if job == "stderr.py":
            lost, note = numbered_loss(out, "after ", len(BAD_STDERR))
            tally.add("lines_lost", lost + (out[-1:] != ["done"]), f"{job}: {note}")
            notes = stored(store, run_id, "system").count("sooner: ignored malformed call")
            # the second call, and every bad one: each must be answered by a note (none vanishes silently)
            tally.add("lines_lost", len(BAD_STDERR) + 1 - notes, f"{job}: {notes} notes for "
                                                                 f"{len(BAD_STDERR) + 1} bad calls")
        elif job == "raw_rpc.py":
            replies = [line.split() for line in out if line.startswith("reply ")]
            answered = replies  # (a parse error's reply has id null, as JSON-RPC says)
            tally.add("lines_lost", len(BAD_RPC) + 1 - len(answered), f"{job}: {len(answered)} of "
                                                                       f"{len(BAD_RPC) + 1} requests answered")
            accepted = [r[1] for r in replies[:-1] if r[3] == "result"]
            tally.check("lines_lost", not accepted, f"{job}: bad params accepted as a result: requests {accepted}")
            tally.check("lines_lost", "api refused 10**20" in out and out[-1:] == ["done"],
                        f"{job}: sooner.api did not refuse 10**20 or the script stopped: {out[-3:]}")
        else:
            tally.check("lines_lost", out == ["ok"], f"{job}: stdout {out!r}, expected ['ok']")
        want = expected_progress[job]
        got = run.progress.current if run.progress else None
        tally.check("lines_lost", got == want, f"{job}: last good progress {want} not recorded (got {got})")


def _tail(text: str, count: int = 3) -> str:
    return " | ".join(line[:200] for line in text.strip().splitlines()[-count:])


def _succeeded(store: Store, tally: Tally, job: str, run_id: str) -> Run | None:
    run = finished(store, run_id, 60)
    if run is None:
        tally.add("lost", 1, f"{job}: run {run_id} did not finish in 60 s")
        return None
    system = stored(store, run_id, "system")
    tally.check("lost", run.status is RunStatus.SUCCEEDED,
                f"{job}: run {run_id} ended {run.status.value} ({run.note}): "
                f"{_tail(system)} {_tail(stored(store, run_id, 'stderr'))}")
    tally.check("crashes", "worker error" not in system and "Traceback" not in system,
                f"{job}: the run's output has a worker error or a traceback: {_tail(system)}")
    return run


# -- a flood of malformed calls and emits ------------------------------------
STDERR_FLOOD = 300
FLOOD_SCRIPT = PY + """import sys
err = sys.stderr
junk = ['>>> sooner.nope(1)', '>>> sooner.emit(' + '[' * 5000 + ']' * 5000 + ')',
        '>>> sooner.emit("' + 'x' * 100000 + '")', '>>> sooner.emit("e", {"$where": 1})',
        '>>> sooner.emit("e", "\\\\ud800")', '>>> sooner.emit("", 1)', '>>> sooner.emit("e", {1: 2})',
        '>>> sooner.emit(', '>>> sooner.' + 'z' * 2000000, '>>> sooner.progress(__import__("os").getpid(), 1)']
for i in range(@N@):
    print('>>> sooner.emit("flood", {"i": %d})' % i, file=err)
    if i % 10 == 0:
        print(junk[(i // 10) % len(junk)], file=err)
        print(f'line {i // 10}', flush=True)
err.flush()
print('done', flush=True)
""".replace("@N@", str(STDERR_FLOOD))

SOCKET_EMITS = 150
RPC_FLOOD_SCRIPT = PY + """import json, socket, sys, time
path = sys.argv[1]
def connect(patient=True):
    deadline = time.monotonic() + 20
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(20)
        try:
            sock.connect(path)
            return sock, sock.makefile('rb')
        except BlockingIOError:  # the listen backlog is full (a timeout makes connect non-blocking)
            sock.close()
            if not patient or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
garbage = [b'{', b'[]', b'[1, 2]', b'{"jsonrpc": "2.0"}', b'{"jsonrpc": "2.0", "id": 1, "method": "nope"}',
           b'\\xff\\xfe\\xfd', b'[' * 100000, b'"' + b'x' * 2000000 + b'"',
           b'{"jsonrpc": "2.0", "id": 2, "method": "emit", "params": ["e", ' + b'[' * 500 + b']' * 500 + b']}',
           b'{"jsonrpc": "2.0", "id": 3, "method": "emit", "params": {"event": "e", "data": {"$where": 1}}}',
           b'{"jsonrpc": "2.0", "id": 4, "method": "emit", "params": ["e", {"a.b": 1}]}',
           b'{"jsonrpc": "2.0", "id": {"$gt": 1}, "method": "emit", "params": ["e"]}',
           b'[' + b','.join(b'{"jsonrpc": "2.0", "id": %d, "method": "nope"}' % i for i in range(500)) + b']']
for i, line in enumerate(garbage):
    sock, replies = connect()
    sock.sendall(line + b'\\n')
    reply = replies.readline()
    print(f'garbage {i} {"answered" if reply else "closed"}', flush=True)
    sock.close()
crowd = []
for _ in range(80):  # more connections than the server takes at once
    try:
        crowd.append(connect(patient=False)[0])
    except OSError:
        break
for sock in crowd:
    sock.close()
sock, replies = connect()
for i in range(@N@):
    sock.sendall(('{"jsonrpc": "2.0", "id": %d, "method": "emit", "params": ["sflood", {"i": %d}]}\\n' % (i, i)).encode())
    reply = json.loads(replies.readline())
    if 'result' in reply:
        print(f'emit {i} stored {reply["result"]["event"]}', flush=True)
    else:
        print(f'emit {i} refused {reply["error"]["code"]}', flush=True)
print('done', flush=True)
""".replace("@N@", str(SOCKET_EMITS))


def emit_flood(lab: Lab, tally: Tally, index: int) -> None:
    """A flood of emits and malformed calls on stderr, and garbage, a connection crowd and emits on the socket."""
    store, env = lab.database()
    deploy_files(store, {"flood.py": FLOOD_SCRIPT, "rpc_flood.py": RPC_FLOOD_SCRIPT})
    lab.worker(env, "w1", "--capacity", "2")
    flood, rpc = queue(store, "flood.py").id, queue(store, "rpc_flood.py").id
    run = _succeeded(store, tally, "flood.py", flood)
    if run is not None:
        out = stored(store, flood, "stdout").splitlines()
        lost, note = numbered_loss(out, "line ", STDERR_FLOOD // 10)
        tally.add("lines_lost", lost + (out[-1:] != ["done"]), f"flood.py: {note}")
        events = [e["data"]["i"] for e in store.events.list(name="flood", limit=10 * STDERR_FLOOD)]
        repeats = sum(n - 1 for n in Counter(events).values())
        tally.add("doubled", repeats, f"flood.py: {repeats} stderr events stored twice")
        refused = stored(store, flood, "system").count("emit: over the rate limit")
        tally.add("lines_lost", STDERR_FLOOD - len(set(events)) - refused,
                  f"flood.py: of {STDERR_FLOOD} emits {len(set(events))} stored and {refused} refused")
        if len(set(events)) >= STDERR_FLOOD:
            tally.remark("flood.py: the emit flood was not rate-limited")
    run = _succeeded(store, tally, "rpc_flood.py", rpc)
    if run is not None:
        out = stored(store, rpc, "stdout").splitlines()
        garbage = [line for line in out if line.startswith("garbage ")]
        unanswered = [line for line in garbage if not line.endswith("answered")]
        tally.add("lines_lost", 13 - len(garbage) + len(unanswered),
                  f"rpc_flood.py: {len(garbage)} of 13 garbage requests reported, unanswered: {unanswered}")
        lost, note = numbered_loss([line.split()[0] + " " + line.split()[1] for line in out
                                    if line.startswith("emit ")], "emit ", SOCKET_EMITS)
        tally.add("lines_lost", lost, f"rpc_flood.py: replies: {note}")
        acknowledged = {line.split()[3] for line in out if line.startswith("emit ") and " stored " in line}
        kept = [str(e["_id"]) for e in store.events.list(name="sflood", limit=10 * SOCKET_EMITS)]
        tally.add("lost", len(acknowledged - set(kept)),
                  f"rpc_flood.py: {len(acknowledged - set(kept))} acknowledged emits not stored")
        extra = len(kept) - len(set(kept) & acknowledged)
        tally.add("doubled", extra, f"rpc_flood.py: {extra} socket events stored without an acknowledgement")
        if len(kept) >= SOCKET_EMITS > EMIT_BURST:
            tally.remark("rpc_flood.py: the socket emits were not rate-limited")
