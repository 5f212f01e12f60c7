"""The errors latentqa raises for problems its user can fix.

Every package's errors subclass ``LatentQAError``, so a caller (the command line, the server, a
notebook) catches one class and shows the message as it is: each names the file, record,
field or argument at fault. This module imports nothing from the package, so any module may
import it without reaching back up.
"""

from __future__ import annotations


class LatentQAError(Exception):
    """A problem with latentqa's input whose message tells the user what to fix."""


class UsageError(LatentQAError, ValueError):
    """A bad argument or option (a command-line flag, a keyword, a request field)."""


class MissingFileError(LatentQAError, FileNotFoundError):
    """A file or folder the user named does not exist or lacks what it should hold."""


class ReadingError(LatentQAError, ValueError):
    """Bad input to reading: an empty dialog, no questions, a selection that reads nothing..."""
