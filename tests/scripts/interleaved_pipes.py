#!/usr/bin/env python3
"""Lines on both pipes whose order the kernel can tell: before each step, wait until the worker has read both pipes.

Step i writes `solo i` to stdout alone, waits, then `err i` to stderr and at once `out i` to stdout, and waits
again. The worker cannot have read anything of a step before it read all of the one before, and within a step
stderr became readable first. So the one order to store is solo 0, err 0, out 0, solo 1, ...
(FIONREAD on a pipe's write end gives the bytes still unread.)
"""
import array
import fcntl
import json
import os
import termios
import time

count = json.loads(os.environ.get("SOONER_DATA") or "null") or 200


def unread(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def wait_until_read() -> None:
    deadline = time.monotonic() + 10
    while (unread(1) or unread(2)) and time.monotonic() < deadline:
        time.sleep(0.0001)


for i in range(count):
    wait_until_read()
    os.write(1, b"solo %d\n" % i)
    wait_until_read()
    os.write(2, b"err %d\n" % i)
    os.write(1, b"out %d\n" % i)
