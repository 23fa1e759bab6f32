"""Sentence splitting: the cases the Unity client's SentenceSplitter is tested on, against the Python helper."""

import json
from pathlib import Path

import pytest

from neeko_npc.server.sentences import SentenceSplitter, sentences

CASES = json.loads((Path(__file__).resolve().parent.parent / "unity_client" / "Tests" / "Editor" / "sentence_cases.json")
                   .read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["chunks"][0][:24] or "empty" for c in CASES])
def test_shared_sentence_cases(case):
    assert list(sentences(case["chunks"])) == case["sentences"]


def test_a_sentence_comes_out_as_soon_as_the_next_one_starts():
    s = SentenceSplitter()
    assert s.push("Aye. ") == []  # "Aye. the ..." would go on, so it waits for the next letter
    assert s.push("L") == ["Aye."]
    assert s.push("eave it by the anvil.") == []
    assert s.flush() == "Leave it by the anvil." and s.flush() is None


def test_every_split_of_a_line_gives_the_same_sentences():
    line = 'Mr. Hollis said "Aye!" Then: 3.5 silver... or four? (Laughs.) Done.'
    whole = list(sentences([line]))
    assert whole == ['Mr. Hollis said "Aye!"', "Then: 3.5 silver... or four?", "(Laughs.)", "Done."]
    for cut in range(1, len(line)):
        assert list(sentences([line[:cut], line[cut:]])) == whole, cut
