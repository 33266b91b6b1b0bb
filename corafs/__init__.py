"""corafs: a version-controlled store for ML model checkpoints that you use as a filesystem."""
from .core import Commit, CommitResult, Repository
from .errors import CorafsError

__version__ = "0.1.0"


def open(repo, spec: str):  # noqa: A001 - named like the builtin on purpose
    """``corafs.open("./repo", "main~2:model.pth")``: a stored file as a seekable read-only
    binary file object, decoding only what is read (``torch.load`` accepts it). ``repo`` is a
    path or a Repository; a path is opened for the file's lifetime."""
    from .core.fileobj import open_file
    if isinstance(repo, Repository):
        return open_file(repo, spec)
    r = Repository(repo)
    try:
        return open_file(r, spec, owner=r)
    except BaseException:
        r.close()
        raise


__all__ = ["Repository", "Commit", "CommitResult", "CorafsError", "open", "__version__"]
