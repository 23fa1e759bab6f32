"""The second reader's sheet (scripts/second_reader.py): blank labels out, a filled sheet scored against the
annotations beside the majority class, and a sheet that no longer matches the data refused."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from scripts.second_reader import held_lines, score, sources, write_sheet

DATA = Path(__file__).parent / "data" / "roles"
ACTIONS = [{"id": "quote_price", "description": "name a price"}, "none"]


def _role(tmp_path: Path) -> Path:
    """A smith with 30 one-line scenes: mostly neutral and doing nothing, a few happy ones quoting a price."""
    d = tmp_path / "src" / "smith"
    d.mkdir(parents=True)
    shutil.copy(DATA / "smith" / "profile.json", d / "profile.json")
    with (d / "lines.jsonl").open("w") as f:
        for i in range(30):
            happy = i % 4 == 0
            f.write(json.dumps({"actions": ACTIONS, "turns": [
                {"speaker": "player", "text": f"Question number {i}?"},
                {"speaker": "smith", "text": f"Aye, {i} silver." if happy else f"Aye. Answer {i}.",
                 "emotion": "happy" if happy else "neutral", "action": "quote_price" if happy else "none"}]}) + "\n")
    return tmp_path / "src"


def _fill(sheet: Path, label) -> Path:
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        r["emotion"], r["action"] = label(r)
    with sheet.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return sheet


def test_a_sheet_hides_the_labels_and_a_reader_who_gets_them_right_scores_every_line(tmp_path):
    srcs = sources(_role(tmp_path), None)
    truth = {r["key"]: r for r in held_lines(srcs[0])}
    assert truth, "the split holds some scenes out"
    sheet = tmp_path / "sheet.tsv"
    assert write_sheet(srcs, sheet) == len(truth)
    text = sheet.read_text()
    assert "quote_price/none" in text and "\thappy" not in text and "\tneutral" not in text
    report = score(srcs, _fill(sheet, lambda r: (truth[r["key"]]["emotion"], truth[r["key"]]["action"])))
    for kind in ("emotion", "action"):
        systems = report["kinds"][kind]["systems"]
        assert systems["reader"]["accuracy"] == 1.0
        assert systems["majority"]["accuracy"] < 1.0 or all(t[kind] == "neutral" or t[kind] == "none"
                                                             for t in truth.values())


def test_a_reader_who_always_says_neutral_scores_as_the_majority_and_blank_rows_are_counted(tmp_path):
    srcs = sources(_role(tmp_path), None)
    sheet = tmp_path / "sheet.tsv"
    n = write_sheet(srcs, sheet)
    first = held_lines(srcs[0])[0]["key"]
    report = score(srcs, _fill(sheet, lambda r: ("", "") if r["key"] == first else ("neutral", "none")))
    assert report["blank"] == 1 and report["kinds"]["emotion"]["items"] == n - 1
    systems = report["kinds"]["emotion"]["systems"]
    assert systems["reader"]["accuracy"] == systems["majority"]["accuracy"]


def test_a_sheet_from_other_lines_or_with_a_label_not_offered_is_refused(tmp_path):
    src_dir = _role(tmp_path)
    srcs = sources(src_dir, None)
    sheet = tmp_path / "sheet.tsv"
    write_sheet(srcs, sheet)
    with pytest.raises(SystemExit, match="not one of the actions offered"):
        score(srcs, _fill(sheet, lambda r: ("neutral", "wave")))
    lines = src_dir / "smith" / "lines.jsonl"
    lines.write_text(lines.read_text().replace("Answer", "Reply"))
    with pytest.raises(SystemExit, match="not a held-out line"):
        score(sources(src_dir, None), _fill(sheet, lambda r: ("neutral", "none")))
