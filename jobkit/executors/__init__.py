"""The built-in executors: ``local`` (this machine) and ``ray`` (a Ray cluster).

Each module registers through the ``jobkit_register_executors`` hook, as a
third-party executor would (see `jobkit.core.executor` and docs/executors.md).
Nothing here imports Ray until a ``ray`` executor is made.
"""
