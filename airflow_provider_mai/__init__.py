"""Apache Airflow provider for Microsoft Foundry's MAI image models.

Importing this package is cheap on purpose: DAG files import the operators at every parse, so
heavy modules (requests, azure-identity, Pillow) are imported inside the functions that use them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
