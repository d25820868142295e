"""Where sfedlora keeps prepared data and converted models: $SFEDLORA_CACHE or ~/.cache/sfedlora."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("SFEDLORA_CACHE", Path.home() / ".cache" / "sfedlora"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
