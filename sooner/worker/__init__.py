"""Running jobs: the worker loop, the script process and its protocol.

:class:`~sooner.worker.loop.Worker` is the entry point; see
:mod:`sooner.worker.runner` for how one run executes and
:mod:`sooner.worker.tree` for how a deployed tree reaches the worker.
"""
