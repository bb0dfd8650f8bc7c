"""Peak Python memory of one 1024x1024 generation, as a multiple of the PNG's size.

Target: <= 4x. The answer arrives as JSON holding the PNG in base64 (4/3 of its size); a careless
client keeps the raw body, the parsed JSON, the base64 text and the bytes alive together (~4.7x).
Measured with tracemalloc (Python allocations) around ``MaiHook.generate_image`` and around the
operator writing the image to a local file; the emulator runs in its own process.

    python bench/memory.py
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

from _common import connection_json, emulator_process  # bench/ is on sys.path when run as a script


def measure(label: str, call, png_size_of) -> None:  # type: ignore[no-untyped-def]
    call()  # warm: imports, session, connection lookup, the emulator's render cache
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    result = call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size, used = png_size_of(result), peak - base
    print(f"{label:<38} PNG {size / 1e6:5.2f} MB   peak {used / 1e6:5.2f} MB   = {used / size:4.2f}x")


def main() -> None:
    with emulator_process() as url:
        os.environ["AIRFLOW_CONN_MAI_DEFAULT"] = connection_json(url)
        from airflow_provider_mai.hooks.mai import MaiHook
        from airflow_provider_mai.operators.mai import MaiGenerateImageOperator

        hook = MaiHook()
        prompt = "A lighthouse on a cliff at dawn, long exposure, 1024 square"
        measure(
            "hook.generate_image (1024x1024)", lambda: hook.generate_image(prompt), lambda r: r.size_bytes
        )

        out = Path(tempfile.mkdtemp(prefix="mai-bench-mem-"))
        ctx = {"ti": SimpleNamespace(dag_id="bench", task_id="g", map_index=-1), "run_id": "bench"}

        def operator_to_file():  # type: ignore[no-untyped-def]
            op = MaiGenerateImageOperator(task_id="g", prompt=prompt, output_path=f"{out}/image.png")
            op.hook.__dict__["settings"] = hook.settings  # measure the image path, not a connection lookup
            return op.execute(ctx)

        measure("operator -> local file (1024x1024)", operator_to_file, lambda r: r["size_bytes"])

        def operator_to_xcom():  # type: ignore[no-untyped-def]
            op = MaiGenerateImageOperator(task_id="g", prompt=prompt)
            op.hook.__dict__["settings"] = hook.settings
            return op.execute(ctx)

        measure("operator -> XCom base64 (1024x1024)", operator_to_xcom, lambda r: r["size_bytes"])


if __name__ == "__main__":
    main()
