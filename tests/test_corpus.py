"""The outside corpus's converter (scripts/outside_corpus.py): a play's script in, role sources the bake reads out."""

from neeko_npc.roles.dialogue import load_scenes
from neeko_npc.roles.profile import load_profile
from scripts.outside_corpus import (OFFICE_WORK, office_cast, office_speeches, parse_play, role_sources,
                                    write_role_sources)

PLAY = """# The Test

## ACT I

### SCENE I. A heath. Thunder.

_Enter FIRST WITCH and SECOND WITCH_

**FIRST WITCH**  
When shall we two meet again  
In thunder, lightning, or in rain?

**SECOND WITCH**  
When the hurlyburly's done.

_Exit FIRST WITCH_

**SECOND WITCH**  
Fair is foul.

### SCENE II. A camp.

**SECOND WITCH**  
Where hast thou been, sister?

**FIRST WITCH**  
Killing swine, all the long night through, and more besides, if any man would listen to me tell of it.

**SECOND WITCH**  
I'll give thee a wind.

**SECOND WITCH**  
Here I have a pilot's thumb.
"""


def test_a_play_parses_into_speeches_with_their_scene():
    title, speeches = parse_play(PLAY)
    assert title == "The Test"
    assert [(s.speaker, s.text) for s in speeches[:2]] == [
        ("FIRST WITCH", "When shall we two meet again In thunder, lightning, or in rain?"),
        ("SECOND WITCH", "When the hurlyburly's done.")]
    assert len(speeches) == 7 and speeches[3].scene == "SCENE II. A camp."  # stage directions and headings dropped


def test_role_sources_keep_only_the_plays_own_words_and_read_back(tmp_path):
    title, speeches = parse_play(PLAY)
    profile, records = role_sources(title, speeches, "SECOND WITCH", "witch", max_lines=3, max_words=12,
                                    example_lines=1)
    # each kept line is the character's, with the speech before it in the same scene as context (cut to the
    # word limit), never a speech across a scene break or one of its own
    assert records[0] == {"scene": "The Test, A heath. Thunder.", "turns": [
        {"speaker": "First Witch", "text": "When shall we two meet again In thunder, lightning, or in rain?"},
        {"speaker": "witch", "text": "When the hurlyburly's done."}]}
    assert records[1]["turns"] == [{"speaker": "witch", "text": "Fair is foul."}]  # the speech before is its own
    assert records[2]["scene"] == "The Test, A camp." and len(records[2]["turns"]) == 1  # first in its scene
    assert len(records) == 3
    # the example line comes after every kept line, so no held-out line reaches the profile
    assert profile.example_lines == ["I'll give thee a wind."]
    assert profile.name == "Second Witch" and "The Test" in profile.persona and not profile.style

    write_role_sources(tmp_path / "witch", profile, records)
    assert load_profile(tmp_path / "witch" / "profile.json") == profile
    scenes = load_scenes(tmp_path / "witch" / "lines.jsonl", "witch")
    assert [sc.npc_lines("witch") for sc in scenes] == [1, 1, 1]


def _row(episode, character, text, season="01", name="Pilot"):
    return {"season": season, "episode": episode, "episode_name": name, "character": character, "text": text}


def test_a_transcript_table_becomes_speeches_whose_context_never_crosses_an_episode():
    rows = [_row("01", "Michael", "Any messages?"), _row("01", "Pam", "Uh, yeah.  Just a fax."),
            _row("01", "Jim", "   "),  # an empty line is no speech
            _row("02", "Pam", "Dunder Mifflin, this is Pam.", name="Diversity Day"),
            _row("02", "Michael", "Pam, get in here, there is a fax for you.", name="Diversity Day"),
            _row("02", "Pam", "I will be right there, Michael.", name="Diversity Day")]
    speeches = office_speeches(rows)
    assert [(s.speaker, s.text) for s in speeches][:2] == [("Michael", "Any messages?"), ("Pam", "Uh, yeah. Just a fax.")]
    assert len(speeches) == 5 and speeches[2].scene == "Diversity Day (season 1, episode 2)"
    assert office_cast(speeches, 1) == ["Pam"]  # three lines against two: the cast is counted, not chosen

    profile, records = role_sources("The Office", speeches, "Pam", "pam", max_lines=2, min_words=2,
                                    example_lines=1, work=OFFICE_WORK)
    assert records[0]["turns"][0] == {"speaker": "Michael", "text": "Any messages?"}
    # the episode's first line has no context: the line before it belongs to another episode
    assert records[1] == {"scene": "The Office, Diversity Day (season 1, episode 2)",
                          "turns": [{"speaker": "pam", "text": "Dunder Mifflin, this is Pam."}]}
    assert profile.persona == "Pam, a character in the American TV series The Office."
    assert profile.example_lines == ["I will be right there, Michael."]
