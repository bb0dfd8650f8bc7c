"""Where things are, for tests at any depth."""

from __future__ import annotations

from pathlib import Path

#: The repository's root folder.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The example DAGs (documentation that runs).
EXAMPLE_DAGS = REPO_ROOT / "dags"
#: The suite's own DAGs (ids starting ``mai_test_``).
TEST_DAGS = REPO_ROOT / "tests" / "integration" / "dags"
