"""The HTML report: one self-contained page (no external files, thumbnails as data URLs).

``report.html`` is publishable: its gallery shows the anonymized outputs only. The private
report (``private/report_private.html``, written with ``--include-private``) shows each output
beside a thumbnail of its original and must never be published.

The gallery comes from bounded state (``Gallery``: the worst rows seen, ``GALLERY_LIMIT`` per
method) and the distributions from fixed-bin histograms in the summary, so rendering does not
need every scored row."""

from __future__ import annotations

import base64
import html
import json
import math
import posixpath
from typing import Any

from unsafe2safe_ray.eval.paper import PAPER_NUMBERS, PAPER_SOURCE

# (summary key, label, better direction, metric family) in table order.
METRIC_ROWS = (
    ("face_sim", "FaceSim: best identity cosine per original face (paper's rule)", "lower", "faces"),
    ("face_redetection_rate", "Face re-detection rate: original faces still found in the output", "lower", "faces"),
    ("face_identity_match_rate", "Share of original faces matched as the same identity", "lower", "faces"),
    ("face_skipped_by_paper_rate", "Share of original faces the paper's FaceSim skips (no output face)", None, "faces"),
    ("faces_original", "Faces in the originals", None, "faces"),
    ("text_sim_token_set", "TextSim token-set (paper's formula; 1.0 for any subset)", "lower", "text"),
    ("text_sim_levenshtein", "TextSim normalized Levenshtein similarity", "lower", "text"),
    ("text_cer", "Character error rate of the original text read back", "higher", "text"),
    ("text_images", "Images with text in the original", None, "text"),
    ("vlm_score", "VLMScore: judged unlinkability 0-100", "higher", "judge"),
    ("race_entropy_paper", "Race entropy of outputs, paper's definition (5 categories, ln 5)", "higher", "judge"),
    ("race_entropy_paper_original", "Race entropy of originals, paper's definition", None, "judge"),
    ("race_entropy", "Race entropy of outputs over the 7 asked labels (ln 7; not the paper's number)", "higher", "judge"),
    ("race_entropy_original", "Race entropy of originals over the 7 labels (ln 7)", None, "judge"),
    ("ssim", "SSIM, whole image", None, "fidelity"),
    ("ssim_inside_regions", "SSIM inside sensitive regions", "lower", "fidelity"),
    ("ssim_outside_regions", "SSIM outside sensitive regions", "higher", "fidelity"),
    ("psnr", "PSNR dB, whole image", None, "fidelity"),
    ("psnr_inside_regions", "PSNR dB inside sensitive regions", "lower", "fidelity"),
    ("psnr_outside_regions", "PSNR dB outside sensitive regions", "higher", "fidelity"),
    ("phash_distance", "pHash distance (bits of 64)", None, "fidelity"),
    ("lpips", "LPIPS distance", None, "lpips"),
    ("clip_score", "CLIP score vs public caption", "higher", "quality"),
    ("clip_directional", "Directional CLIP (image change vs caption change)", "higher", "quality"),
    ("clip_image_similarity", "CLIP image similarity original vs output", None, "quality"),
    ("images_total", "Images", None, None),
    ("images_without_output", "Images without an output (failed rows)", None, None),
    ("images_with_eval_errors", "Images with evaluation errors", None, None),
)

