"""Leaks in published text: private details that a public caption or edit instruction repeats.

The public caption, the edit instruction and the combined caption are published (captions
Parquet, tar sidecars), and a model told to leave sensitive details out can still copy them.
Before a row is written, ``check_row`` compares these texts with what the row's own evidence
says is private, and with patterns that are private whatever the evidence:

- ``ocr_text``: strings OCR read in the image (the ``text`` of the row's regions), matched
  fuzzily, case- and space-insensitively (``detectors.text.normalize_text`` forms, rapidfuzz);
- ``name``: name-like words of the private caption (capitalized, not a common word, not the
  dataset label) that a public text repeats;
- ``phone`` (``phonenumbers``, valid numbers of ``phone_regions`` or in ``+`` form), ``email``,
  ``card`` (13-19 digits passing Luhn), ``iban`` (mod-97) and ``plate`` (the licence-plate
  rules of ``detectors.plates``).

A hit is replaced by a placeholder ("[redacted]"); in ``fail`` mode the row also fails closed.
The row records how many spans were redacted and of which kinds (``verification``), never the
text itself. Model-free and pure: plain functions over strings and a small result dataclass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.config import TEXT_LEAK_KINDS as LEAK_KINDS
from unsafe2safe_ray.config import TextLeaksConfig
from unsafe2safe_ray.detectors.text import normalize_text

__all__ = ["LEAK_KINDS", "PUBLIC_TEXT_FIELDS", "Evidence", "Leak", "TextLeakReport", "check_row",
           "check_texts", "find_leaks", "redact", "row_evidence"]

# Row columns that are published and therefore checked.
PUBLIC_TEXT_FIELDS = ("public_caption", "edit_instruction", "combined_caption")

# Words that are capitalized at times without naming anyone, and words that OCR reads on
# documents and signs without identifying anything. An OCR string made only of these, or a
# capitalized word of the private caption that is one of these, is not private evidence.
COMMON_WORDS = frozenset("""
a about above across after again against all almost along also although always am among an and
another any anyone anything are around as at away back be because been before behind being
below beside between both but by can cannot could did do does doing down during each either
else enough even ever every few for from front further had has have having he her here hers
herself him himself his how however i if in inside into is it its itself just last least less
like many may me might more most much must my myself near neither never next no nobody none nor
not nothing now of off often on once one only onto or other others our ours ourselves out
outside over own per perhaps rather same several she should since so some someone something
still such than that the their theirs them themselves then there these they this those though
through to together too toward towards under until up upon us very was we were what when where
whether which while who whom whose why will with within without would yet you your yours
yourself yourselves
monday tuesday wednesday thursday friday saturday sunday january february march april june
july august september october november december today tomorrow yesterday morning afternoon
evening night
mr mrs ms miss dr prof sir madam mister doctor officer captain
man men woman women person people child children boy girl baby kid kids adult adults family
friend friends couple group crowd player players team worker workers student students teacher
customer customers driver drivers
photo photograph picture image images portrait selfie scene view close closeup shot background
foreground left right center centre top bottom middle side front back corner
face faces head hair eyes hand hands body shirt dress jacket coat hat cap glasses uniform
car cars vehicle vehicles truck bus bike bicycle train street road avenue building house room
office kitchen table desk chair bed window door wall floor sign signs board screen phone laptop
computer book books paper page document documents card cards letter note notes label logo
text texts word words line lines number numbers name names title caption
dog dogs cat cats bird birds animal animals tree trees park garden beach city town
identity id passport licence license driving permit certificate date birth born expires expiry
expiration issued issue valid until surname given first last middle sex gender height nationality
address signature holder class type category code no nr num tel fax email mail www http https com
stop exit entrance open closed sale menu price total welcome hello thank thanks please warning
caution danger private public police taxi parking no entry only way one two three four five six
seven eight nine ten new old big small large red blue green yellow black white grey gray brown
orange pink purple hour hours minute minutes day days week weeks km mph kg lbs max min
read readable unreadable identifiable visible blurred blur hidden obscured replaced removed
changed change make made edit edited keep kept vehicle plate plates reading reads
""".split())

_TITLE_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_SENTENCE_END = ".!?:;\n"
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or hyphens (every card length).
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
# Country code, check digits, then 11-30 alphanumerics in groups (IBANs are 15-34 long).
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")
# Runs of upper-case alphanumeric groups: where a plate reading can sit.
# IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_UPPER_GROUP = re.compile(r"[A-Z0-9]+")
_PLATE_SEPARATORS = frozenset(" -.\u00b7")
# No valid phone number has fewer digits (short codes are not identifiers); skipping texts with
# fewer saves the phone matcher's cost on most captions.
_MIN_PHONE_DIGITS = 5


@dataclass(frozen=True)
class Leak:
    """One private detail found in a text: its ``kind`` and the span ``[start, end)``."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Evidence:
    """What one row says is private: OCR strings and names, as ``normalize_text`` forms."""

    ocr: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


