"""FaceSim / re-detection and TextSim / CER on constructed pairs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval_cases import ASTRONAUT_FACE, blur, fill_box
from unsafe2safe_ray.detectors import identity
from unsafe2safe_ray.eval import privacy
from unsafe2safe_ray.eval.options import EvalOptions
from unsafe2safe_ray.eval.runner import summarize


def test_identical_faces_score_one(face_comparer, astronaut):
    result = face_comparer.compare(astronaut, astronaut)
    assert result["face_count_original"] == 1
    assert result["face_sim"] == pytest.approx(1.0, abs=1e-4)
    assert result["face_count_redetected"] == 1 and result["face_identity_matches"] == 1


def test_blurring_lowers_face_similarity(face_comparer, astronaut):
    light = face_comparer.compare(astronaut, blur(astronaut, 2))["face_sim"]
    heavy = face_comparer.compare(astronaut, blur(astronaut, 6))
    # A heavy blur either hides the face from the detector or changes its embedding more.
    assert heavy["face_count_redetected"] == 0 or heavy["face_sim"] < light < 1.0


def test_filled_face_is_counted_not_skipped(face_comparer, astronaut):
    result = face_comparer.compare(astronaut, fill_box(astronaut, ASTRONAUT_FACE))
    assert result["face_count_original"] == 1
    assert result["face_count_redetected"] == 0
    assert math.isnan(result["face_best_similarities"][0])
    summary = summarize([dict(result, status="edited", method="m", ssim=1.0)], EvalOptions(metrics=("faces",)))
    assert summary["faces_original"] == 1
    assert summary["face_redetection_rate"] == 0.0
    # The paper's mean has nothing left to average: the loophole shows as a skipped face.
    assert summary["face_sim"] is None
    assert summary["face_skipped_by_paper_rate"] == 1.0


def test_paper_facesim_loophole_with_two_faces(face_comparer, astronaut):
    """Two copies of one person, one filled: the paper's FaceSim still reads 1.0 because the
    removed face's best match is the surviving copy; the re-detection rate shows 1 of 2."""
    original = np.concatenate([astronaut, astronaut], axis=1)
    anonymized = np.concatenate([astronaut, fill_box(astronaut, ASTRONAUT_FACE)], axis=1)
    result = face_comparer.compare(original, anonymized)
    assert result["face_count_original"] == 2
    assert result["face_sim"] == pytest.approx(1.0, abs=1e-3)
    assert result["face_count_redetected"] == 1


def test_box_iou():
    from unsafe2safe_ray.detectors.geometry import box_iou

    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == 1.0
    assert box_iou(a, np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20, 20, 30, 30.0])) == 0.0


def test_arcface_absent_falls_back_to_dlib(tmp_path):
    assert identity.ArcFaceEmbedder.find_model(str(tmp_path), "antelopev2") is None
    assert identity.load_identity_embedder("auto", str(tmp_path)).name == "dlib"
    with pytest.raises(FileNotFoundError):
        identity.load_identity_embedder("arcface", str(tmp_path))


def test_arcface_pack_on_disk_is_used(tmp_path, astronaut, face_comparer):
    """A stand-in recognition model (112x112 -> 512, random projection) in the pack layout is
    found, loaded with onnxruntime and fed aligned crops: identical faces give cosine 1."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3 * 112 * 112, 512)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["emb"])],
        "stand_in_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 512])],
        [weight],
    )
    pack = tmp_path / "models" / "antelopev2"
    pack.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(pack / "glintr100.onnx"))
    embedder = identity.load_identity_embedder("auto", str(tmp_path))
    assert embedder.name == "arcface"
    comparer = privacy.FaceComparer(face_comparer.detector, embedder)
    same = comparer.compare(astronaut, astronaut)
    assert same["face_sim"] == pytest.approx(1.0, abs=1e-4) and same["face_identity_matches"] == 1
    moved = comparer.compare(astronaut, blur(astronaut, 3))
    assert moved["face_count_redetected"] == 0 or moved["face_sim"] < same["face_sim"]


# -- text --------------------------------------------------------------------------------------


def test_token_set_loophole_next_to_cer():
    original = "Jane Doe 42 Elm Street Springfield phone 555 0100"
    subset = "Jane Doe"
    result = privacy.compare_texts(original, subset)
    assert result["text_sim_token_set"] == 1.0  # the paper's number: "fully leaked"... or not?
    assert result["text_cer"] == pytest.approx(1 - len("jane doe") / len(original.lower()))
    assert result["text_sim_levenshtein"] < 0.3


def test_no_original_text_is_excluded():
    assert privacy.compare_texts("", "some text") == {
        "text_sim_token_set": None, "text_sim_levenshtein": None, "text_cer": None}
    rows = [dict(status="edited", method="m", ssim=1.0, **privacy.compare_texts("", "x")),
            dict(status="edited", method="m", ssim=1.0, **privacy.compare_texts("abc def", "abc def"))]
    summary = summarize(rows, EvalOptions(metrics=("text",)))
    assert summary["text_images"] == 1 and summary["text_cer"] == 0.0


def test_ocr_page_identical_removed_and_subset(text_reader, page_rgb):
    text = text_reader.read_text(page_rgb)
    assert len(text) > 100
    same = privacy.compare_texts(text, text_reader.read_text(page_rgb))
    assert same == {"text_sim_token_set": 1.0, "text_sim_levenshtein": 1.0, "text_cer": 0.0}

    removed = privacy.compare_texts(text, text_reader.read_text(np.full_like(page_rgb, 255)))
    assert removed["text_cer"] == pytest.approx(1.0)

    # Keep the top lines only, cutting in the white gap between two lines of text.
    ink_rows = np.where((page_rgb[:, :, 0] < 100).sum(axis=1) > 3)[0]
    gaps = [r for r in range(ink_rows[0], ink_rows[-1]) if r not in set(ink_rows)]
    cut = gaps[len(gaps) // 2]
    top = page_rgb.copy()
    top[cut:] = 255
    subset = privacy.compare_texts(text, text_reader.read_text(top))
    assert subset["text_sim_token_set"] >= 0.95
    assert subset["text_cer"] > 0.25
