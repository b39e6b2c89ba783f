"""One error type per failure class, each with the documented exit code.

The CLI turns these into a single `error: ...` line on stderr and exits
with `code`; nothing else in the package prints tracebacks for bad input.
Kept free of heavy imports: the runtime uses it too.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1  # infer: at least one image could not be read
EXIT_USAGE = 2  # bad option or argument (click's own code)
EXIT_BAD_INPUT = 3  # missing/corrupt/wrong-kind model or data
EXIT_CHECK_FAILED = 4  # parity or accuracy check failed
EXIT_WRITE_FAILED = 5  # an output could not be written (disk full, permissions)
EXIT_MISSING_DEPENDENCY = 6  # a command needs the [train] extra
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 some inputs failed (infer); 2 usage error; "
    "3 bad input (missing, corrupt or wrong-kind model or data); "
    "4 check failed (parity); 5 cannot write output; "
    "6 missing dependency (pip install 'cifar-edge[train]'); 130 interrupted."
)


class CifarEdgeError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    code = EXIT_BAD_INPUT


class BadInputError(CifarEdgeError):
    """A model or data file is missing, unreadable or of the wrong kind."""

    code = EXIT_BAD_INPUT


class CheckFailedError(CifarEdgeError):
    """A numeric check (e.g. ONNX-vs-Keras parity) did not pass."""

    code = EXIT_CHECK_FAILED


class WriteError(CifarEdgeError):
    """An output file could not be written."""

    code = EXIT_WRITE_FAILED


class MissingDependencyError(CifarEdgeError):
    """The command needs packages from the [train] extra."""

    code = EXIT_MISSING_DEPENDENCY
