"""Old name of :mod:`lens.store`, kept only while parallel branches still import it (issue 9).

Remaining importers: ``lens/cli.py`` (cmd_train), ``lens/encoders/trained.py``, ``lens/train/loop.py``,
``lens/train/common.py``, ``dashboard/components.py``. Switch them to ``lens.store`` and delete this file.
"""

from lens.store import (  # noqa: F401
    CACHE_DIR_ENV,
    FORMAT_VERSION,
    atomic_write,
    bytes_sha256,
    cache_key,
    default_cache_dir,
    read_json,
    resolve_cache_dir,
    write_json,
)
