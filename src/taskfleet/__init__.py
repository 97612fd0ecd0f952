"""taskfleet: a deployable distributed task queue on multiprocessing.managers.

The runtime (this package minus ``taskfleet.ops``) is standard library only so
the container images need no third-party packages.
"""

__version__ = "0.2.0"
