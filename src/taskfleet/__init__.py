"""taskfleet: a deployable distributed task queue on multiprocessing.managers.

The runtime (this package minus ``taskfleet.ops``) is standard library only so
the container images need no third-party packages.
"""

__version__ = "0.1.0"

DEFAULT_PORT = 7451
DEFAULT_CHUNK_SIZE = 1000
