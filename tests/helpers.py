"""Small test helpers: real images drawn with Pillow."""

from __future__ import annotations

import io


def make_png(width: int = 800, height: int = 600, colour: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    """A real PNG drawn with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def make_jpeg(width: int = 553, height: int = 311) -> bytes:
    """A real JPEG drawn with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(buffer, "JPEG")
    return buffer.getvalue()


def slots_taken_by_processes(target, args: tuple, processes: int = 4) -> list[float]:  # type: ignore[no-untyped-def]
    """Run ``target(*args, queue)`` in ``processes`` spawned processes; every slot they report, sorted."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, queue)) for _ in range(processes)]
    for w in workers:
        w.start()
    slots = sorted(s for _ in workers for s in queue.get(timeout=60))
    for w in workers:
        w.join(timeout=60)
    return slots


def waits_of_two_generations(hook) -> list[float]:  # type: ignore[no-untyped-def]
    """Generate two images with ``hook``; the waits its pacing asked for (recorded, not slept)."""
    waits: list[float] = []
    hook.sleep = waits.append
    hook.generate_image("a", width=768, height=768)
    hook.generate_image("b", width=768, height=768)
    return waits


def reserve_pacing_slots(state_dir: str, rpm: float, count: int, queue) -> None:  # type: ignore[no-untyped-def]
    """In a child process: take ``count`` send slots and report their wall-clock times."""
    import time

    from airflow_provider_mai.pacing import RequestPacer

    seen: list[float] = []

    def clock() -> float:  # remember the instant the pacer read, to report the exact slot
        seen.append(time.time())
        return seen[-1]

    pacer = RequestPacer("shared", rpm=rpm, state_dir=state_dir, clock=clock)
    slots = []
    for _ in range(count):
        wait = pacer.reserve()
        slots.append(seen[-1] + wait)
    queue.put(slots)


def reserve_redis_pacing_slots(redis_url: str, rpm: float, count: int, queue) -> None:  # type: ignore[no-untyped-def]
    """In a child process: take ``count`` send slots from Redis and report their wall-clock times."""
    import time

    from airflow_provider_mai.pacing_redis import RedisRequestPacer

    pacer = RedisRequestPacer("shared", rpm, redis_url)
    slots = []
    for _ in range(count):
        before = time.time()
        wait = pacer.reserve()
        slots.append((before + time.time()) / 2 + wait)  # the server's "now" fell in between
    queue.put(slots)


def airflow_dags_test(dag_id: str, env: dict[str, str], conf: dict | None = None):  # type: ignore[no-untyped-def]
    """Run ``airflow dags test DAG_ID`` in a child process, as a user would; return its result."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
