"""Helpers every other package uses, and that import none of them.

- `common.files`: file checksums, atomic writes, advisory locks;
- `common.processes`: child processes in their own process group, free loopback ports;
- `common.errors`: `UserError`, the one exception type the CLI shows without a traceback.

The dependency arrows of the project run ``common`` ← ``streams`` ← ``serving`` ← ``trainer``
← ``hhh`` (``tests/test_architecture.py`` checks them).
"""
