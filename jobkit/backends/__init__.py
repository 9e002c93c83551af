"""jobkit's built-in output backends, each registered as a plugin.

- ``memory``: the whole output in RAM.
- ``tempfile``: spooled to unnamed files on disk; RAM stays bounded.
- ``ring``: the last ``capacity`` bytes of each stream in RAM.
"""
