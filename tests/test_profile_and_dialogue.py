import json

import pytest

from neeko_npc.roles.dialogue import Scene, Turn, load_scenes, split_holdout
from neeko_npc.errors import DialogueError, ProfileError
from neeko_npc.roles.profile import RoleProfile, load_profile


def test_profile_roundtrip_and_system_text(tmp_path):
    p = RoleProfile(id="smith", name="Bram", persona="A gruff smith.", style="Blunt.", knowledge="Iron.", example_lines=["Aye."])
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p.to_dict()))
    q = load_profile(f)
    assert q == p
    text = q.system_text("Location: the forge.")
    assert "You are Bram" in text and "Location: the forge." in text and "Blunt." in text


@pytest.mark.parametrize("bad,needle", [
    ({"name": "X", "persona": "p"}, "missing field(s) id"),
    ({"id": "Bad Id!", "name": "X", "persona": "p"}, "not valid"),
    ({"id": "ok", "name": "X", "persona": ""}, "persona"),
    ({"id": "ok", "name": "X", "persona": "p", "colour": "red"}, "unknown field(s) colour"),
    ({"id": "ok", "name": "X", "persona": "p" * 5000}, "limit is 4000"),
])
def test_profile_errors_name_the_file_and_problem(tmp_path, bad, needle):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert needle in str(e.value)


def test_profile_not_json(tmp_path):
    f = tmp_path / "p.json"
    f.write_text("{nope")
    with pytest.raises(ProfileError, match="not valid UTF-8 JSON"):
        load_profile(f)


def test_character_card_v2_import(tmp_path):
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Mira Thorne", "description": "A hedge witch.", "personality": "Wry and kind.", "scenario": "Lives at the marsh edge.",
        "first_mes": "Mind the toads, {{char}} says.", "mes_example": "<START>\n{{user}}: Hello\n{{char}}: Herbs for your cough?\nMira Thorne: Sit, sit.",
        "extensions": {}}}
    f = tmp_path / "card.json"
    f.write_text(json.dumps(card))
    p = load_profile(f)
    assert p.id == "mira_thorne" and p.name == "Mira Thorne"
    assert p.persona == "A hedge witch. Wry and kind."
    assert p.knowledge == "Lives at the marsh edge."
    assert p.example_lines == ["Mind the toads, Mira Thorne says.", "Herbs for your cough?", "Sit, sit."]


def test_dialogue_errors_point_at_the_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"turns": [{"speaker": "player", "text": "hi"}, {"speaker": "smith", "text": "Aye."}]}\n{"turns": [}\n')
    with pytest.raises(DialogueError, match=r"d.jsonl:2: not valid JSON"):
        load_scenes(f)
    f.write_text('{"turns": [{"speaker": "player", "text": ""}]}\n')
    with pytest.raises(DialogueError, match=r":1: turn 0 has empty text"):
        load_scenes(f)
    f.write_text('{"turns": [{"speaker": "player", "text": "hi"}]}\n')
    with pytest.raises(DialogueError, match="no turn has speaker 'smith'"):
        load_scenes(f, role_id="smith")


def test_holdout_split_is_stable_under_added_data():
    scenes = [Scene((Turn("player", f"q{i}"), Turn("x", f"a{i}"))) for i in range(100)]
    train, held = split_holdout(scenes, 0.2)
    assert 8 <= len(held) <= 35 and len(train) + len(held) == 100
    more = scenes + [Scene((Turn("player", f"new{i}"), Turn("x", "b"))) for i in range(50)]
    _, held2 = split_holdout(more, 0.2)
    assert set(held) <= set(held2)  # no old scene moved into or out of the held-out set
    assert split_holdout(list(reversed(scenes)), 0.2)[1] == list(reversed(held))


def test_beats_in_dialogue_data(tmp_path):
    """A scene declares its actions and a turn may carry an emotion and an action; the split key ignores beats
    (annotating lines never moves a scene between train and held-out) but the data hash does not."""
    from neeko_npc.roles.dialogue import data_hash, parse_scene
    from neeko_npc.roles.prompt import Action

    plain = {"scene": "The forge.", "turns": [{"speaker": "player", "text": "Mend this?"},
                                               {"speaker": "smith", "text": "Three silver."}]}
    beats = json.loads(json.dumps(plain))
    beats["actions"] = [{"id": "quote_price", "description": "tell what the work costs"}, "none"]
    beats["turns"][1].update(emotion="neutral", action="quote_price")
    a, b = parse_scene(plain, "x"), parse_scene(beats, "x")
    assert b.actions == (Action("quote_price", "tell what the work costs"), Action("none"))
    assert (b.turns[1].emotion, b.turns[1].action) == ("neutral", "quote_price") and a.turns[1].emotion == ""
    assert a.key() == b.key() and data_hash([a]) != data_hash([b])

    for change, needle in ((lambda o: o["turns"][1].update(emotion="hungry"), "use one of neutral, happy"),
                           (lambda o: o["turns"][1].update(action="fly"), "'fly', which the scene's 'actions' do not declare"),
                           (lambda o: o["actions"].append("Bad Id"), "must be an id"),
                           (lambda o: o["actions"].append("none"), "declared twice"),
                           (lambda o: o.update(actions="none"), "'actions' must be a list")):
        bad = json.loads(json.dumps(beats))
        change(bad)
        f = tmp_path / "bad.jsonl"
        f.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DialogueError, match=needle.replace("(", r"\(")) as e:
            load_scenes(f)
        assert "bad.jsonl:1" in str(e.value)
