"""One error hierarchy: every failure a user should see as a clear line is one of these.

tasks.py maps them to exit codes; nothing below it prints tracebacks for them.
"""

EXIT_OK = 0
EXIT_NODES_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CollectorError(Exception):
    """Base class; `exit_code` is what the process exits with."""

    exit_code = EXIT_NODES_FAILED


class UsageError(CollectorError):
    """Bad input or configuration: a flag, a config key, a missing run, an unknown cluster."""

    exit_code = EXIT_BAD_INPUT


class StageError(CollectorError):
    """A stage could not do its work for reasons outside the user's input (AWS, S3, the network)."""

    exit_code = EXIT_NODES_FAILED


class Interrupted(CollectorError):
    """Ctrl-C: the state file is consistent and the next `invoke run` resumes."""

    exit_code = EXIT_INTERRUPTED


class NothingToDo(CollectorError):
    """Not a failure: the input asked for nothing (an empty list from a pipeline); the message says so."""

    exit_code = EXIT_OK


class SandboxError(UsageError):
    """The local emulated HyperPod cannot be started or used here."""
