"""``python -m sansio_smp.server_cli``: entry point of ``smp-server``. The program lives in
:mod:`transports.server_cli` (it writes files and runs the router service); importing this name
gives that module itself, so existing imports and patches keep working."""

import sys

from transports import server_cli as _program

if __name__ == "__main__":  # pragma: no cover
    sys.exit(_program.main())
else:
    sys.modules[__name__] = _program
