"""Small test helpers: real images drawn with Pillow, a task context, the files a test left, DAG runs on
real Airflow."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.support.paths import EXAMPLE_DAGS, TEST_DAGS

RUN_ID = "scheduled__2026-11-25T06:00:00+00:00"


def task_context(
    task_id: str = "task", map_index: int = -1, run_id: str = RUN_ID, dag_id: str = "campaign"
) -> dict:
    """What the operators read of a task's context: the task instance's ids and the run id."""
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, map_index=map_index)
    return {"ti": ti, "run_id": run_id}


def files_in(folder: Path) -> list[str]:
    """Every file and folder name under ``folder`` (temporary files included), sorted."""
    return sorted(p.name for p in Path(folder).rglob("*")) if Path(folder).exists() else []


class SleepRecorder:
    """Stands in for time.sleep in a hook or client, so backoff choices can be read (and tests stay fast)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


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


def waits_of_two_generations(conn_id: str) -> list[float]:
    """Generate two images through connection ``conn_id``; the waits its pacing asked for
    (recorded, not slept)."""
    from airflow_provider_mai.hooks.mai import MaiHook

    waits: list[float] = []
    hook = MaiHook(conn_id, sleep=waits.append)
    hook.generate_image("a", width=768, height=768)
    hook.generate_image("b", width=768, height=768)
    return waits


def reserve_pacing_slots(state_dir: str, rpm: float, count: int, queue) -> None:  # type: ignore[no-untyped-def]
    """In a child process: take ``count`` send slots and report their wall-clock times."""
    import time

    from airflow_provider_mai.client.pacing.file_schedule import RequestPacer

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
    """In a child process: take ``count`` send slots from Redis and report them, as the server
    handed them out (its clock: the client's round trips on a busy machine say nothing)."""
    from airflow_provider_mai.client.pacing.redis_schedule import RedisRequestPacer

    pacer = RedisRequestPacer("shared", rpm, redis_url)
    slots = []
    for _ in range(count):
        pacer.reserve()
        slots.append(pacer.last_slot)
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


def load_dag(dag_id: str):
    """An example DAG (``dags/``) or a test DAG (``tests/integration/dags/``, ids starting ``mai_test_``)."""
    from airflow.dag_processing.dagbag import DagBag

    folder = TEST_DAGS if dag_id.startswith("mai_test_") else EXAMPLE_DAGS
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None):
    """Run a DAG with dag.test(); return the run, task states and XCom return values."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = load_dag(dag_id)
    run = dag.test(run_conf=conf)
    with create_session() as session:
        states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances(session=session)}
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run.run_id, key="return_value").all()
        xcoms = {(row.task_id, row.map_index): XComModel.deserialize_value(row) for row in rows}
    return run, states, xcoms


def make_tls_files(folder: Path, name: str = "test") -> tuple[Path, Path, Path]:
    """A private CA and a server certificate it signed for 127.0.0.1 / localhost.

    Returns ``(ca_pem, server_cert_pem, server_key_pem)``.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = folder / f"{name}-ca.pem", folder / f"{name}.pem", folder / f"{name}.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, cert_pem, key_pem


def chunk_bomb_png(chunks: int = 1_200_000) -> bytes:
    """A small valid PNG with ``chunks`` empty ancillary chunks before its image data (~12 bytes
    each): cheap to send, tens of seconds for a decoder's chunk loop."""
    import zlib

    png = make_png(8, 8)
    empty = b"\x00\x00\x00\x00tEXt" + zlib.crc32(b"tEXt").to_bytes(4, "big")
    return png[:33] + empty * chunks + png[33:]
