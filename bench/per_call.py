"""Per-call overhead of ``MaiHook.generate_image`` against a bare HTTP client, same emulator.

Three clients ask the same emulator for the same 1024x1024 image (the emulator's render is cached,
so the server's share is constant):

- ``docs sample``: a fresh ``requests.post`` per call, ``.json()``, base64 decode - the
  documentation's sample code, which opens a new connection every time;
- ``bare session``: one ``requests.Session``, ``.post`` + ``.json()`` + base64 decode - the floor;
- ``MaiHook``: one hook (connection read once, pooled session), with everything the hook adds:
  validation, the retry loop, PNG checks, size from the header, sha256.

Rounds interleave the clients so that machine noise hits all alike. Target: hook <= 1.10x the bare
session, and faster than the docs sample. Figures are ratios; absolute times depend on the machine.

    python bench/per_call.py [--rounds 15 --calls 10]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time

from _common import API_KEY, connection_json, emulator_process  # bench/ is on sys.path

PROMPT = "A lighthouse on a cliff at dawn"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()

    with emulator_process() as url:
        os.environ["AIRFLOW_CONN_MAI_DEFAULT"] = connection_json(url)
        import requests

        from airflow_provider_mai.hooks.mai import MaiHook

        endpoint = f"{url}/mai/v1/images/generations"
        body = {"model": "mai-image-2-5", "prompt": PROMPT, "width": args.size, "height": args.size}
        headers = {"api-key": API_KEY}
        session = requests.Session()
        hook = MaiHook()

        def docs_sample() -> bytes:
            answer = requests.post(endpoint, headers=headers, json=body, timeout=300)
            answer.raise_for_status()
            return base64.b64decode(answer.json()["data"][0]["b64_json"])

        def bare_session() -> bytes:
            answer = session.post(endpoint, headers=headers, json=body, timeout=300)
            answer.raise_for_status()
            return base64.b64decode(answer.json()["data"][0]["b64_json"])

        def mai_hook() -> bytes:
            return hook.generate_image(PROMPT, width=args.size, height=args.size).png

        clients = {"docs sample": docs_sample, "bare session": bare_session, "MaiHook": mai_hook}
        sizes = {name: len(call()) for name, call in clients.items()}  # warm up; all get the same PNG
        assert len(set(sizes.values())) == 1, sizes
        per_call: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, call in clients.items():
                started = time.perf_counter()
                for _ in range(args.calls):
                    call()
                per_call[name].append((time.perf_counter() - started) / args.calls * 1000)

    floor = statistics.median(per_call["bare session"])
    png_mb = next(iter(sizes.values())) / 1e6
    print(
        f"{args.size}x{args.size} PNG of {png_mb:.2f} MB; "
        f"{args.rounds} rounds x {args.calls} calls per client"
    )
    for name, times in per_call.items():
        median = statistics.median(times)
        print(f"{name:<13} median {median:7.2f} ms/call   {median / floor:5.3f}x bare session")


if __name__ == "__main__":
    main()
