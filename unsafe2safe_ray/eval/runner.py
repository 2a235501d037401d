"""The evaluate job: pair rows -> Ray Data actors computing every metric -> parquet, JSON, HTML.

Steps of ``evaluate_outputs``:
1. build the pair rows of every anonymized output (``pairs``);
2. run ``PairEvaluator`` over them as an actor pool (models load once per actor);
3. write ``per_image.parquet``;
4. summarize per method into ``summary.json`` (unavailable metrics listed with their reason);
5. render ``report.html``.

These three are publishable: no text read in the originals, no pictures of the originals. With
``include_private`` those go to ``OUT/private/`` (``per_image_private.parquet``,
``report_private.html``), a folder that must never be published; without it they are not written.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import time
from typing import Any

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.eval import images as imgs
from unsafe2safe_ray.eval.options import EvalOptions

log = logging.getLogger(__name__)

# Columns kept out of per_image.parquet: gallery thumbnails.
HEAVY_COLUMNS = ("thumb_original", "thumb_anonymized")
# Text read in the originals (names, dates of birth, card and plate numbers) and in the outputs
# (which repeats it where it leaked): only in the private table.
PRIVATE_COLUMNS = ("text_original", "text_anonymized")
PRIVATE_DIR = "private"
PRIVATE_PER_IMAGE = "private/per_image_private.parquet"
PRIVATE_REPORT = "private/report_private.html"


def _result_schema():
    """Every column a scored row can hold, typed once so that all Ray blocks agree (a column
    that is empty in one batch would otherwise come back as nulls of another type)."""
    import pyarrow as pa

    text, real, count = pa.string(), pa.float64(), pa.int64()
    columns = [
        ("method", text), ("key", text), ("source_uri", text), ("label", text), ("status", text),
        ("regions", text), ("eval_error", text), ("unavailable", text), ("size_changed", pa.bool_()),
        ("thumb_original", pa.binary()), ("thumb_anonymized", pa.binary()),
        ("face_embedder", text), ("face_count_original", count), ("face_count_anonymized", count),
        ("face_count_redetected", count), ("face_identity_matches", count),
        ("face_best_similarities", pa.list_(real)), ("face_sim", real),
        ("face_boxes_original", pa.list_(pa.list_(real))),
        ("text_original", text), ("text_anonymized", text),
        ("text_sim_token_set", real), ("text_sim_levenshtein", real), ("text_cer", real),
        ("ssim", real), ("ssim_inside_regions", real), ("ssim_outside_regions", real),
        ("psnr", real), ("psnr_inside_regions", real), ("psnr_outside_regions", real),
        ("phash_distance", count), ("lpips", real),
        ("clip_score", real), ("clip_directional", real), ("clip_image_similarity", real),
        ("vlm_score", real), ("race_original", text), ("race_anonymized", text),
    ]
    return pa.schema(columns)


class PairEvaluator:
    """Ray Data actor: loads the metric models once, then scores batches of pair rows.

    A metric family whose model cannot be loaded is recorded in each row's ``unavailable`` JSON
    (family -> reason) instead of failing the job; a pair that cannot be scored keeps its row
    with ``eval_error`` set.
    """

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.unavailable: dict[str, str] = {}
        self.faces = self.text = self.clip = self.judge = self.lpips = None
        self.face_embedder_name = None
        if options.wants("faces"):
            self.faces = self._try("faces", self._load_faces)
        if options.wants("text"):
            self.text = self._try("text", self._load_text)
        if options.wants("fidelity"):
            from unsafe2safe_ray.eval.fidelity import LpipsScorer, lpips_unavailable_reason

            reason = lpips_unavailable_reason(options.lpips_net)
            if reason:
                self.unavailable["lpips"] = reason
            else:
                self.lpips = self._try("lpips", lambda: LpipsScorer(options.lpips_net))
        if options.wants("quality"):
            if not options.clip_model:
                self.unavailable["quality"] = "no CLIP model configured"
            else:
                self.clip = self._try("quality", self._load_clip)
        if options.wants("judge"):
            if not (options.judge_engine and options.judge_model):
                self.unavailable["judge"] = "no judge model configured (judge_engine / judge_model)"
            else:
                self.judge = self._try("judge", self._load_judge)

    def _try(self, family: str, load):
        try:
            return load()
        except Exception as e:  # noqa: BLE001 - any load failure makes the family unavailable
            self.unavailable[family] = f"{type(e).__name__}: {e}"[:300]
            return None

    def _load_faces(self):
        from unsafe2safe_ray.detectors.identity import load_identity_embedder
        from unsafe2safe_ray.eval.privacy import FaceComparer

        embedder = load_identity_embedder(self.options.face_embedder, self.options.arcface_root, self.options.arcface_pack)
        self.face_embedder_name = embedder.name
        return FaceComparer(self.options.verifier().faces, embedder)

    def _load_text(self):
        return self.options.verifier().ocr

    def _load_clip(self):
        from unsafe2safe_ray.eval.quality import ClipScorer

        return ClipScorer(self.options.clip_model, device="cuda" if self.options.num_gpus else "cpu")

    def _load_judge(self):
        from unsafe2safe_ray.eval.judge import Judge

        return Judge(self.options.judge_engine, self.options.judge_model, self.options.judge_max_new_tokens)

    # -- per batch ---------------------------------------------------------------------------

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()  # Arrow keeps None as None (numpy batches turn it into NaN)
        scored, pixels = [], []
        for row in rows:
            out, pair = self._score_pair(row)
            scored.append(out)
            pixels.append(pair)
        live = [i for i, pair in enumerate(pixels) if pair is not None]
        if live:
            self._score_batched(scored, [pixels[i] for i in live], [rows[i] for i in live], live)
        schema = _result_schema()
        return pa.Table.from_pylist([{c: row.get(c) for c in schema.names} for row in scored], schema=schema)

    def _load_pair(self, row: dict) -> tuple[np.ndarray, np.ndarray]:
        original = imgs.load_rgb(row["source_uri"], self.options.storage_options)
        if row.get("anonymized") is not None:
            shape = (int(row["anonymized_height"]), int(row["anonymized_width"]), 3)
            anonymized = np.frombuffer(row["anonymized"], dtype=np.uint8).reshape(shape)
        else:
            anonymized = imgs.load_rgb(row["anonymized_uri"], self.options.storage_options)
        return original, anonymized

    def _score_pair(self, row: dict) -> tuple[dict, tuple | None]:
        out = {k: row[k] for k in ("method", "key", "source_uri", "label", "status", "regions")}
        out.update(eval_error=None, unavailable=json.dumps(self.unavailable),
                   face_embedder=self.face_embedder_name, size_changed=None)
        has_output = row.get("anonymized") is not None or row.get("anonymized_uri")
        if row["status"] == records.FAILED or not has_output:
            return out, None  # nothing was published for this image: no pixels to score
        errors = {}
        try:
            original, anonymized = self._load_pair(row)
        except Exception as e:  # noqa: BLE001 - an unreadable pair is a row, not a lost job
            out["eval_error"] = json.dumps({"load": f"{type(e).__name__}: {e}"[:300]})
            return out, None
        h, w = original.shape[:2]
        out["size_changed"] = anonymized.shape[:2] != (h, w)
        anonymized = imgs.align_to(anonymized, h, w)
        regions = imgs.parse_regions(row.get("regions"))
        out["thumb_original"] = imgs.thumbnail_jpeg(original, self.options.thumbnail_px, regions)
        out["thumb_anonymized"] = imgs.thumbnail_jpeg(anonymized, self.options.thumbnail_px, regions)

        # Each family is isolated so that one failing model still leaves the other numbers.
        if self.faces is not None:
            errors.update(_guard("faces", lambda: out.update(self.faces.compare(original, anonymized))))
        if self.text is not None:
            def read_texts():
                from unsafe2safe_ray.eval.privacy import compare_texts

                text_original = self.text.read_text(original)
                text_anonymized = self.text.read_text(anonymized) if text_original.strip() else ""
                out.update(text_original=text_original, text_anonymized=text_anonymized)
                out.update(compare_texts(text_original, text_anonymized))

            errors.update(_guard("text", read_texts))
        if self.options.wants("fidelity"):
            def fidelity():
                from unsafe2safe_ray.eval.fidelity import phash_distance, ssim_psnr

                out.update(ssim_psnr(original, anonymized, imgs.region_mask(regions, h, w)))
                out["phash_distance"] = phash_distance(original, anonymized)
                if self.lpips is not None:
                    out["lpips"] = self.lpips.distance(original, anonymized)

            errors.update(_guard("fidelity", fidelity))
        if errors:
            out["eval_error"] = json.dumps(errors)
        return out, (original, anonymized)

    def _score_batched(self, scored: list[dict], pairs: list[tuple], rows: list[dict], idx: list[int]) -> None:
        originals = [p[0] for p in pairs]
        outputs = [p[1] for p in pairs]
        results: dict[str, list[dict]] = {}
        errors: dict[str, str] = {}
        if self.clip is not None:
            errors.update(_guard("quality", lambda: results.__setitem__("quality", self.clip.score_pairs(
                originals, outputs, [r.get("public_caption") for r in rows], [r.get("edited_caption") for r in rows]))))
        if self.judge is not None:
            errors.update(_guard("judge", lambda: results.__setitem__("judge", self.judge.judge_pairs(originals, outputs))))
        for j, i in enumerate(idx):
            for values in results.values():
                scored[i].update(values[j])
            if errors:
                merged = json.loads(scored[i]["eval_error"] or "{}")
                merged.update(errors)
                scored[i]["eval_error"] = json.dumps(merged)


def _guard(family: str, fn) -> dict[str, str]:
    try:
        fn()
        return {}
    except Exception as e:  # noqa: BLE001 - recorded on the row; see PairEvaluator
        log.warning("metric family %s failed: %s", family, e)
        return {family: f"{type(e).__name__}: {e}"[:300]}


# -- summary -------------------------------------------------------------------------------------


def _mean(values) -> float | None:
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(finite)) if finite else None


def _column(rows: list[dict], name: str) -> list:
    return [row.get(name) for row in rows]


def summarize(rows: list[dict], options: EvalOptions) -> dict[str, Any]:
    """One method's numbers, one key per metric; None where nothing could be measured."""
    scored = [r for r in rows if r.get("thumb_original") is not None or r.get("ssim") is not None
              or r.get("face_count_original") is not None]
    summary: dict[str, Any] = {
        "images_total": len(rows),
        "images_scored": len(scored),
        "images_without_output": sum(1 for r in rows if r.get("status") == records.FAILED),
        "images_with_eval_errors": sum(1 for r in rows if r.get("eval_error")),
    }
    if options.wants("faces"):
        faces = [r for r in scored if r.get("face_count_original") is not None]
        total = sum(int(r["face_count_original"]) for r in faces)
        pooled = [s for r in faces for s in (r.get("face_best_similarities") or [])]
        summary.update(
            faces_original=total,
            # The paper's FaceSim: faces whose output has no face at all drop out of this mean.
            face_sim=_mean(pooled),
            face_redetection_rate=(sum(int(r["face_count_redetected"]) for r in faces) / total) if total else None,
            face_identity_match_rate=(sum(int(r["face_identity_matches"]) for r in faces) / total) if total else None,
            face_skipped_by_paper_rate=(sum(1 for s in pooled if s is None or math.isnan(s)) / total) if total else None,
            face_embedder=next((r.get("face_embedder") for r in faces if r.get("face_embedder")), None),
        )
    if options.wants("text"):
        with_text = [r for r in scored if r.get("text_sim_token_set") is not None]
        summary.update(
            text_images=len(with_text),
            text_sim_token_set=_mean(_column(with_text, "text_sim_token_set")),
            text_sim_levenshtein=_mean(_column(with_text, "text_sim_levenshtein")),
            text_cer=_mean(_column(with_text, "text_cer")),
        )
    if options.wants("fidelity"):
        for name in ("ssim", "ssim_inside_regions", "ssim_outside_regions", "psnr", "psnr_inside_regions",
                     "psnr_outside_regions", "phash_distance", "lpips"):
            summary[name] = _mean(_column(scored, name))
    if options.wants("quality"):
        for name in ("clip_score", "clip_directional", "clip_image_similarity"):
            summary[name] = _mean(_column(scored, name))
    if options.wants("judge"):
        from unsafe2safe_ray.eval.judge import normalized_entropy, race_entropy_paper

        judged = [r for r in scored if "vlm_score" in r and r.get("vlm_score") is not None]
        summary.update(
            vlm_score=_mean(_column(judged, "vlm_score")),
            vlm_score_unparsed=sum(1 for r in judged if math.isnan(r["vlm_score"])),
            race_entropy=_nan_to_none(normalized_entropy(_column(judged, "race_anonymized"))) if judged else None,
            race_entropy_original=_nan_to_none(normalized_entropy(_column(judged, "race_original"))) if judged else None,
            # The paper-defined number (5 categories, ln 5): the only one compared with the paper.
            race_entropy_paper=_nan_to_none(race_entropy_paper(_column(judged, "race_anonymized"))) if judged else None,
            race_entropy_paper_original=(_nan_to_none(race_entropy_paper(_column(judged, "race_original")))
                                         if judged else None),
        )
    return summary


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value + 0.0  # + 0.0 turns -0.0 into 0.0


