"""edged: on-device object-detection daemon for edge boards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edged")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
