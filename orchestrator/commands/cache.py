"""`badnet-prune cache`: where the shared activation cache is, how big it is and its cap; --clear empties it."""

from __future__ import annotations

from typing import Annotated

import typer

from badnet_prune.orchestrator.options import load_settings


def cache(
    clear: Annotated[bool, typer.Option("--clear", help="Remove every cache file (the folder too, if then empty).")]
    = False,
) -> None:
    """Show the activation cache: folder, file count, total size and cap (BADNET_PRUNE_CACHE_MAX_BYTES).

    Workers keep each model's early-layer activations there, evicting the least recently used files
    beyond the cap. Only the cache's own files are counted or removed: other files in the folder stay.

    Example: badnet-prune cache --clear
    """
    from badnet_prune.worker.activation_cache import cache_usage, clear_cache

    settings = load_settings()
    folder = settings.cache_dir.resolve()
    usage = cache_usage(folder)
    cap = int(settings.cache_max_bytes)
    if clear:
        removed = clear_cache(folder)
        print(f"removed {removed} files ({_size(usage.total_bytes)}) from {folder}")
        return
    state = "" if folder.is_dir() else " (not a folder: nothing is cached)" if folder.exists() else " (not made yet)"
    print(f"folder: {folder}{state}")
    print(f"files: {usage.files}")
    print(f"size: {_size(usage.total_bytes)}")
    print(f"cap: {_size(cap)}{' (no cache files are written)' if cap == 0 else ''} (BADNET_PRUNE_CACHE_MAX_BYTES)")


def _size(count: int) -> str:
    """Bytes in decimal units, as the cap is written (20GB = 20 * 10**9 bytes)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
