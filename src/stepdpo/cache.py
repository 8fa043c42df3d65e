"""Where the project keeps what it builds once (converted and built models): $STEPDPO_CACHE, else ~/.cache/stepdpo."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models live: $STEPDPO_CACHE, else ~/.cache/stepdpo."""
    return Path(os.environ.get("STEPDPO_CACHE", Path.home() / ".cache" / "stepdpo"))