GALLERY_LIMIT = 60

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px} .muted{color:#5d6b7a;font-size:13px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #d5dbe1;padding:4px 8px;text-align:right}
th{background:#eef2f6} td.name{text-align:left} th.paper,td.paper{background:#fbf6e9}
td.na{color:#9aa5b1;font-style:italic} .warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px;margin:12px 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #d5dbe1;border-radius:6px;padding:6px;width:340px}
.pair{display:flex;gap:4px} .pair figure{margin:0;flex:1;text-align:center} .pair img{max-width:164px;max-height:164px}
figcaption{font-size:11px;color:#5d6b7a} .card .key{font-size:12px;font-weight:600;word-break:break-all}
.card .m{font-size:11px;color:#37434f}
td.hist{text-align:left;white-space:nowrap;vertical-align:bottom;height:36px}
.bar{display:inline-block;width:7px;margin-right:1px;background:#5b8def;vertical-align:bottom}
"""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return html.escape(str(value))


def _data_url(jpeg: bytes | None) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg or b"").decode("ascii")


def _summary_table(summary: dict) -> str:
    methods = summary["by_method"]
    unavailable = summary.get("unavailable", {})
    selected = set(summary.get("metrics", []))
    head = "".join(f"<th>ours: {html.escape(m)}</th>" for m in methods)
    head += "".join(f'<th class="paper">paper: {html.escape(p)}</th>' for p in PAPER_NUMBERS)
    lines = [f"<table id='summary'><thead><tr><th>metric</th><th>better</th>{head}</tr></thead><tbody>"]
    for key, label, better, family in METRIC_ROWS:
        if family and family != "lpips" and family not in selected:
            continue
        if family == "lpips" and "fidelity" not in selected:
            continue
        reason = unavailable.get(family) if family else None
        cells = []
        for numbers in methods.values():
            value = numbers.get(key)
            if value is None and reason:
                cells.append(f'<td class="na" title="{html.escape(reason)}">not measured</td>')
            else:
                cells.append(f"<td>{_fmt(value)}</td>")
        for paper in PAPER_NUMBERS.values():
            cells.append(f'<td class="paper">{_fmt(paper.get(key))}</td>')
        arrow = {"lower": "lower &darr;", "higher": "higher &uarr;"}.get(better or "", "")
        lines.append(f"<tr><td class='name' data-metric='{key}'>{html.escape(label)}</td><td>{arrow}</td>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _badness(row: dict) -> tuple:
    """Sort key: worst privacy first (highest FaceSim, then highest TextSim)."""
    def value(name: str) -> float:
        v = row.get(name)
        return -1.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return (-value("face_sim"), -value("text_sim_token_set"), row.get("key") or "")


# What a gallery card shows (the rest of a scored row is dropped when it enters a Gallery).
CARD_FIELDS = ("method", "key", "source_uri", "face_sim", "face_count_original", "face_count_redetected",
               "text_sim_token_set", "text_cer", "ssim_outside_regions", "vlm_score", "thumb_anonymized")


class Gallery:
    """One method's worst-first gallery from bounded state: the ``limit`` rows with the worst
    privacy (``_badness``) among the rows with pictures, and how many such rows were seen.

    Rows come one at a time, in any order; at most ``2 * limit`` are held. The originals'
    thumbnails are kept only with ``keep_originals`` (for the private report). A scored row
    without thumbnails (``pictured``: its actor ranked it out of its own worst rows, so it
    cannot be among the worst overall) is counted, not kept.
    """

    def __init__(self, limit: int | None = None, keep_originals: bool = False) -> None:
        self.limit, self.keep_originals = limit or GALLERY_LIMIT, keep_originals
        self.count = 0
        self._rows: list[dict] = []

    def add(self, row: dict) -> None:
        if not (row.get("pictured") or row.get("thumb_original")):
            return
        self.count += 1
        if not (row.get("thumb_anonymized") or row.get("thumb_original")):
            return
        kept = {k: row.get(k) for k in CARD_FIELDS}
        if self.keep_originals:
            kept["thumb_original"] = row.get("thumb_original")
        self._rows.append(kept)
        if len(self._rows) >= 2 * self.limit:
            self._rows = sorted(self._rows, key=_badness)[: self.limit]

    def rows(self) -> list[dict]:
        """The worst rows, worst first."""
        return sorted(self._rows, key=_badness)[: self.limit]

    @classmethod
    def from_rows(cls, rows, method: str, keep_originals: bool = True) -> Gallery:
        gallery = cls(keep_originals=keep_originals)
        for row in rows:
            if row.get("method") == method:
                gallery.add(row)
        return gallery


def _histograms(summary: dict) -> str:
    """Fixed-bin distributions of the main metrics, one row per metric and method."""
    labels = {key: label for key, label, _, _ in METRIC_ROWS}
    lines = []
    for method, numbers in summary["by_method"].items():
        for name, hist in (numbers.get("histograms") or {}).items():
            if not hist.get("n"):
                continue
            top = max(hist["counts"]) or 1
            width = (hist["high"] - hist["low"]) / len(hist["counts"])
            bars = "".join(
                f"<span class='bar' style='height:{max(1, round(32 * c / top))}px' "
                f"title='[{hist['low'] + i * width:g}, {hist['low'] + (i + 1) * width:g}): {c}'></span>"
                for i, c in enumerate(hist["counts"]))
            outside = f"{hist['below']} below, {hist['above']} above" if hist["below"] or hist["above"] else ""
            lines.append(f"<tr><td class='name' data-metric='{name}'>{html.escape(labels.get(name, name))}</td>"
                         f"<td class='name'>{html.escape(method)}</td><td>{hist['n']}</td><td>{_fmt(hist['low'])}</td>"
                         f"<td class='hist'>{bars}</td><td>{_fmt(hist['high'])}</td><td>{outside}</td></tr>")
    if not lines:
        return ""
    return ("<h2>Distributions</h2><p class='muted'>Fixed bins between the two bounds; FaceSim per original "
            "face with a face in the output, the others per scored image.</p>"
            "<table id='histograms'><thead><tr><th>metric</th><th>method</th><th>n</th><th>from</th>"
            "<th>bins</th><th>to</th><th>outside</th></tr></thead><tbody>" + "\n".join(lines) + "</tbody></table>")


def _card(row: dict, private: bool = False) -> str:
    metrics = []
    for name, label in (("face_sim", "FaceSim"), ("face_count_original", "faces"),
                        ("face_count_redetected", "re-detected"), ("text_sim_token_set", "TextSim"),
                        ("text_cer", "CER"), ("ssim_outside_regions", "SSIM out"), ("vlm_score", "VLMScore")):
        if row.get(name) is not None:
            metrics.append(f"{label} {_fmt(row[name])}")
    return (
        f"<div class='card'><div class='key'>{html.escape(str(row.get('key')))} · "
        f"{html.escape(posixpath.basename(str(row.get('source_uri') or '')))}</div>"
        "<div class='pair'>"
        + (f"<figure><img alt='original' src='{_data_url(row.get('thumb_original'))}'><figcaption>original</figcaption></figure>"
           if private else "")
        + f"<figure><img alt='anonymized' src='{_data_url(row.get('thumb_anonymized'))}'><figcaption>anonymized</figcaption></figure>"
        f"</div><div class='m'>{html.escape(' · '.join(metrics))}</div></div>"
    )


def _privacy_note(summary: dict, private: bool) -> str:
    if private:
        return ("<div class='warn' id='privacy'><b>PRIVATE: never publish this file.</b> It shows thumbnails of "
                "the original images beside the outputs. The publishable report is ../report.html.</div>")
    outputs = summary.get("private_outputs") or []
    where = (f"They are in {' and '.join(html.escape(p) for p in outputs)}: never publish that private/ folder."
             if outputs else "They were not written; rerun evaluate with --include-private to write them to "
             "private/ (never publish that folder).")
    return ("<p class='muted' id='privacy'>This report is publishable: its gallery shows only the anonymized "
            "outputs, and neither it, summary.json nor per_image.parquet holds text read in the originals or "
            f"pictures of them. {where}</p>")


def render_report(summary: dict, galleries, private: bool = False) -> str:
    """The report page as a string; ``private`` adds the originals' thumbnails to the gallery.

    ``galleries``: method -> ``Gallery`` (what ``evaluate_outputs`` keeps), or a list of scored
    rows (small inputs)."""
    if not isinstance(galleries, dict):
        galleries = {m: Gallery.from_rows(galleries, m) for m in summary["by_method"]}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>unsafe2safe evaluation{' (PRIVATE)' if private else ''}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Anonymization evaluation{' (PRIVATE)' if private else ''}</h1>",
        f"<div class='muted'>original: {html.escape(str(summary.get('original')))} · outputs: "
        f"{html.escape(json.dumps(summary.get('anonymized')))} · {summary.get('seconds', 0)} s</div>",
        _privacy_note(summary, private),
    ]
    unavailable = summary.get("unavailable") or {}
    if unavailable:
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in sorted(unavailable.items()))
        parts.append(f"<div class='warn' id='unavailable'>Metrics not measured in this run:<ul>{items}</ul></div>")
    parts += [
        "<h2>Summary</h2>",
        f"<p class='muted'>Columns marked <b>ours</b> were measured here. Columns marked <b>paper</b> "
        f"are the published numbers ({html.escape(PAPER_SOURCE)}); they were measured on other data "
        "with other models (ArcFace, a VLM reader for TextSim), so compare trends, not digits.</p>",
        _summary_table(summary),
        _histograms(summary),
    ]
    for method in summary["by_method"]:
        gallery = galleries.get(method) or Gallery()
        chosen = gallery.rows()
        parts.append(f"<h2>Gallery: {html.escape(method)} (worst privacy first, {len(chosen)} "
                     f"of {gallery.count})</h2>")
        parts.append("<p class='muted'>Boxes: the sensitive regions the pipeline recorded (red people, blue text).</p>")
        parts.append("<div class='gallery'>" + "".join(_card(r, private) for r in chosen) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str, summary: dict, galleries, storage_options: dict | None = None,
                 private: bool = False) -> None:
    """Render and write the report atomically to ``path`` (any fsspec URI); ``galleries`` as in
    ``render_report``."""
    from unsafe2safe_ray.storage.fs import atomic_write, filesystem

    fs, fs_path = filesystem(path, storage_options)
    atomic_write(fs, fs_path, render_report(summary, galleries, private).encode("utf-8"))
