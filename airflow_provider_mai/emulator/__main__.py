"""Command line: ``python -m airflow_provider_mai.emulator --port 8790 --api-key KEY``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from airflow_provider_mai.emulator.protocol import DEFAULT_DEPLOYMENTS, MODELS
from airflow_provider_mai.emulator.server import (
    DEFAULT_BACKLOG,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RENDERS,
    MaiEmulator,
    listen_backlog_cap,
)


def _deployment(text: str) -> tuple[str, str]:
    name, sep, model = text.partition("=")
    if not sep or not name or model not in MODELS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=MODEL with MODEL one of {', '.join(MODELS)}; got {text!r}"
        )
    return name, model


def _latency(text: str) -> float | tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        return (float(low), float(high)) if sep else float(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW-HIGH, got {text!r}") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The emulator's command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_mai.emulator",
        description="Serve a local emulation of the Microsoft Foundry MAI image API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8790, help="port (default 8790; 0 picks a free one)")
    parser.add_argument("--api-key", default="emulator-key", help="API key to accept (default emulator-key)")
    parser.add_argument("--any-key", action="store_true", help="accept any non-empty API key")
    parser.add_argument(
        "--rpm", type=int, default=None, help="requests per minute per deployment (default: no limit)"
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default=0.0,
        help="seconds per answer, or a LOW-HIGH range (the real service takes ~40 s at 1024x1024)",
    )
    parser.add_argument(
        "--deployment",
        type=_deployment,
        action="append",
        default=None,
        metavar="NAME=MODEL",
        help="a deployment (repeatable); default: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_DEPLOYMENTS.items()),
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share of requests (0-1) answered with a random transient fault: 429, 5xx, 408, "
        "dropped or truncated connections (default 0)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for --fault-rate draws")
    parser.add_argument(
        "--max-concurrency",
        type=_count,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help=f"connections served at once, more wait in the backlog (default {DEFAULT_MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--backlog",
        type=_count,
        default=DEFAULT_BACKLOG,
        metavar="N",
        help="connections waiting to be accepted when every slot is taken; past it they are reset "
        f"(default {DEFAULT_BACKLOG}; the kernel caps it at net.core.somaxconn)",
    )
    parser.add_argument(
        "--max-renders",
        type=_count,
        default=DEFAULT_MAX_RENDERS,
        metavar="N",
        help="images drawn at once, to bound memory when answers come together "
        f"(default {DEFAULT_MAX_RENDERS})",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def emulator_from_args(args: argparse.Namespace) -> MaiEmulator:
    """The emulator the parsed command line describes (not started).

    :param args: what :func:`build_parser` parsed.
    """
    return MaiEmulator(
        host=args.host,
        port=args.port,
        api_key=None if args.any_key else args.api_key,
        deployments=dict(args.deployment) if args.deployment else None,
        rpm=args.rpm,
        latency=args.latency,
        fault_rate=args.fault_rate,
        seed=args.seed,
        verbose=args.verbose,
        max_concurrency=args.max_concurrency,
        backlog=args.backlog,
        max_renders=args.max_renders,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM."""
    emulator = emulator_from_args(build_parser().parse_args(argv))
    cap = listen_backlog_cap()
    if cap is not None and emulator.backlog > cap:
        print(
            f"note: the kernel caps the listen backlog at {cap} (net.core.somaxconn), not {emulator.backlog}",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emulator.start()
    print(f"MAI emulator listening on {emulator.url}", flush=True)
    print("deployments: " + ", ".join(f"{k} ({v})" for k, v in emulator.deployments.items()), flush=True)
    try:
        # Wake now and then: a signal the kernel hands to one of the connection threads is only
        # acted on when the main thread runs Python again, which a bare wait() never does.
        while not stop.wait(0.25):
            pass
    finally:
        emulator.stop()
        print(emulator.summary(), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
