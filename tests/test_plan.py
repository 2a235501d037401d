"""Listing, manifests, deterministic plans, plan reuse and shard selection."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _corpus import write_good_images
from unsafe2safe_ray.plan.listing import InputError, list_input
from unsafe2safe_ray.plan.planner import PlanError, load_plan, make_or_load_plan, parse_shard_list, select_shards
from unsafe2safe_ray.storage.layout import OutputLayout


def test_prefix_listing_is_sorted_recursive_and_labels_come_from_folders(tmp_path):
    write_good_images(tmp_path / "in", 6, classes=3)
    (tmp_path / "in" / "root.JPEG").write_bytes(b"x")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    listing = list_input(str(tmp_path / "in"))
    assert listing.uris == sorted(listing.uris)
    assert len(listing.uris) == 7  # extensions are case-insensitive; .txt is skipped
    labels = dict(zip([u.rsplit("/", 1)[-1] for u in listing.uris], listing.labels))
    assert labels["img00000.jpg"] == "class0" and labels["img00004.jpg"] == "class1"
    assert labels["root.JPEG"] is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests_with_relative_uris_and_labels(tmp_path, fmt):
    write_good_images(tmp_path, 3, classes=1)
    rows = [{"uri": f"class0/img{i:05d}.jpg", "label": f"l{i}"} for i in (2, 0, 1)]
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("uri,label\n" + "".join(f"{r['uri']},{r['label']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    listing = list_input(str(path))
    assert [u.rsplit("/", 1)[-1] for u in listing.uris] == ["img00000.jpg", "img00001.jpg", "img00002.jpg"]
    assert listing.labels == ["l0", "l1", "l2"]
    assert all(u.startswith("file://") or u.startswith("/") for u in listing.uris)


def test_manifest_without_uri_column_is_a_clear_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path\na.jpg\n")
    with pytest.raises(InputError, match="no 'uri' column"):
        list_input(str(path))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_input(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        list_input(str(tmp_path / "empty"))


def test_plan_is_deterministic_saved_and_reused(tmp_path):
    write_good_images(tmp_path / "in", 7)
    layout = OutputLayout(str(tmp_path / "out"))
    plan = make_or_load_plan(layout, str(tmp_path / "in"), 3)
    assert plan.shard_counts == [3, 3, 1]
    table = pq.read_table(layout.plan_images)
    assert table.column("key").to_pylist() == [f"{i:09d}" for i in range(7)]
    assert table.column("shard").to_pylist() == [0, 0, 0, 1, 1, 1, 2]
    again = make_or_load_plan(layout, str(tmp_path / "in"), 3)
    assert again == plan == load_plan(layout)
    layout2 = OutputLayout(str(tmp_path / "out2"))
    assert make_or_load_plan(layout2, str(tmp_path / "in"), 3).listing_digest == plan.listing_digest


def test_changed_listing_stops_the_rerun(tmp_path):
    write_good_images(tmp_path / "in", 4)
    layout = OutputLayout(str(tmp_path / "out"))
    make_or_load_plan(layout, str(tmp_path / "in"), 2)
    write_good_images(tmp_path / "extra", 1)
    (tmp_path / "extra" / "class0" / "img00000.jpg").rename(tmp_path / "in" / "class0" / "new.jpg")
    with pytest.raises(PlanError, match="input listing changed"):
        make_or_load_plan(layout, str(tmp_path / "in"), 2)


def test_shard_selection():
    from unsafe2safe_ray.plan.planner import Plan

    plan = Plan("x", "prefix", 25, 2, [2] * 12 + [1], "d")
    commits = {0: {"counts": {"failed": 0}}, 3: {"counts": {"failed": 2}}, 7: {"counts": {"failed": 1}}}
    assert select_shards("pending", plan, commits) == [1, 2, 4, 5, 6, 8, 9, 10, 11, 12]
    assert select_shards("failed", plan, commits) == [3, 7]
    assert select_shards("all", plan, commits) == list(range(13))
    assert select_shards("3,7-9", plan, commits) == [3, 7, 8, 9]
    assert parse_shard_list("1, 1-2", 13) == [1, 2]
    for bad in ("x", "9-7", "13", "2-40"):
        with pytest.raises(PlanError):
            parse_shard_list(bad, 13)
