"""The evaluate job: pair rows -> Ray Data actors computing every metric -> parquet, JSON, HTML.

Steps of ``evaluate_outputs``, one streaming pass:
1. a Ray Dataset of the pair rows of every anonymized output (``pairs.pair_dataset``: committed
   parts read by Ray tasks through ``open_output``, folder baselines by name);
2. ``PairEvaluator`` over them as an actor pool (models load once per actor);
3. each scored batch the driver receives is appended to ``per_image.parquet`` and folded into
   bounded state: running sums and counts, fixed-bin histograms (``MethodStats``) and the
   worst-first gallery (``report.Gallery``); nothing proportional to the pairs stays;
4. ``summary.json`` per method (unavailable metrics listed with their reason);
5. ``report.html``.

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
from collections import Counter
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
# Bookkeeping for the driver, in no table: whether the pair's pixels were read (a gallery row).
INTERNAL_COLUMNS = ("pictured",)
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
        ("regions", pa.list_(records.REGION)), ("eval_error", text), ("unavailable", text),
        ("size_changed", pa.bool_()),
        ("pictured", pa.bool_()), ("thumb_original", pa.binary()), ("thumb_anonymized", pa.binary()),
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

    Thumbnails are made only for rows that enter this actor's own worst-``GALLERY_LIMIT`` per
    method (``report._badness``): every row of the driver's gallery is among them, so the other
    rows travel without pictures. The originals' thumbnails only with ``include_private``.
    """

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.worst: dict[str, list[tuple]] = {}  # method -> sorted badness of this actor's worst rows
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
        for i in live:
            if self._enters_gallery(scored[i]):
                original, anonymized, regions = pixels[i]
                scored[i]["thumb_anonymized"] = imgs.thumbnail_jpeg(anonymized, self.options.thumbnail_px, regions)
                if self.options.include_private:
                    scored[i]["thumb_original"] = imgs.thumbnail_jpeg(original, self.options.thumbnail_px, regions)
        schema = _result_schema()
        return pa.Table.from_pylist([{c: row.get(c) for c in schema.names} for row in scored], schema=schema)

    def _enters_gallery(self, row: dict) -> bool:
        """Whether ``row`` is among the worst ``GALLERY_LIMIT`` rows of its method seen here."""
        import bisect

        from unsafe2safe_ray.eval import report

        worst = self.worst.setdefault(row["method"], [])
        badness = report._badness(row)
        if len(worst) >= report.GALLERY_LIMIT and badness >= worst[-1]:
            return False
        bisect.insort(worst, badness)
        del worst[report.GALLERY_LIMIT:]
        return True

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
                   face_embedder=self.face_embedder_name, size_changed=None, pictured=None)
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
        out["pictured"] = True

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
        return out, (original, anonymized, regions)

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


# -- summary: bounded state --------------------------------------------------------------------

# Fixed-bin histograms in summary.json and the report: metric -> (low, high, bins). Values below
# low or above high are counted apart; FaceSim's is over original faces (the values its mean
# pools), the others over images.
HISTOGRAMS: dict[str, tuple[str, float, float, int]] = {
    "face_sim": ("faces", 0.0, 1.0, 20),
    "text_sim_token_set": ("text", 0.0, 1.0, 20),
    "text_cer": ("text", 0.0, 1.0, 20),
    "ssim": ("fidelity", 0.0, 1.0, 20),
    "ssim_outside_regions": ("fidelity", 0.0, 1.0, 20),
    "psnr": ("fidelity", 0.0, 60.0, 20),
    "phash_distance": ("fidelity", 0.0, 64.0, 16),
    "lpips": ("fidelity", 0.0, 1.0, 20),
    "clip_score": ("quality", 0.0, 100.0, 20),
    "vlm_score": ("judge", 0.0, 100.0, 20),
}
FIDELITY_COLUMNS = ("ssim", "ssim_inside_regions", "ssim_outside_regions", "psnr", "psnr_inside_regions",
                    "psnr_outside_regions", "phash_distance", "lpips")
