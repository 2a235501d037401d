"""Ray Train fine-tune of the editor on a triplet set made by the job itself (tiny models, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unsafe2safe_ray import open_output, records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job

from _train_inputs import FIT_TWO_CPUS, INPUTS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local", "tiny_models")]

# Tiny, fast and CPU-sized; min_clip_ratio 0: random tiny-CLIP scores must not decide the set.
FINETUNE = ["finetune.base_model=tiny://instruct_pix2pix", "finetune.clip_model=tiny://clip",
            "finetune.resolution=32", "finetune.batch_size=2", "finetune.learning_rate=3e-3",
            "finetune.bf16=false", "finetune.cpus_per_worker=0.5", "finetune.shuffle_buffer=0",
            "finetune.min_clip_ratio=0.0", "finetune.filter_batch_size=4"]


@pytest.fixture(scope="module")
def finetuned(triplets):
    """Six optimizer steps on the job's pairs, a checkpoint every three."""
    from unsafe2safe_ray.train.loop import run_finetune

    config = load_config("none", overrides=[*FINETUNE, "finetune.steps=6", "finetune.checkpoint_every=3"])
    out = triplets / "ckpt"
    latest = run_finetune([str(triplets / "out")], str(triplets / "in"), str(out), config)
    return latest, out


def test_loss_goes_down_on_the_jobs_own_pairs(finetuned):
    latest, out = finetuned
    metrics = latest["metrics"]
    assert latest["pairs"] == {"pairs_seen": 3, "pairs_kept": 3, "dropped": {}}
    assert metrics["step"] == 6 and latest["step"] == 6
    # The same batch, noise and timesteps before the first and after the last step.
    print(f"fixed-batch loss {metrics['loss_fixed_start']:.4f} -> {metrics['loss_fixed']:.4f} in 6 steps")
    assert metrics["loss_fixed"] < 0.95 * metrics["loss_fixed_start"], metrics
    saved = json.loads((out / "latest.json").read_text())
    assert saved["checkpoint"] == latest["checkpoint"]
    decisions = json.loads((out / "pairs.json").read_text())
    assert {d["reason"] for d in decisions["decisions"]} == {"kept"}
    assert "caption" not in json.dumps(decisions["decisions"])  # scores and reasons, no texts


def test_checkpoint_reloads_and_edits_through_the_job(finetuned, triplets, tmp_path):
    from unsafe2safe_ray.train.model import FusedContextProcessor, load_editor_pipeline, read_manifest

    latest, _ = finetuned
    checkpoint = latest["checkpoint"]
    assert read_manifest(checkpoint)["step"] == 6
    pipe = load_editor_pipeline(checkpoint)
    gates = [p.gate for p in pipe.unet.attn_processors.values() if isinstance(p, FusedContextProcessor)]
    assert gates and any(float(g.detach().abs()) > 0 for g in gates)  # the caption path was trained from zero
    # testing.flag_all flags every image; the fine-tuned tiny editor edits them (4 steps, 128 px).
    config = load_config("none", overrides=["stages=[testing.flag_all, edit]", "edit.editor=instruct-pix2pix",
                                            f"edit.instruct_pix2pix_model={checkpoint}", "edit.steps=4",
                                            "edit.max_side=128", "verify.threads=1", *FIT_TWO_CPUS])
    result = run_job(str(triplets / "in"), str(tmp_path / "out"), config)
    assert result.counts == {"edited": 3, "passed": 0, "failed": 0}
    rows = open_output(str(tmp_path / "out")).captions().to_pylist()
    assert {r["editor"] for r in rows} == {"instruct-pix2pix"}


def test_resume_continues_from_the_last_checkpoint_and_its_step(finetuned, triplets):
    from unsafe2safe_ray.train.loop import run_finetune

    _, out = finetuned
    config = load_config("none", overrides=[*FINETUNE, "finetune.steps=8", "finetune.checkpoint_every=3"])
    latest = run_finetune([str(triplets / "out")], str(triplets / "in"), str(out), config)
    assert latest["metrics"]["resumed_from_step"] == 6
    assert latest["metrics"]["steps_this_run"] == 2 and latest["step"] == 8
    assert latest["checkpoint"] != finetuned[0]["checkpoint"]


