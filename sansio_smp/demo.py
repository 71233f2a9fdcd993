"""``python -m sansio_smp.demo``: the README's demo. The program lives in :mod:`transports.demo`
(it does I/O: a TLS router and clients on localhost); this is only its entry point."""

import sys

from transports.demo import main, run_demo  # noqa: F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