QUALITY_COLUMNS = ("clip_score", "clip_directional", "clip_image_similarity")
TEXT_COLUMNS = ("text_sim_token_set", "text_sim_levenshtein", "text_cer")


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class RunningMean:
    """Sum and count of the finite values seen; the mean, or None when there were none."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value) -> None:
        if _finite(value):
            self.total += float(value)
            self.count += 1

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


class Histogram:
    """Counts of finite values in ``bins`` equal bins over [low, high] (high falls in the last)."""

    def __init__(self, low: float, high: float, bins: int) -> None:
        self.low, self.high, self.counts = low, high, [0] * bins
        self.below = self.above = 0

    def add(self, value) -> None:
        if not _finite(value):
            return
        value = float(value)
        if value < self.low:
            self.below += 1
        elif value > self.high:
            self.above += 1
        else:
            bins = len(self.counts)
            self.counts[min(bins - 1, int((value - self.low) / (self.high - self.low) * bins))] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "counts": list(self.counts), "below": self.below,
                "above": self.above, "n": sum(self.counts) + self.below + self.above}


class MethodStats:
    """One method's summary from bounded state: counts, running sums, fixed-bin histograms and
    the judge's label counts. ``add`` takes scored rows one at a time, in any order."""

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.total = self.scored = self.without_output = self.with_errors = 0
        self.faces_original = self.faces_redetected = self.faces_matched = self.faces_skipped = 0
        self.face_rows = 0
        self.face_embedder: str | None = None
        self.face_sim = RunningMean()
        self.text_images = 0
        self.judged = self.vlm_unparsed = 0
        self.race_anonymized: Counter = Counter()
        self.race_original: Counter = Counter()
        self.means = {name: RunningMean() for name in (*TEXT_COLUMNS, *FIDELITY_COLUMNS, *QUALITY_COLUMNS, "vlm_score")}
        self.histograms = {name: Histogram(low, high, bins) for name, (family, low, high, bins) in HISTOGRAMS.items()
                           if options.wants(family)}

    def _hist(self, name: str, value) -> None:
        if name in self.histograms:
            self.histograms[name].add(value)

    def add(self, row: dict) -> None:
        self.total += 1
        self.without_output += row.get("status") == records.FAILED
        self.with_errors += bool(row.get("eval_error"))
        if not (row.get("pictured") or row.get("thumb_original") is not None or row.get("ssim") is not None
                or row.get("face_count_original") is not None):
            return
        self.scored += 1
        wants = self.options.wants
        if wants("faces") and row.get("face_count_original") is not None:
            self.face_rows += 1
            self.faces_original += int(row["face_count_original"])
            self.faces_redetected += int(row.get("face_count_redetected") or 0)
            self.faces_matched += int(row.get("face_identity_matches") or 0)
            for similarity in row.get("face_best_similarities") or []:
                if _finite(similarity):
                    self.face_sim.add(similarity)
                    self._hist("face_sim", similarity)
                else:
                    self.faces_skipped += 1
            self.face_embedder = self.face_embedder or row.get("face_embedder")
        if wants("text") and row.get("text_sim_token_set") is not None:
            self.text_images += 1
            for name in TEXT_COLUMNS:
                self.means[name].add(row.get(name))
                self._hist(name, row.get(name))
        for family, columns in (("fidelity", FIDELITY_COLUMNS), ("quality", QUALITY_COLUMNS)):
            if wants(family):
                for name in columns:
                    self.means[name].add(row.get(name))
                    self._hist(name, row.get(name))
        if wants("judge") and row.get("vlm_score") is not None:
            self.judged += 1
            self.means["vlm_score"].add(row["vlm_score"])
            self._hist("vlm_score", row["vlm_score"])
            self.vlm_unparsed += math.isnan(row["vlm_score"])
            self.race_anonymized[row.get("race_anonymized")] += 1
            self.race_original[row.get("race_original")] += 1

    def summary(self) -> dict[str, Any]:
        """One method's numbers, one key per metric; None where nothing could be measured."""
        summary: dict[str, Any] = {
            "images_total": self.total,
            "images_scored": self.scored,
            "images_without_output": self.without_output,
            "images_with_eval_errors": self.with_errors,
        }
        total = self.faces_original
        if self.options.wants("faces"):
            summary.update(
                faces_original=total,
                # The paper's FaceSim: faces whose output has no face at all drop out of this mean.
                face_sim=self.face_sim.value(),
                face_redetection_rate=self.faces_redetected / total if total else None,
                face_identity_match_rate=self.faces_matched / total if total else None,
                face_skipped_by_paper_rate=self.faces_skipped / total if total else None,
                face_embedder=self.face_embedder,
            )
        if self.options.wants("text"):
            summary.update(text_images=self.text_images, **{name: self.means[name].value() for name in TEXT_COLUMNS})
        for family, columns in (("fidelity", FIDELITY_COLUMNS), ("quality", QUALITY_COLUMNS)):
            if self.options.wants(family):
                summary.update({name: self.means[name].value() for name in columns})
        if self.options.wants("judge"):
            from unsafe2safe_ray.eval.judge import normalized_entropy, race_entropy_paper

            judged = self.judged
            # Label lists rebuilt from the counts (a few labels, however many images).
            anonymized, original = list(self.race_anonymized.elements()), list(self.race_original.elements())
            summary.update(
                vlm_score=self.means["vlm_score"].value(),
                vlm_score_unparsed=self.vlm_unparsed,
                race_entropy=_nan_to_none(normalized_entropy(anonymized)) if judged else None,
                race_entropy_original=_nan_to_none(normalized_entropy(original)) if judged else None,
                # The paper-defined number (5 categories, ln 5): the only one compared with the paper.
                race_entropy_paper=_nan_to_none(race_entropy_paper(anonymized)) if judged else None,
                race_entropy_paper_original=(_nan_to_none(race_entropy_paper(original)) if judged else None),
            )
        summary["histograms"] = {name: h.to_dict() for name, h in self.histograms.items()}
        return summary


