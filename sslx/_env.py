"""Environment variables set for the duration of a block, then restored (or removed) as they were."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def scoped_environ(settings: Mapping[str, str]) -> Iterator[None]:
    """Set `settings` in os.environ inside the block; afterwards every key has its old value or is unset again."""
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
