"""Where the stack lives and what it is called: paths, names, ``MAI_STACK_*`` settings, its error."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
STATE_DIR = Path(os.environ.get("MAI_STACK_DIR") or ROOT / ".stack").resolve()
LOOPBACK = "127.0.0.1"
ADMIN_USER = "admin"
POOL = "mai_image_quota"
PACING_REDIS_CONN = "mai_pacing_redis"
WORKERS = ("worker1", "worker2")


class StackError(Exception):
    """Something the user must fix; the message says what (printed without a traceback)."""


def setting(name: str, default: str) -> str:
    """A ``MAI_STACK_<NAME>`` setting from the environment."""
    return os.environ.get(f"MAI_STACK_{name}") or default


def python_path() -> str:
    """A ``PYTHONPATH`` that finds ``scripts/`` (this package, ``stack_hostname``) first."""
    return os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p)