def summarize(rows, options: EvalOptions) -> dict[str, Any]:
    """One method's numbers from an iterable of scored rows (see ``MethodStats``)."""
    stats = MethodStats(options)
    for row in rows:
        stats.add(row)
    return stats.summary()


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value + 0.0  # + 0.0 turns -0.0 into 0.0


def unavailable_metrics(rows) -> dict[str, str]:
    """Metric families the actors could not run, with the reason they gave."""
    merged: dict[str, str] = {}
    for row in rows:
        merged.update(json.loads(row.get("unavailable") or "{}"))
    return merged


# -- per-image tables, written as the rows come -----------------------------------------------


def public_schema():
    """``per_image.parquet``: no pixels, no thumbnails, no recognized text."""
    import pyarrow as pa

    return pa.schema([f for f in _result_schema() if f.name not in HEAVY_COLUMNS + PRIVATE_COLUMNS + INTERNAL_COLUMNS])


def private_schema():
    """``private/per_image_private.parquet``: the text read in each original and output, and the
    regions with their recognized text, keyed like ``per_image.parquet`` (method, key)."""
    import pyarrow as pa

    schema = _result_schema()
    return pa.schema([schema.field(c) for c in ("method", "key", "source_uri", "regions", *PRIVATE_COLUMNS)])


def public_table(rows: list[dict]):
    """Scored rows as a table of ``per_image.parquet`` (built anew: it holds no reference to the
    Ray block the rows came in, thumbnails included)."""
    import pyarrow as pa

    schema = public_schema()
    public = [{c: row.get(c) for c in schema.names} for row in rows]
    for row in public:
        row["regions"] = records.public_regions(row.get("regions"))
    return pa.Table.from_pylist(public, schema=schema)


def private_table(rows: list[dict]):
    """Scored rows as a table of ``private/per_image_private.parquet``."""
    import pyarrow as pa

    schema = private_schema()
    return pa.Table.from_pylist([{c: row.get(c) for c in schema.names} for row in rows], schema=schema)


