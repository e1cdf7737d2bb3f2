"""Shared entry-point wrapper for the command-line tools of this package.

`run_cli(main)` calls `main()` and turns the outcome into a process exit status:

* a normal return: exit with the returned int (None counts as 0);
* `UserError`: print ``error: <message>`` to stderr and exit 2, or re-raise (full traceback)
  when ``--debug`` is among the command-line arguments;
* `KeyboardInterrupt`: print a short note to stderr and exit 130.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional, Sequence

from model.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def note(message: str) -> None:
    """A note or warning for the user: stderr, so that stdout keeps only results."""
    print(message, file=sys.stderr, flush=True)


def run_cli(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None,
            debug: Optional[bool] = None) -> NoReturn:
    """Run ``main`` (called as ``main()``, or ``main(argv)`` when argv is given) and exit.
    ``debug`` (default: whether ``--debug`` is among the arguments) keeps full tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args if debug is None else debug
    try:
        status = main() if argv is None else main(list(argv))
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0 if status is None else int(status))