# -- the pair filter -------------------------------------------------------------------------


def _rewrite_verification(out: Path, changes: dict[str, dict]) -> None:
    """Replace the committed ``verification`` of some keys, keeping the markers' sizes and
    checksums right (what a job would have written for such rows)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    for marker_path in sorted((out / "_commits").glob("*.json")):
        marker = json.loads(marker_path.read_text())
        for rel in marker["files"]["captions"]:
            table = pq.read_table(out / rel)
            values = [changes[k] if k in changes else v
                      for k, v in zip(table["key"].to_pylist(), table["verification"].to_pylist())]
            table = table.set_column(table.schema.get_field_index("verification"), "verification",
                                     pa.array(values, records.VERIFICATION))
            pq.write_table(table, out / rel)
            data = (out / rel).read_bytes()
            marker["file_info"][rel].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        marker_path.write_text(json.dumps(marker))


def test_the_filter_drops_pairs_the_verifier_did_not_pass_cleanly(triplets, tmp_path):
    from unsafe2safe_ray.train.pairs import candidates

    out = tmp_path / "out"
    shutil.copytree(triplets / "out", out)
    keys = sorted(r["key"] for r in open_output(str(out)).captions().to_pylist())
    _rewrite_verification(out, {
        keys[0]: {"verified": True, "ok": False, "leaks": [{"kind": "face_identity"}]},
        keys[1]: {"verified": True, "ok": True, "leaks": [], "fallback": "fill"},
    })
    _, rows, dropped = candidates([str(out)], str(triplets / "in"))
    assert {d["key"]: d["reason"] for d in dropped} == {keys[0]: "leak", keys[1]: "classic_fallback"}
    assert [r["key"] for r in rows] == [keys[2]]
    assert rows[0]["original_uri"].endswith(tuple(INPUTS.values()))


def test_the_filter_drops_a_pair_below_the_clip_ratio(sample_images):
    import io

    from PIL import Image

    from unsafe2safe_ray.train.pairs import ClipRatioScorer, clip_ratio_keeps, leak_reason

    assert clip_ratio_keeps(70.0, 100.0, 0.7) and not clip_ratio_keeps(69.9, 100.0, 0.7)
    assert leak_reason({"verified": False, "ok": None}) == "not_verified"
    assert leak_reason(None) == "not_verified"
    assert leak_reason({"verified": True, "ok": True, "leaks": []}) is None

    class Scripted:
        """Unit vectors whose dot products are the scripted CLIP cosines."""

        calls = 0

        def image_embeddings(self, images):
            # first call: the edited images (rows 0, 1); second: the originals (rows 2, 3)
            start, self.calls = 2 * self.calls, self.calls + 1
            return np.eye(4)[start:start + len(images)]

        def text_embeddings(self, texts):
            # edited_i . public_i = cos_e[i]; original_i . private_i = cos_o[i]
            cos_e, cos_o = [0.5, 0.6], [0.8, 0.8]
            rows = np.zeros((4, 4))
            rows[0, 0], rows[1, 1], rows[2, 2], rows[3, 3] = cos_e[0], cos_e[1], cos_o[0], cos_o[1]
            return rows

    scorer = ClipRatioScorer.__new__(ClipRatioScorer)
    scorer.scorer, scorer.min_ratio, scorer.storage_options = Scripted(), 0.7, None
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    batch = {"output": np.array([0, 0]), "key": np.array(["low", "high"], dtype=object),
             "edited": np.array([png.getvalue()] * 2, dtype=object),
             "original_uri": np.array([str(sample_images / "coffee.jpg")] * 2, dtype=object),
             "public_caption": np.array(["a cup", "a cup"], dtype=object),
             "private_caption": np.array(["a cup", "a cup"], dtype=object)}
    out = scorer(batch)
    # 50 / 80 = 0.625 < 0.7 is dropped; 60 / 80 = 0.75 is kept.
    assert list(out["reason"]) == ["clip_ratio", "kept"]
    assert list(out["clip_edited"]) == [50.0, 60.0] and list(out["clip_original"]) == [80.0, 80.0]
