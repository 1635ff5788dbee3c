"""Settings read from the environment that every layer shares (no imports: cheap anywhere)."""

from __future__ import annotations

import os


def offline_forced() -> bool:
    """``NBCONDUCTOR_OFFLINE=1`` (``nbconductor run --offline``): every model is the offline one."""
    return os.environ.get("NBCONDUCTOR_OFFLINE", "").lower() in ("1", "true", "yes")
