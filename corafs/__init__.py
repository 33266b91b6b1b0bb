"""corafs: a version-controlled store for ML model checkpoints that you use as a filesystem."""
from .core import Commit, CommitResult, Repository
from .errors import CorafsError

__version__ = "0.1.0"
__all__ = ["Repository", "Commit", "CommitResult", "CorafsError", "__version__"]
