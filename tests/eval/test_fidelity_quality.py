"""SSIM / PSNR / pHash on constructed pairs; CLIP quality with a tiny random transformers CLIP;
the judge's parsing and entropy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval_cases import ASTRONAUT_FACE, blur, fill_box
from unsafe2safe_ray.eval import fidelity, judge
from unsafe2safe_ray.eval.images import parse_regions, region_mask


def test_identical_images_ssim_one(astronaut):
    mask = region_mask(parse_regions('[{"category": "people", "bbox": [165, 45, 285, 195]}]'), 512, 512)
    result = fidelity.ssim_psnr(astronaut, astronaut, mask)
    for key in ("ssim", "ssim_inside_regions", "ssim_outside_regions"):
        assert result[key] == pytest.approx(1.0)
    assert result["psnr"] == fidelity.PSNR_CAP_DB
    assert fidelity.phash_distance(astronaut, astronaut) == 0


def test_region_edit_separates_inside_from_outside(astronaut):
    regions = [{"category": "people", "bbox": list(ASTRONAUT_FACE)}]
    mask = region_mask(regions, *astronaut.shape[:2])
    assert mask.sum() == (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]) * (ASTRONAUT_FACE[3] - ASTRONAUT_FACE[1])
    result = fidelity.ssim_psnr(astronaut, fill_box(astronaut, ASTRONAUT_FACE), mask)
    assert result["ssim_inside_regions"] < 0.5 < 0.98 < result["ssim_outside_regions"]
    assert result["psnr_outside_regions"] == fidelity.PSNR_CAP_DB  # not one pixel changed there
    assert result["psnr_inside_regions"] < 20
    assert result["ssim_inside_regions"] < result["ssim"] < result["ssim_outside_regions"]


def test_no_regions_leaves_inside_undefined(astronaut):
    result = fidelity.ssim_psnr(astronaut, blur(astronaut, 2), np.zeros(astronaut.shape[:2], bool))
    assert math.isnan(result["ssim_inside_regions"]) and math.isnan(result["psnr_inside_regions"])
    assert result["ssim_outside_regions"] == pytest.approx(result["ssim"])
    assert 0.3 < result["ssim"] < 1.0


def test_phash_distance_grows_with_change(astronaut, page_rgb):
    from PIL import Image

    page = np.asarray(Image.fromarray(page_rgb).resize((512, 512)))
    assert fidelity.phash_distance(astronaut, blur(astronaut, 1)) < fidelity.phash_distance(astronaut, page)


def test_lpips_reports_why_it_cannot_run(monkeypatch, tmp_path):
    import sys
    import types

    # Without the package (a None entry makes `import lpips` raise ImportError, on any machine).
    monkeypatch.setitem(sys.modules, "lpips", None)
    assert fidelity.lpips_unavailable_reason("vgg") == "the lpips package is not installed"
    # With the package but no backbone weights in the torch hub cache.
    monkeypatch.setitem(sys.modules, "lpips", types.ModuleType("lpips"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert fidelity.lpips_unavailable_reason("vgg") == f"the vgg backbone weights are not in {tmp_path / 'hub' / 'checkpoints'}"


@pytest.fixture(scope="module")
def tiny_clip_scorer():
    from unsafe2safe_ray.eval.quality import ClipScorer

    return ClipScorer("tiny://clip")


def test_clip_scores_with_tiny_clip(tiny_clip_scorer, astronaut, page_rgb):
    rows = tiny_clip_scorer.score_pairs(
        [astronaut, astronaut, astronaut],
        [astronaut, page_rgb, page_rgb],
        ["an astronaut in a suit", "an astronaut in a suit", None],
        ["an astronaut in a suit", "a page of printed text", None],
    )
    same, changed, uncaptioned = rows
    assert same["clip_image_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert changed["clip_image_similarity"] < same["clip_image_similarity"]
    assert math.isnan(same["clip_directional"])  # no caption change: direction undefined
    assert -1.0 <= changed["clip_directional"] <= 1.0
    assert 0.0 <= changed["clip_score"] <= 100.0
    assert math.isnan(uncaptioned["clip_score"]) and math.isnan(uncaptioned["clip_directional"])
    # The text tower is really used: different captions give different scores.
    other = tiny_clip_scorer.score_pairs([astronaut], [page_rgb], ["zzzz qqqq"], [None])[0]
    assert other["clip_score"] != changed["clip_score"] or changed["clip_score"] == 0.0


def test_judge_parsing_and_entropy():
    assert judge.parse_score('{"score": 73}') == 73.0
    assert judge.parse_score("I'd say 40 out of 100") == 40.0
    assert math.isnan(judge.parse_score('{"score": 180}')) and math.isnan(judge.parse_score("no idea"))
    assert judge.parse_race('{"race": "southeast_asian"}') == "southeast_asian"
    assert judge.parse_race("East Asian") == "east_asian"
    assert judge.parse_race('{"race": "none"}') == judge.NO_PERSON
    assert judge.parse_race("purple") is None
    # Normalized over the 7 labels asked for, not over the labels that happened to appear.
    assert judge.normalized_entropy(["white", "black"]) == pytest.approx(math.log(2) / math.log(7))
    assert judge.normalized_entropy(list(judge.RACE_LABELS)) == pytest.approx(1.0)
    assert judge.normalized_entropy(["white"] * 5 + [None, "none"]) == 0.0
    assert math.isnan(judge.normalized_entropy([None, "none"]))


def test_side_by_side_keeps_both_images(astronaut, page_rgb):
    canvas = judge.side_by_side(astronaut, page_rgb, height=100)
    assert canvas.shape[0] == 120 and canvas.shape[1] > 200


def test_judge_with_tiny_vlm(astronaut, page_rgb):
    """The real transformers engine on the tiny random Qwen2.5-VL, decoding under the answers'
    JSON schemas: every answer parses into a score and a label."""
    vlm = judge.Judge("transformers", "tiny://qwen2_5_vl", max_new_tokens=48)
    results = vlm.judge_pairs([astronaut, page_rgb], [fill_box(astronaut, ASTRONAUT_FACE), page_rgb])
    assert len(results) == 2
    for row in results:
        assert 0 <= row["vlm_score"] <= 100
        assert row["race_original"] in (*judge.RACE_LABELS, judge.NO_PERSON)


def test_judge_parses_planted_answers_and_counts_the_rest(tmp_path, astronaut, page_rgb):
    """The fake engine answers from a file: a planted score and label come back exactly."""
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([{"score": 73}, {"race": "southeast_asian"}]))
    results = judge.Judge("fake", str(answers)).judge_pairs([astronaut, page_rgb], [astronaut, page_rgb])
    assert [r["vlm_score"] for r in results] == [73.0, 73.0]
    assert {r["race_original"] for r in results} == {"southeast_asian"}
    assert math.isnan(judge.parse_score("no number here")) and judge.parse_race("a dog") is None