@dataclass
class TextLeakReport:
    """The checked fields with leaks replaced, and what was found (never the text itself)."""

    texts: dict[str, str | None] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # kind -> leaks found
    fields: list[str] = field(default_factory=list)  # fields that held a leak
    redactions: int = 0  # spans replaced (overlapping leaks count once)

    @property
    def found(self) -> bool:
        return self.redactions > 0

    def record(self) -> dict[str, Any]:
        """What the row's ``verification`` keeps: counts and kinds, no text."""
        return {"text_redactions": self.redactions, "text_leak_kinds": sorted(self.kinds),
                "text_leak_fields": list(self.fields)}


# -- evidence ------------------------------------------------------------------------------------


def _is_common(word: str) -> bool:
    return normalize_text(word) in COMMON_WORDS


def ocr_needles(strings: list[str], min_chars: int = 4) -> list[str]:
    """The normalized OCR strings worth looking for: each line, and each of its words, that has
    ``min_chars`` letters or digits and is not made only of common words ("IDENTITY CARD",
    "STOP" are not evidence; "JANE EXAMPLE", "KX 482 TB", "X7041962" are)."""
    needles: list[str] = []
    for line in strings:
        words = [w for w in re.split(r"[\s/|,;]+", line or "") if normalize_text(w)]
        private = [w for w in words if not _is_common(w) or any(c.isdigit() for c in w)]
        if not private:
            continue
        for candidate in [line, *private]:
            norm = normalize_text(candidate)
            if len(norm) >= min_chars and norm not in needles:
                needles.append(norm)
    return needles


def _at_sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'\u201c\u2018([")
    return not before or before[-1] in _SENTENCE_END


def name_candidates(private_caption: str | None, label: str | None = None, min_chars: int = 3) -> list[str]:
    """Name-like words of the private caption, as normalized needles.

    A name-like word is capitalized (not all capitals), not a common word, not a word of the
    dataset label (which is public anyway) and not at a sentence start; a sentence-initial word
    counts when the next word is name-like too ("Ann Smith sits ..."). Each such pair is a
    needle as well ("annsmith").
    """
    text = private_caption or ""
    label_words = {normalize_text(w) for w in re.split(r"[\W_]+", label or "")}
    words = list(_TITLE_WORD.finditer(text))

    def name_like(w: str) -> bool:
        norm = normalize_text(w)
        return (w[0].isupper() and any(c.islower() for c in w[1:]) and len(norm) >= min_chars
                and norm not in COMMON_WORDS and norm not in label_words)

    needles: list[str] = []

    def add(value: str) -> None:
        norm = normalize_text(value)
        if norm and norm not in needles:
            needles.append(norm)

    for i, match in enumerate(words):
        word = match.group()
        if not name_like(word):
            continue
        nxt = words[i + 1] if i + 1 < len(words) else None
        adjacent = nxt is not None and text[match.end():nxt.start()] in (" ", "-") and name_like(nxt.group())
        if not _at_sentence_start(text, match.start()) or adjacent:
            add(word)
        if adjacent:
            add(text[match.start():nxt.end()])
    return needles


def row_evidence(row: dict[str, Any], min_chars: int = 4, min_name_chars: int = 3) -> Evidence:
    """The row's private evidence: OCR text of its regions and names of its private caption."""
    regions = row.get("regions") or []
    strings = [str(r["text"]) for r in regions if isinstance(r, dict) and r.get("text")]
    return Evidence(ocr=tuple(ocr_needles(strings, min_chars)),
                    names=tuple(name_candidates(row.get("private_caption"), row.get("label"), min_name_chars)))


# -- finding -------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _normalized_char(ch: str) -> str:
    return normalize_text(ch)


def _normalized_with_index(text: str) -> tuple[str, list[int]]:
    """``normalize_text`` applied character by character, with each kept character's position in
    ``text``: fuzzy matches on the normalized form map back to spans of the original."""
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        for c in _normalized_char(ch):
            chars.append(c)
            index.append(i)
    return "".join(chars), index


