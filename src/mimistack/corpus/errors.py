"""What stops a corpus job before any work: `CorpusError`, and the optional packages it needs (pyarrow for every
corpus file, Ray Data for the Ray runner), imported on first use with the command that installs them.

The bottom of `corpus/`: sits on `errors`; used by every other module of the package.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import MimistackError


class CorpusError(MimistackError, ValueError):
    """Inputs, output folders or corpus files that cannot be used (with what is wrong and what to do)."""


def require_pyarrow() -> ModuleType:
    try:
        import pyarrow
    except ImportError as error:
        raise CorpusError("corpus files need pyarrow: pip install 'mimistack[corpus]'") from error
    module: ModuleType = pyarrow
    return module


def require_parquet() -> ModuleType:
    require_pyarrow()
    import pyarrow.parquet as pq

    module: ModuleType = pq
    return module


def require_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # the [data] extra must be there too
    except ImportError as error:
        raise CorpusError(
            "tokenize-corpus needs Ray Data: pip install 'mimistack[corpus]' (that is: pip install 'ray[data]' pyarrow)"
        ) from error
    return ray
