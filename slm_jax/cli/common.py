"""What several commands share: turning the library's input errors into exit code 2."""
from __future__ import annotations

import functools
import sys


def reports(prog: str, *errors: type[BaseException]):
    """Decorates `main(argv) -> int`: any of `errors` prints `prog: Type: message` on stderr
    and exits 2 (bad input) instead of a traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv) -> int:
            try:
                return fn(argv)
            except errors as err:
                print(f"{prog}: {type(err).__name__}: {err}", file=sys.stderr)
                return 2
        return main
    return wrap