def fuzzy_spans(text: str, needle: str, threshold: float = 85.0, max_hits: int = 20,
                normalized: tuple[str, list[int]] | None = None) -> list[tuple[int, int]]:
    """Spans of ``text`` whose words read like ``needle`` (a normalized form), case-, space- and
    punctuation-insensitively. A partial alignment is grown to whole words and accepted when the
    words' normalized form has a rapidfuzz ratio of at least ``threshold`` with the needle, so
    "rest" is not found inside "forest". ``normalized`` is ``_normalized_with_index(text)`` when
    the caller already has it."""
    from rapidfuzz import fuzz

    if not needle:
        return []
    norm, index = normalized or _normalized_with_index(text)
    masked = norm
    spans: list[tuple[int, int]] = []
    for _ in range(max_hits):
        if len(needle) > len(masked):
            break
        hit = fuzz.partial_ratio_alignment(needle, masked, score_cutoff=threshold)
        if hit is None or hit.dest_end <= hit.dest_start:
            break
        start, end = index[hit.dest_start], index[hit.dest_end - 1] + 1
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        while end < len(text) and text[end].isalnum():
            end += 1
        if fuzz.ratio(needle, normalize_text(text[start:end])) >= threshold:
            spans.append((start, end))
        # Mask what was looked at so that the next round finds the next occurrence.
        lo = min(hit.dest_start, next(j for j, i in enumerate(index) if i >= start))
        hi = max(hit.dest_end, max((j + 1 for j, i in enumerate(index) if i < end), default=hit.dest_end))
        masked = masked[:lo] + "\0" * (hi - lo) + masked[hi:]
    return spans


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    compact = compact.upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def card_spans(text: str) -> list[tuple[int, int]]:
    """Payment card numbers: 13-19 digits (grouped or not) that pass the Luhn check."""
    out = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if len(set(digits)) > 1 and _luhn_ok(digits):
            out.append(m.span())
    return out


def iban_spans(text: str) -> list[tuple[int, int]]:
    """IBANs, compact or in groups of their country's length, that pass the mod-97 check (words
    after the number are not swallowed: the length comes from the country code)."""
    out = []
    for m in _IBAN.finditer(text):
        candidate = m.group()
        length = IBAN_LENGTHS.get(candidate[:2].upper())
        positions = [i for i, c in enumerate(candidate) if c != " "]
        if length is None or len(positions) < length:
            continue
        if _iban_ok("".join(candidate[i] for i in positions[:length])):
            out.append((m.start(), m.start() + positions[length - 1] + 1))
    return out


def email_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _EMAIL.finditer(text)]


def phone_spans(text: str, regions: tuple[str, ...] | list[str] = ("US", "GB")) -> list[tuple[int, int]]:
    """Valid phone numbers (``phonenumbers``) in the national formats of ``regions`` or in
    international ``+`` form."""
    import phonenumbers

    spans = set()
    for region in regions or ("US",):
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            spans.add((match.start, match.end))
    return sorted(spans)


def plate_spans(text: str) -> list[tuple[int, int]]:
    """Upper-case readings shaped like licence plates (``detectors.plates`` rules: two or more
    letters and digits in at most three groups). Of overlapping candidates the longest wins."""
    from unsafe2safe_ray.detectors.plates import PlateRules, looks_like_plate
    from unsafe2safe_ray.detectors.text import TextLine

    rules = PlateRules()
    groups = [m for m in _UPPER_GROUP.finditer(text)
              if (m.start() == 0 or not text[m.start() - 1].isalnum())
              and (m.end() == len(text) or not text[m.end()].isalnum())]
    # Runs of groups joined by one plate separator.
    runs: list[list[re.Match]] = []
    for m in groups:
        if runs and m.start() - runs[-1][-1].end() == 1 and text[m.start() - 1] in _PLATE_SEPARATORS:
            runs[-1].append(m)
        else:
            runs.append([m])
    out = []
    for run in runs:
        windows = []
        for i in range(len(run)):
            for j in range(i, min(len(run), i + rules.max_groups)):
                start, end = run[i].start(), run[j].end()
                reading = text[start:end]
                # "OPEN 24 HOURS", "32 AND": a common word is not a plate's letter group.
                if any(len(g) >= 3 and g.isalpha() and g.lower() in COMMON_WORDS for g in re.split(r"[ \-.\u00b7]", reading)):
                    continue
                if looks_like_plate(TextLine(bbox=[0, 0, 4 * 10, 10], text=reading, score=1.0), rules):
                    windows.append((sum(c.isalnum() for c in reading), start, end))
        taken: list[tuple[int, int]] = []
        for _, start, end in sorted(windows, key=lambda w: (-w[0], w[1])):
            if all(end <= s or start >= e for s, e in taken):
                taken.append((start, end))
        out.extend(sorted(taken))
    return out