class ParquetStream:
    """A Parquet file written one batch at a time and published whole at ``close``.

    Batches go to a temporary file: beside the target on local storage (renamed at the end),
    else a local spool uploaded in one transfer (an object appears only when its upload
    completes). ``abort`` removes the temporary file; readers never see a partial table.
    Small batches are gathered into row groups of ``ROW_GROUP_ROWS`` rows: a row group per
    Ray block would grow the footer metadata the writer keeps with every block.
    """

    ROW_GROUP_ROWS = 1024

    def __init__(self, path: str, schema, storage_options: dict | None = None) -> None:
        import os
        import tempfile
        import uuid

        import pyarrow.parquet as pq

        from unsafe2safe_ray.storage.fs import TEMP_PREFIX, filesystem, is_local

        self.fs, self.path = filesystem(path, storage_options)
        self.local = is_local(self.fs)
        if self.local:
            directory = os.path.dirname(self.path)
            os.makedirs(directory, exist_ok=True)
            self.tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(self.path)}")
        else:
            fd, self.tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".parquet")
            os.close(fd)
        self.writer = pq.ParquetWriter(self.tmp, schema)
        self.rows = 0
        self._pending: list = []
        self._pending_rows = 0

    def write(self, table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self.rows += table.num_rows
            if self._pending_rows >= self.ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            self.writer.write_table(pa.concat_tables(self._pending), row_group_size=self._pending_rows)
            self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        import os

        self._flush()
        self.writer.close()
        try:
            if self.local:
                os.replace(self.tmp, self.path)
            else:
                self.fs.put_file(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def abort(self) -> None:
        import os

        try:
            self.writer.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


# -- the job -------------------------------------------------------------------------------------


def score_dataset(pairs, options: EvalOptions):
    """``PairEvaluator`` over a Dataset of pair rows as an actor pool (operator ``score_pairs``):
    a Dataset of scored rows (``_result_schema``) in the pairs' order, streamed as the driver
    consumes it."""
    from unsafe2safe_ray.stages.base import Resources, map_batches

    resources = Resources(num_cpus=1, num_gpus=options.num_gpus, batch_size=options.batch_size,
                          pool_size=options.pool_size)
    ds = map_batches(pairs, PairEvaluator, name="score_pairs", resources=resources, constructor_args=(options,))
    ds.context.execution_options.preserve_order = True  # per_image.parquet in method, then pair order
    return ds


def evaluate_outputs(original: str, anonymized: dict[str, str], out_dir: str,
                     options: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate every anonymized output against ``original``; writes the three publishable
    files, and the private ones under ``private/`` when ``options.include_private``.

    Streams: pairs are read by Ray tasks, scored by the actor pool, and each scored batch is
    appended to the per-image tables and folded into bounded state (``MethodStats``: sums,
    counts, histograms; ``report.Gallery``: the worst rows with their thumbnails), so the
    driver's memory does not grow with the number of pairs.

    Returns the summary: the first method's metrics at the top level, every method under
    ``by_method``, and unavailable metric families with their reasons under ``unavailable``.
    """
    from unsafe2safe_ray.eval.pairs import pair_dataset
    from unsafe2safe_ray.eval.report import Gallery, write_report
    from unsafe2safe_ray.storage.fs import filesystem, write_json

    options = options or EvalOptions()
    start = time.perf_counter()
    # 1. Pairs (a Dataset: read tasks per committed part or per folder slice).
    pairs = pair_dataset(original, anonymized, options.storage_options)
    if pairs is None:
        raise ValueError(f"no image pairs found between {original!r} and {list(anonymized.values())}")
    fs, root = filesystem(out_dir, options.storage_options)
    fs.makedirs(root, exist_ok=True)
    stats = {m: MethodStats(options) for m in anonymized}
    galleries = {m: Gallery(keep_originals=options.include_private) for m in anonymized}
    unavailable: dict[str, str] = {}
    # 2.-3. Score on Ray; per-image tables and bounded state as each batch arrives.
    streams = [(ParquetStream(posixpath.join(out_dir, "per_image.parquet"), public_schema(),
                              options.storage_options), public_table)]
    if options.include_private:
        fs.makedirs(posixpath.join(root, PRIVATE_DIR), exist_ok=True)
        streams.append((ParquetStream(posixpath.join(out_dir, PRIVATE_PER_IMAGE), private_schema(),
                                      options.storage_options), private_table))
    try:
        for batch in score_dataset(pairs, options).iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            del batch
            for stream, table in streams:
                stream.write(table(rows))
            for value in {row.get("unavailable") for row in rows}:
                unavailable.update(json.loads(value or "{}"))
            for row in rows:
                stats[row["method"]].add(row)
                galleries[row["method"]].add(row)
    except BaseException:
        for stream, _ in streams:
            stream.abort()
        raise
    for stream, _ in streams:
        stream.close()
    # 4. Summary.
    by_method = {m: stats[m].summary() for m in anonymized}
    first = next(iter(anonymized))
    summary = {
        **by_method[first],
        "method": first,
        "original": original,
        "anonymized": anonymized,
        "metrics": list(options.metrics),
        "unavailable": unavailable,
        "by_method": by_method,
        "private_outputs": [PRIVATE_PER_IMAGE, PRIVATE_REPORT] if options.include_private else [],
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(fs, posixpath.join(root, "summary.json"), summary)
    # 5. Report.
    write_report(posixpath.join(out_dir, "report.html"), summary, galleries, options.storage_options)
    if options.include_private:
        write_report(posixpath.join(out_dir, PRIVATE_REPORT), summary, galleries, options.storage_options, private=True)
    return summary
