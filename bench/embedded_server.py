#!/usr/bin/env python3
"""The embedded database's ceiling (not tests): a run's commands per second at 1, 4 and 8 clients.

Each client thread replays what the worker sends for one no-op run -- claim
(``find_one_and_update`` queued -> running), the start record
(``update_one``), an output chunk and an event (``insert_one``), the end
(``find_one_and_update``) -- against its own share of queued documents, and
``psutil`` reads the server's CPU time around each round. The server runs as
Sooner starts it (``sooner.store.nx_server``: nx-27017 in its one-thread-per-
connection mode); the baseline, in the same run, is the same server in
nx-27017's default asyncio mode (every command handed from the event loop to
an executor thread and back). Runs/s is the command rate divided by the five
commands of a run: what the database alone allows, before the worker spends
anything.

    python bench/embedded_server.py [--runs 1500] [--json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from pymongo import MongoClient, ReturnDocument

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.store.embedded import _answers, _free_port, server_command  # noqa: E402

COMMANDS_PER_RUN = 5
CLIENTS = (1, 4, 8)


def start_server(data_dir: Path, asyncio_mode: bool) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    command = server_command(str(data_dir), port, "bench", data_dir / "db.log", data_dir / "db.pid")
    if asyncio_mode:
        command.append("--asyncio")
    data_dir.mkdir(parents=True)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the server did not start (see {data_dir / 'db.log'})")
        time.sleep(0.05)
    return process, port


def one_round(port: int, server: psutil.Process, clients: int, runs: int) -> tuple[float, float]:
    """Replay ``runs`` runs' commands over ``clients`` threads: (commands/s, server CPU ms per command)."""
    client: MongoClient = MongoClient(port=port, directConnection=True, maxPoolSize=clients + 2)
    db = client[f"bench{clients}"]
    db.runs.insert_many([{"status": "queued", "job": "noop.sh", "n": i} for i in range(runs)])
    ids = [doc["_id"] for doc in db.runs.find({}, {"_id": 1})]

    def replay(mine: list) -> None:
        for run_id in mine:
            db.runs.find_one_and_update({"_id": run_id, "status": "queued"},
                                        {"$set": {"status": "running", "worker": "w"}},
                                        return_document=ReturnDocument.AFTER)
            db.runs.update_one({"_id": run_id}, {"$set": {"pid": 4242, "host": "h"}})
            db.run_output.insert_one({"run": run_id, "seq": 0, "text": "sooner: run started\n"})
            db.runs.find_one_and_update({"_id": run_id, "status": "running"},
                                        {"$set": {"status": "succeeded", "exit_code": 0}},
                                        return_document=ReturnDocument.AFTER)
            db.events.insert_one({"name": "job:noop.sh:succeeded", "run": run_id})

    threads = [threading.Thread(target=replay, args=(ids[k::clients],)) for k in range(clients)]
    cpu_before = sum(server.cpu_times()[:2])
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    client.drop_database(db.name)
    client.close()
    commands = runs * COMMANDS_PER_RUN
    return commands / elapsed, cpu * 1000 / commands


def measure(tmp: Path, asyncio_mode: bool, runs: int) -> dict[int, tuple[float, float]]:
    process, port = start_server(tmp / ("asyncio" if asyncio_mode else "threaded"), asyncio_mode)
    try:
        server = psutil.Process(process.pid)
        one_round(port, server, 1, 50)  # warm: tables and indexes exist, caches are full
        return {clients: one_round(port, server, clients, runs) for clients in CLIENTS}
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1500, help="runs replayed per round")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    with tempfile.TemporaryDirectory(prefix="sooner-bench-db-") as tmp:
        threaded = measure(Path(tmp), False, args.runs)
        default = measure(Path(tmp), True, args.runs)
    print(f"embedded server, the five commands of a no-op run replayed ({args.runs} runs per round):")
    for clients in CLIENTS:
        (rate, cpu), (base_rate, base_cpu) = threaded[clients], default[clients]
        print(f"  {clients} client(s): {rate:,.0f} commands/s ({rate / COMMANDS_PER_RUN:,.0f} runs/s), "
              f"server CPU {cpu:.2f} ms/command; nx-27017's asyncio mode {base_rate:,.0f} commands/s, "
              f"{base_cpu:.2f} ms/command -> ratio {rate / base_rate:.2f}")
        figure(f"embedded server: commands/s, {clients} client(s)", rate, "commands/s",
               key=f"embedded.commands_{clients}", baseline="nx-27017 asyncio mode", baseline_value=base_rate,
               note=f"{rate / COMMANDS_PER_RUN:,.0f} runs/s of database work; server CPU {cpu:.2f} ms/command "
                    f"(asyncio mode {base_cpu:.2f})")
    best = max(rate for rate, _ in threaded.values())
    print(f"  ceiling: {best:,.0f} commands/s = {best / COMMANDS_PER_RUN:,.0f} no-op runs/s of database work "
          f"on this machine, before any worker CPU")
    figure("embedded server: no-op runs/s the database allows", best / COMMANDS_PER_RUN, "runs/s",
           key="embedded.ceiling_runs", note=f"{COMMANDS_PER_RUN} commands per run, best of {CLIENTS} clients")


if __name__ == "__main__":
    main()