def find_leaks(text: str | None, evidence: Evidence, settings: Any = None) -> list[Leak]:
    """Every private detail in ``text`` (see the module docstring), in text order."""
    settings = settings or _default_settings()
    if not text:
        return []
    kinds = set(settings.kinds)
    leaks: list[Leak] = []

    def add(kind: str, spans) -> None:
        leaks.extend(Leak(kind, s, e) for s, e in spans)

    normalized = _normalized_with_index(text)
    if "ocr_text" in kinds:
        for needle in evidence.ocr:
            add("ocr_text", fuzzy_spans(text, needle, settings.fuzzy_threshold, normalized=normalized))
    if "name" in kinds:
        for needle in evidence.names:
            add("name", fuzzy_spans(text, needle, settings.fuzzy_threshold, normalized=normalized))
    if "email" in kinds:
        add("email", email_spans(text))
    if "card" in kinds:
        add("card", card_spans(text))
    if "iban" in kinds:
        add("iban", iban_spans(text))
    if "phone" in kinds and sum(c.isdigit() for c in text) >= _MIN_PHONE_DIGITS:
        add("phone", phone_spans(text, settings.phone_regions))
    if "plate" in kinds:
        add("plate", plate_spans(text))
    return sorted(leaks, key=lambda leak: (leak.start, -leak.end))


def redact(text: str, leaks: list[Leak], placeholder: str = "[redacted]") -> tuple[str, int]:
    """``text`` with every leak's span (overlaps merged) replaced by ``placeholder``; returns the
    new text and the number of spans replaced."""
    merged: list[list[int]] = []
    for leak in sorted(leaks, key=lambda leak: leak.start):
        if merged and leak.start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], leak.end)
        else:
            merged.append([leak.start, leak.end])
    out, pos = [], 0
    for start, end in merged:
        out.append(text[pos:start])
        out.append(placeholder)
        pos = end
    out.append(text[pos:])
    return "".join(out), len(merged)


def check_texts(texts: dict[str, str | None], evidence: Evidence, settings: Any = None) -> TextLeakReport:
    """Check and redact each text of ``texts`` (field name -> text)."""
    settings = settings or _default_settings()
    report = TextLeakReport(texts=dict(texts))
    for name, text in texts.items():
        leaks = find_leaks(text, evidence, settings)
        if not leaks:
            continue
        for leak in leaks:
            report.kinds[leak.kind] = report.kinds.get(leak.kind, 0) + 1
        report.texts[name], replaced = redact(text, leaks, settings.placeholder)
        report.redactions += replaced
        report.fields.append(name)
    return report


def check_row(row: dict[str, Any], settings: Any = None) -> dict[str, Any]:
    """The write path's one call: check the row's published texts against its own evidence.

    ``settings`` is a ``config.TextLeaksConfig``. ``off`` returns the row as it is. Otherwise
    leaks are replaced in the row, and ``verification`` records ``text_redactions``,
    ``text_leak_kinds`` and ``text_leak_fields``; in ``fail`` mode a row with a leak also fails
    (its pixels are withheld; the redacted texts stay, so the captions table shows no leak).
    """
    settings = settings or _default_settings()
    if settings.mode == "off":
        return row
    texts = {name: row.get(name) for name in PUBLIC_TEXT_FIELDS if row.get(name)}
    if not texts:
        return row
    report = check_texts(texts, row_evidence(row, settings.min_chars, settings.min_name_chars), settings)
    if not report.found:
        return row
    row.update(report.texts)
    records.update_verification(row, **report.record())
    if settings.mode == "fail" and row.get("status") != records.FAILED:
        kinds = ", ".join(sorted(report.kinds))
        records.fail(row, f"publish: {', '.join(report.fields)} repeated private details ({kinds}); "
                          "redacted, and the image withheld (publish.text_leaks.mode=fail)")
    return row


def _default_settings() -> TextLeaksConfig:
    return TextLeaksConfig()
