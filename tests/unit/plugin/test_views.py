"""How the gallery groups a run's results: an image and the edits made from it, in pages."""

from __future__ import annotations

import pytest

from airflow_provider_mai.plugin.views import ResultKey, RunImages, paginate, pair_key, pair_up


def result(task: str, index: int = -1, uri: str | None = None, source: str | None = None) -> ResultKey:
    return ResultKey(1, task, index, None, uri, source, "edit" if source else "generate")


def labels(groups: list[list[ResultKey]]) -> list[list[str]]:
    return [[f"{item.task_id}[{item.map_index}]" for item in group] for group in groups]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("/data/a.png", "file:///data/a.png"),
        ("/data/./x/../a.png", "/data/a.png"),
        ("file:///data/a.png", "local:///data/a.png"),
        ("s3://aws_default@bucket/k/a.png", "S3://bucket/k//a.png"),
        (" /data/a.png", "/data/a.png"),
    ],
)
def test_one_file_spelled_two_ways_has_one_key(one, other):
    assert pair_key(one) == pair_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [("/data/a.png", "/data/b.png"), ("s3://b1/a.png", "s3://b2/a.png"), ("s3://b/a.png", "gs://b/a.png")],
)
def test_different_files_have_different_keys(one, other):
    assert pair_key(one) != pair_key(other)


def test_edits_follow_their_sources_in_task_and_map_index_order():
    items = [  # in XCom time order, as a run records them
        result("generate", 1, "/o/g1.png"),
        result("edit", 1, "/o/e1.png", "file:///o/g1.png"),
        result("generate", 0, "/o/g0.png"),
        result("retouch", 0, "/o/r0.png", "/photos/p.png"),  # its source is not in the run
        result("edit", 0, "/o/e0.png", "/o/g0.png"),
        result("generate", 2, "/o/g2.png"),  # never edited
        result("again", 0, "/o/a0.png", "/o/e0.png"),  # an edit of an edit
        result("edit", 3, "/o/e3.png", "/o/g0.png"),  # a second edit of generate[0]
    ]
    assert labels(pair_up(items)) == [
        ["generate[0]", "edit[0]", "again[0]", "edit[3]"],
        ["generate[1]", "edit[1]"],
        ["generate[2]"],
        ["retouch[0]"],
    ]


def test_every_result_is_in_one_group_even_in_a_cycle_or_an_edit_in_place():
    items = [
        result("a", 0, "/o/a.png", "/o/b.png"),
        result("b", 0, "/o/b.png", "/o/a.png"),
        result("inplace", 0, "/o/i.png", "/o/i.png"),
        result("twin", 0, "/o/i.png"),  # the same location twice: the first by task id is the source
    ]
    # An image edited in place is not its own source; neither is the image that shares its location.
    assert labels(pair_up(items)) == [["a[0]", "b[0]"], ["inplace[0]"], ["twin[0]"]]


def test_pages_keep_groups_whole_and_split_only_a_group_larger_than_a_page():
    pairs = [[result("g", i), result("e", i)] for i in range(5)]
    assert [[len(group) for group in page] for page in paginate(pairs, 4)] == [[2, 2], [2, 2], [2]]
    large = [result("g", 9), *(result("e", i) for i in range(6))]
    assert [[len(group) for group in page] for page in paginate([[result("x")], large], 4)] == [
        [1],
        [4],
        [3],
    ]
    assert paginate([], 4) == []


def test_a_run_says_the_same_counts_in_its_header_and_footer():
    run = RunImages("d", "r", None, None, total=7, edited=4, generated=3, group_total=4, pair_total=3)
    run.first_image, run.last_image, run.first_group, run.last_group = 1, 7, 1, 4
    assert run.counts == "7 images (3 generated, 4 edited) in 4 pairs and single images"
    assert run.showing == "Showing images 1\u20137 of 7 (pairs and single images 1\u20134 of 4)"
    single = RunImages("d", "r", None, None, total=1, generated=1, group_total=1, pair_total=0)
    single.first_image = single.last_image = single.first_group = single.last_group = 1
    assert single.counts == "1 image (1 generated, 0 edited) in 1 single image"
    assert single.showing == "Showing images 1 of 1 (single image 1 of 1)"
