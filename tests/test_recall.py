"""Detection recall (issue 13) on the corpus of ``tests/_recall_corpus.py``, through the cpu
profile's detect and edit stages, judged by independent checks: dlib identity distance of each
planted face against the same place of the output, and OCR of each planted string read upright
in its known box of the output. The corpus is built and processed once per session.
"""

from __future__ import annotations

import pytest

import _recall_corpus as rc


@pytest.fixture(scope="module")
def measured():
    corpus = rc.build()
    results = rc.run_cpu_profile(corpus)
    records = rc.measure(results, corpus, rc.Judges())
    print("\n" + rc.table(records))  # the recall table, shown with pytest -s
    return records


def _items(measured, kind, bucket_prefix=""):
    items = [r for r in measured if r["kind"] == kind and r["bucket"].startswith(bucket_prefix)]
    assert items, (kind, bucket_prefix)
    return items


def _show(r):
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "error"} | {
        "error": (r.get("error") or "")[:200]}


def test_every_corpus_image_is_published_edited(measured):
    assert {r["image"]: r["status"] for r in measured if r["status"] != "edited"} == {}


@pytest.mark.parametrize("bucket", ["64-200 px", "frame-filling"])
def test_medium_and_frame_filling_faces_lose_their_identity(measured, bucket):
    for r in _items(measured, "face", bucket):
        assert r["detected"], _show(r)
        assert r["distance_before"] < 0.6  # the planted face is a face dlib can compare
        assert r["distance_after"] >= 0.6, _show(r)


def test_small_faces_in_the_crowd(measured):
    # CenterFace alone found 1 of the 16 faces of 12-20 px (brow to chin) and 7 of the 12 of
    # 24-48 px; the MTCNN small-face pass finds 12 and 12. Misses left: the camera man at 12-16
    # px and one 14 px LFW face. Every crowd face the detector found loses its identity.
    small = _items(measured, "face", "12-20")
    assert sum(r["detected"] for r in small) >= 11, [_show(r) for r in small]
    medium = _items(measured, "face", "24-48")
    assert all(r["detected"] for r in medium), [_show(r) for r in medium]
    for r in small + medium:
        if r["detected"]:
            assert r["distance_after"] >= 0.6, _show(r)


@pytest.mark.parametrize("bucket", ["0 deg", "90 deg", "180 deg", "270 deg", "vertical"])
def test_text_in_every_orientation_is_unreadable_after_the_edit(measured, bucket):
    for r in _items(measured, "text", bucket):
        assert r["similarity_before"] > 0.8, _show(r)  # the planted string reads in the original
        assert r["detected"], _show(r)
        assert r["similarity_after"] <= 0.2, _show(r)


def test_plates_of_every_size_are_found_and_unreadable(measured):
    for r in _items(measured, "plate"):
        assert r["detected"], _show(r)
        assert r["similarity_after"] <= 0.2, _show(r)
