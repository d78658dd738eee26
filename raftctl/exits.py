"""raftctl's exit codes, shared by the one-shot commands and the piped shell."""

from __future__ import annotations

from raftctl.client import ClientError, InvalidArgument, NotFound, OutcomeUnknown, Unavailable

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INVALID = 4
EXIT_ERROR = 5
EXIT_OUTCOME_UNKNOWN = 6
EXIT_INTERRUPTED = 130


def exit_code(error: ClientError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, OutcomeUnknown):
        return EXIT_OUTCOME_UNKNOWN
    if isinstance(error, Unavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, InvalidArgument):
        return EXIT_INVALID
    return EXIT_ERROR
