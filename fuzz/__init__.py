"""Fuzz targets for the protocol machines (issue 2 item 10).

Every target takes one ``bytes`` input and enforces the project invariant: the machine returns
a value or raises :class:`sansio_smp.errors.RemoteProtocolError` (a typed protocol error) —
never another exception — and a router keeps serving its other connections.

Run ``python -m fuzz --help`` for the built-in mutation fuzzer, or hand a target to an external
fuzzer (atheris: ``python -m fuzz router --atheris``; any other: call
``fuzz.targets.TARGETS[name](data)``).
"""
