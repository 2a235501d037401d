"""Published-text leak check: private details planted in public captions and edit instructions
are found and redacted (or fail the row); ordinary captions pass untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unsafe2safe_ray import records
from unsafe2safe_ray.config import TextLeaksConfig, load_config
from unsafe2safe_ray.detectors.text_leaks import (
    Evidence,
    check_row,
    check_texts,
    find_leaks,
    name_candidates,
    ocr_needles,
    redact,
    row_evidence,
)

NO_EVIDENCE = Evidence()
ORDINARY = [
    "a man in a blue shirt holding a cup at 3 pm",
    "a group of 12 people in 2024 in room 101",
    "the year 1999, a score of 3-1 on route 66 at 10:30",
    "an iPhone 15 Pro and 0.5 liters of water on a table",
    "a sign reading OPEN 24 HOURS above a shop door",
    "A photo of a dog with one person whose face is not identifiable.",
    "replace the person's face with a different adult and blur the text",
]


def _kinds(text: str, evidence: Evidence = NO_EVIDENCE) -> list[str]:
    return sorted({leak.kind for leak in find_leaks(text, evidence)})


def _redacted(text: str, evidence: Evidence = NO_EVIDENCE) -> str:
    return redact(text, find_leaks(text, evidence))[0]


@pytest.mark.parametrize("caption", ORDINARY)
def test_ordinary_captions_have_no_leaks(caption):
    evidence = row_evidence({"regions": [{"text": "IDENTITY CARD"}, {"text": "STOP"}],
                             "private_caption": "A photo of a Labrador on a Monday morning.", "label": "Labrador"})
    assert find_leaks(caption, evidence) == []


@pytest.mark.parametrize("number", [
    "+1 415-555-0132", "(415) 555-0132", "415.555.0132", "+44 20 7946 0958", "020 7946 0958",
    "+49 30 901820", "+33 1 42 68 53 00",
])
def test_phone_numbers_in_several_formats(number):
    text = f"a woman calling {number} from a kiosk"
    assert _kinds(text) == ["phone"]
    out = _redacted(text)
    assert out == "a woman calling [redacted] from a kiosk"
    assert not any(ch.isdigit() for ch in out)


def test_email_address():
    assert _redacted("a card that says jane.doe+work@example.co.uk today") == "a card that says [redacted] today"


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111111111111111", "4111-1111-1111-1111"])
def test_visa_test_number_passes_luhn_and_is_redacted(card):
    text = f"a credit card numbered {card} on a desk"
    assert "card" in _kinds(text)
    assert _redacted(text) == "a credit card numbered [redacted] on a desk"


def test_digit_runs_that_fail_luhn_are_not_cards():
    assert "card" not in _kinds("a receipt with order 4111 1111 1111 1112 on it")


@pytest.mark.parametrize("iban", ["GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "gb82west12345698765432"])
def test_iban_passes_mod97_and_is_redacted(iban):
    text = f"a transfer form to {iban} and more"
    assert "iban" in _kinds(text)
    assert _redacted(text) == "a transfer form to [redacted] and more"


def test_iban_with_wrong_check_digits_is_not_an_iban():
    assert "iban" not in _kinds("a form to GB83WEST12345698765432 today")


def test_plate_read_by_ocr_is_found_in_any_spelling():
    evidence = row_evidence({"regions": ([{"category": "text_and_symbols", "kind": "licence_plate",
                                                     "bbox": [200, 225, 440, 285], "text": "KX 482 TB"}])})
    assert evidence.ocr == ("kx482tb",)
    for spelling in ("KX 482 TB", "kx482tb", "Kx-482-Tb", "K X 4 8 2 T B", "KX 482 T8"):
        text = f"a red car with the plate {spelling} parked on a road"
        assert _redacted(text, evidence) == "a red car with the plate [redacted] parked on a road", spelling


def test_plate_like_pattern_without_evidence():
    assert _redacted("a red car with the plate KX 482 TB parked") == "a red car with the plate [redacted] parked"


def test_ocr_strings_made_of_common_words_are_not_evidence():
    assert ocr_needles(["IDENTITY CARD", "Date of birth", "STOP", "Surname / Given name"]) == []
    assert ocr_needles(["JANE EXAMPLE", "14.03.1981"]) == ["janeexample", "jane", "example", "14031981"]


def test_ocr_text_is_matched_fuzzily_but_only_as_whole_words():
    evidence = Evidence(ocr=("janeexample", "x7041962", "rest"))
    assert _redacted("the card of Jane Example's family", evidence) == "the card of [redacted]'s family"
    assert _redacted("card number x 704 1962", evidence) == "card number [redacted]"
    assert _redacted("a forest at rest", evidence) == "a forest at [redacted]"


def test_names_from_the_private_caption():
    names = name_candidates("Ann Smith sits on a bench beside Dr Jones in Paris. The Labrador sleeps.", label="labrador")
    assert set(names) == {"ann", "annsmith", "smith", "jones", "paris"}
    evidence = Evidence(names=tuple(names))
    assert _redacted("a woman named Ann Smith on a bench", evidence) == "a woman named [redacted] on a bench"
    assert _redacted("smith's dog waits while jones reads", evidence) == "[redacted]'s dog waits while [redacted] reads"
    # Not names: the label, common capitalized words, a sentence start on its own, parts of words.
    assert find_leaks("a labrador on a bench on Monday; annual blacksmiths", evidence) == []
    assert name_candidates("Portrait of a man. He holds a cup.") == []


def test_check_texts_reports_kinds_and_counts_without_text():
    report = check_texts({"public_caption": "Ann at +1 415-555-0132", "edit_instruction": "blur the face"},
                         Evidence(names=("ann",)))
    assert report.texts == {"public_caption": "[redacted] at [redacted]", "edit_instruction": "blur the face"}
    assert report.record() == {"text_redactions": 2, "text_leak_kinds": ["name", "phone"],
                               "text_leak_fields": ["public_caption"]}
    assert "415" not in json.dumps(report.record()) and "Ann" not in json.dumps(report.record())


def _row(**fields) -> dict:
    row = records.new_row("k", 0, "mem://k.png", "cat", 1)
    row.update(status=records.EDITED, privacy_flag=True, image=b"\0" * 12, width=2, height=2,
               verification={"ok": True},
               regions=list([{"category": "text_and_symbols", "bbox": [0, 0, 2, 1], "text": "JANE EXAMPLE"}]),
               private_caption="Jane Example holds her card.")
    row.update(fields)
    return row


def test_check_row_redacts_and_records_in_verification():
    row = check_row(_row(public_caption="a card of JANE EXAMPLE, call 020 7946 0958",
                         edit_instruction="replace Jane's face", combined_caption="a card"), TextLeaksConfig())
    assert row["public_caption"] == "a card of [redacted], call [redacted]"
    assert row["edit_instruction"] == "replace [redacted]'s face"
    assert row["combined_caption"] == "a card"
    assert row["status"] == records.EDITED and row["image"] is not None
    verification = row["verification"]
    assert verification["ok"] is True
    assert verification["text_redactions"] == 3
    assert verification["text_leak_kinds"] == ["name", "ocr_text", "phone"]
    assert "jane" not in str(row["verification"]).lower()


def test_check_row_fail_mode_fails_closed_and_still_redacts():
    config = load_config("none", overrides=["publish.text_leaks=fail"]).publish.text_leaks
    assert config.mode == "fail"
    row = check_row(_row(public_caption="JANE EXAMPLE on a card"), config)
    assert row["status"] == records.FAILED and row["image"] is None
    assert row["public_caption"] == "[redacted] on a card"
    assert "publish.text_leaks.mode=fail" in row["error"] and "ocr_text" in row["error"]
    assert "JANE" not in row["error"].upper()


def test_check_row_clean_and_off_rows_are_untouched():
    clean = _row(public_caption="a person holds a card")
    assert check_row(dict(clean), TextLeaksConfig()) == clean
    leaking = _row(public_caption="JANE EXAMPLE")
    assert check_row(dict(leaking), TextLeaksConfig(mode="off")) == leaking


def test_config_section_is_typed():
    from unsafe2safe_ray.config import ConfigError

    config = load_config("none", overrides=["publish.text_leaks.mode=off", "publish.text_leaks.kinds=[phone]"])
    assert config.publish.text_leaks.mode == "off" and config.publish.text_leaks.kinds == ["phone"]
    with pytest.raises(ConfigError):
        load_config("none", overrides=["publish.text_leaks.mode=maybe"])
    with pytest.raises(ConfigError):
        load_config("none", overrides=["publish.text_leaks.colour=red"])


def test_plate_read_from_the_example_image_is_redacted(text_detector, sample_images):
    lines = text_detector.read(np.asarray(Image.open(sample_images / "licence_plate.jpg").convert("RGB")))
    row = _row(regions=list([{"category": "text_and_symbols", "bbox": line.bbox, "text": line.text}
                                   for line in lines]),
               public_caption="a red car whose plate reads kx 482 tb on a grey road")
    row = check_row(row, TextLeaksConfig())
    assert row["public_caption"] == "a red car whose plate reads [redacted] on a grey road"


def test_config_shorthand_and_yaml_off():
    assert load_config("none", overrides=["publish.text_leaks=off"]).publish.text_leaks.mode == "off"
    assert load_config("none").publish.text_leaks.mode == "redact"
