"""A DAG whose run holds every case the UI plugin shows: mapped generations, an edit of one of them,
an image kept in XCom (no output_path), a failed MAI task and a plain task returning a look-alike."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

with DAG(
    "mai_test_ui",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={"out": Param("/tmp/mai-test-ui", type="string")},
    tags=["mai", "test"],
):
    generate = MaiGenerateImageOperator.partial(
        task_id="generate", width=1024, height=768, output_path="{{ params.out }}/gen/"
    ).expand(prompt=["a blue kite over a beach", "a green kite over a field"])

    @task(multiple_outputs=False)  # one XCom: the whole record, as a MAI task pushes it
    def pick(results: list) -> dict:
        """Pass one generation on: a MAI-shaped dict returned by a task that is not a MAI task."""
        return list(results)[1]

    chosen = pick(generate.output)
    MaiEditImageOperator(
        task_id="edit", image=chosen, prompt="Add a rainbow", output_path="{{ params.out }}/edit/"
    )
    MaiGenerateImageOperator(task_id="inline", prompt="a red kite <b>at dusk</b>", width=768, height=768)
    MaiGenerateImageOperator(task_id="blocked", prompt="emulator-blocked kite", width=768, height=768)


# -- what any task can push: the MAI link and a MAI-shaped result of its own making ---------------


def _push_mai_link(ti) -> None:  # type: ignore[no-untyped-def]
    """Push the "MAI image" link XCom, as a MAI operator's task does at its end."""
    ti.xcom_push(key="_link_MaiImageLink", value="forged")


def _hostile_dag(dag_id: str) -> None:
    """A DAG whose tasks push the MAI link with results of the run conf's making."""
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        params={
            "results": Param([], type="array"),
            "inline_images": Param(0, type="integer", minimum=0),
            "inline_bytes": Param(1_000_000, type="integer", minimum=1),
        },
        tags=["mai", "test"],
    ):

        @task
        def crafted(**context) -> list:  # type: ignore[no-untyped-def]
            return list(context["params"]["results"])

        @task
        def forge(result, **context):  # type: ignore[no-untyped-def]
            """Return whatever result the run's conf asks for, marked as a MAI task's."""
            _push_mai_link(context["ti"])
            return result

        forge.expand(result=crafted())

        @task
        def inline_indexes(**context) -> list:  # type: ignore[no-untyped-def]
            return list(range(context["params"]["inline_images"]))

        @task(multiple_outputs=False)
        def inline(index: int, **context) -> dict:  # type: ignore[no-untyped-def]
            """A large image kept in XCom (as with no output_path): ``inline_bytes`` of base64."""
            import base64
            import hashlib

            _push_mai_link(context["ti"])
            data = hashlib.sha256(str(index).encode()).digest() * (
                context["params"]["inline_bytes"] * 3 // 128
            )
            return {
                "prompt": f"inline image {index}",
                "width": 1024,
                "height": 1024,
                "b64_json": base64.b64encode(data).decode(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "uri": None,
            }

        inline.expand(index=inline_indexes())


# Forged results; and, in a DAG of their own, results naming the images of another DAG.
_hostile_dag("mai_test_ui_hostile")
_hostile_dag("mai_test_ui_forger")


# -- a batch with an edit of every generation (the gallery's pairs) --------------------------------


def _edit_of(result: dict) -> dict:
    """The edit's arguments for one generation's result (``generate.output.map``)."""
    return {"image": result}


with DAG(
    "mai_test_ui_pairs",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={
        "out": Param("/tmp/mai-test-ui-pairs", type="string"),
        "count": Param(12, type="integer", minimum=1),
        # Edit inputs that are not images of the run (e.g. a product photo): each edit shows alone.
        "photos": Param([], type="array"),
    },
    tags=["mai", "test"],
):

    @task
    def products(**context) -> list:  # type: ignore[no-untyped-def]
        return [f"product {number}, studio photo" for number in range(context["params"]["count"])]

    @task
    def photos(**context) -> list:  # type: ignore[no-untyped-def]
        return list(context["params"]["photos"])

    generated = MaiGenerateImageOperator.partial(
        task_id="generate", width=768, height=768, output_path="{{ params.out }}/generated/"
    ).expand(prompt=products())
    MaiEditImageOperator.partial(
        task_id="edit", prompt="on a white background", output_path="{{ params.out }}/edited/"
    ).expand_kwargs(generated.output.map(_edit_of))
    MaiEditImageOperator.partial(
        task_id="retouch", prompt="warmer light", output_path="{{ params.out }}/retouched/"
    ).expand(image=photos())
