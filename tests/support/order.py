"""A pytest plugin that runs the collected tests in another order: ``pytest -p tests.support.order``.

``--order=random`` (the default once loaded) shuffles the test files and the tests inside each;
the header prints the seed, and ``--order-seed=N`` repeats that order. ``--order=reverse`` runs
them last to first. Tests stay grouped by file and class, so a module- or class-scoped fixture (a
server) still starts once per group: what changes is which test meets a fixture, a database or a
server first, which is what an order-dependent test gets wrong. ``bash scripts/test.sh
--under-load`` uses it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

_SEED = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The two options: ``--order`` and ``--order-seed``.

    :param parser: pytest's option parser.
    """
    group = parser.getgroup("order", "test order (tests/support/order.py)")
    group.addoption(
        "--order", choices=("random", "reverse"), default="random", help="random (default) or reverse"
    )
    group.addoption("--order-seed", type=int, default=None, help="the seed of a random order to repeat")


def pytest_configure(config: pytest.Config) -> None:
    """Fix the seed once, before collection, so that the header can print it.

    :param config: the run's configuration.
    """
    seed = config.getoption("order_seed")
    config.stash[_SEED] = random.SystemRandom().randrange(1_000_000) if seed is None else seed


def pytest_report_header(config: pytest.Config) -> str:
    """Say which order this run uses, and how to repeat it.

    :param config: the run's configuration.
    """
    if config.getoption("order") == "reverse":
        return "test order: reversed (tests/support/order.py)"
    seed = config.stash[_SEED]
    return f"test order: random, seed {seed} (repeat it with -p tests.support.order --order-seed={seed})"


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: files, then classes, then tests, each level on its own.

    :param config: the run's configuration.
    :param items: the collected tests, in pytest's order.
    """
    if config.getoption("order") == "reverse":
        items.reverse()
        return
    rng = random.Random(config.stash[_SEED])
    items[:] = _shuffled(items, [lambda item: item.path, lambda item: item.parent.nodeid], rng)


def _shuffled(items: list[pytest.Item], levels: list[Callable[[pytest.Item], object]], rng: random.Random):
    """``items`` grouped by ``levels[0]`` (groups kept together), the groups and their insides shuffled."""
    if not levels:
        shuffled = list(items)
        rng.shuffle(shuffled)
        return shuffled
    groups: dict[object, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(levels[0](item), []).append(item)
    order = list(groups)
    rng.shuffle(order)
    return [item for key in order for item in _shuffled(groups[key], levels[1:], rng)]
