"""Process exit codes (sysexits.h names), shared by the CLI, supervisor and unit file."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 64  # EX_USAGE: bad command line
    NOINPUT = 66  # EX_NOINPUT: an input file given on the command line cannot be read
    UNAVAILABLE = 69  # EX_UNAVAILABLE: source or model unavailable at start
    SOFTWARE = 70  # EX_SOFTWARE: internal error or crash loop
    CONFIG = 78  # EX_CONFIG: invalid configuration