def unavailable_metrics(rows: list[dict]) -> dict[str, str]:
    """Metric families the actors could not run, with the reason they gave."""
    merged: dict[str, str] = {}
    for row in rows:
        merged.update(json.loads(row.get("unavailable") or "{}"))
    return merged


# -- the job -------------------------------------------------------------------------------------


def score_pairs(pair_rows: list[dict], options: EvalOptions) -> list[dict]:
    """Run ``PairEvaluator`` over the pair rows as a Ray Data actor pool; returns scored rows."""
    import ray

    ds = ray.data.from_items(pair_rows, override_num_blocks=max(1, min(len(pair_rows), 64)))
    ds = ds.map_batches(
        PairEvaluator,
        fn_constructor_kwargs={"options": options},
        compute=ray.data.ActorPoolStrategy(size=options.pool_size),
        batch_size=options.batch_size,
        batch_format="pyarrow",
        num_gpus=options.num_gpus,
        num_cpus=1,
    )
    rows = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows.extend(batch.to_pylist())
    return rows


def write_per_image(rows: list[dict], path: str, storage_options: dict | None = None) -> None:
    """The publishable per-image table: no pixels, no thumbnails, no recognized text."""
    import pyarrow as pa

    schema = _result_schema()
    light = pa.schema([f for f in schema if f.name not in HEAVY_COLUMNS + PRIVATE_COLUMNS])
    public = [{c: row.get(c) for c in light.names} for row in rows]
    for row in public:
        row["regions"] = records.public_regions(row.get("regions"))
    _write_table(pa.Table.from_pylist(public, schema=light), path, storage_options)


