"""taskfleet: a deployable distributed task queue on multiprocessing.managers.

The runtime (this package minus ``taskfleet.ops``) is standard library only so
the container images need no third-party packages. The Python API
(``taskfleet.connect``, ``Client``, ``Job``; see docs/api.md) is re-exported here.
"""

__version__ = "0.2.0"

# __version__ comes first: the modules imported below read it.
from taskfleet import api
from taskfleet.api import *  # noqa: F403 - the API's names, listed once in api.__all__

__all__ = [*api.__all__, "__version__"]
