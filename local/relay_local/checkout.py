"""Which code a run measured: the commit checked out, and whether the work tree differs."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def revision(root: Path, *paths: str) -> dict[str, Any]:
    """HEAD of the checkout at ``root`` and whether ``git status --porcelain`` (untracked files
    included; only under ``paths`` if given) shows changes: a dirty run measured code that no
    commit holds. None for both where git cannot tell."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args],  # noqa: S607 - the developer's git, from PATH
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", *paths)),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