def write_private_per_image(rows: list[dict], path: str, storage_options: dict | None = None) -> None:
    """The private per-image table: the text read in each original and output, and the regions
    with their recognized text, keyed like ``per_image.parquet`` (method, key)."""
    import pyarrow as pa

    schema = _result_schema()
    private = pa.schema([schema.field(c) for c in ("method", "key", "source_uri", "regions", *PRIVATE_COLUMNS)])
    _write_table(pa.Table.from_pylist([{c: row.get(c) for c in private.names} for row in rows], schema=private),
                 path, storage_options)


def _write_table(table, path: str, storage_options: dict | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unsafe2safe_ray.storage.fs import atomic_write, filesystem

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs, fs_path = filesystem(path, storage_options)
    atomic_write(fs, fs_path, sink.getvalue().to_pybytes())


def evaluate_outputs(original: str, anonymized: dict[str, str], out_dir: str,
                     options: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate every anonymized output against ``original``; writes the three publishable
    files, and the private ones under ``private/`` when ``options.include_private``.

    Returns the summary: the first method's metrics at the top level, every method under
    ``by_method``, and unavailable metric families with their reasons under ``unavailable``.
    """
    from unsafe2safe_ray.eval.pairs import build_pairs
    from unsafe2safe_ray.eval.report import write_report
    from unsafe2safe_ray.storage.fs import filesystem, write_json

    options = options or EvalOptions()
    start = time.perf_counter()
    # 1. Pairs.
    pair_rows = build_pairs(original, anonymized, options.storage_options)
    if not pair_rows:
        raise ValueError(f"no image pairs found between {original!r} and {list(anonymized.values())}")
    # 2. Score on Ray.
    rows = score_pairs(pair_rows, options)
    rows.sort(key=lambda r: (list(anonymized).index(r["method"]), r["key"]))
    # 3. Per-image table.
    fs, root = filesystem(out_dir, options.storage_options)
    fs.makedirs(root, exist_ok=True)
    write_per_image(rows, posixpath.join(out_dir, "per_image.parquet"), options.storage_options)
    if options.include_private:
        fs.makedirs(posixpath.join(root, PRIVATE_DIR), exist_ok=True)
        write_private_per_image(rows, posixpath.join(out_dir, PRIVATE_PER_IMAGE), options.storage_options)
    # 4. Summary.
    by_method = {m: summarize([r for r in rows if r["method"] == m], options) for m in anonymized}
    first = next(iter(anonymized))
    summary = {
        **by_method[first],
        "method": first,
        "original": original,
        "anonymized": anonymized,
        "metrics": list(options.metrics),
        "unavailable": unavailable_metrics(rows),
        "by_method": by_method,
        "private_outputs": [PRIVATE_PER_IMAGE, PRIVATE_REPORT] if options.include_private else [],
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(fs, posixpath.join(root, "summary.json"), summary)
    # 5. Report.
    write_report(posixpath.join(out_dir, "report.html"), summary, rows, options.storage_options)
    if options.include_private:
        write_report(posixpath.join(out_dir, PRIVATE_REPORT), summary, rows, options.storage_options, private=True)
    return summary
