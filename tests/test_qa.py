"""Stage 4 (QA): every structural type gives the exact answer on a hand-made movie; LLM items via the local server;
every item points at the frames it is about; settings are checked on creation."""
import json
import random
from collections import Counter

import pytest

from dreamframe.config import ConfigError
from dreamframe.llm import LLM, LLMConfig
from dreamframe.qa import (QA_TYPES, STRUCTURAL_TYPES, QAConfig, balance, before_after_qa, build_qa, characters_together_qa,
                           check_qa, dedup, dialogue_attribution_qa, next_location_qa, range_summary_qa, scene_count_qa, story_qa,
                           temporal_order_qa)
from dreamframe.qa_llm import LLM_TYPES, llm_check, response_model
from dreamframe.schema import QA, Character, Frame, Line, Location, Movie, Shot, Substory

from dreamframe.testing import LocalLLMServer, schema_instance   # the server's own filler


def F(prompt, *who, where=None): return Frame(prompt=prompt, characters=list(who), location=where)


def hand_made() -> Movie:
    "8 frames, 3 parts, 5 scenes (3 at the harbour), 5 lines with known speakers."
    return Movie(
        title="Harbour Lights", overview="Ann comes home before a storm.", style_keyword="ink",
        characters=[Character(name=n, look=f"a person who looks like {n}") for n in ("Ann", "Ben", "Cal")],
        locations=[Location(name="harbour"), Location(name="library"), Location(name="tower")],
        substories=[
            Substory(title="Arrival", content="Ann arrives and meets Ben and Cal.", shots=[
                Shot(title="Ann arrives", location="harbour", content="Ann walks on the pier and greets Ben.",
                     frames=[F("Ann walks on the pier", "Ann"), F("Ann and Ben talk", "Ann", "Ben")],
                     lines=[Line(text="Hello, Ben.", speaker="Ann", after_frame=0), Line(text="Welcome back.", speaker="Ben", after_frame=1)],
                     qa=[QA(question="Who meets Ann?", answer="Ben.")]),
                Shot(title="The old books", location="library", content="Ben reads while Cal watches.",
                     frames=[F("Ben reads a book", "Ben"), F("Cal looks at Ben", "Ben", "Cal")],
                     lines=[Line(text="What are you reading?", speaker="Cal", after_frame=1)])],
                qa=[QA(question="Where does Ann arrive?", answer="At the harbour.")]),
            Substory(title="Storm", content="A storm comes; the three meet at the harbour.", shots=[
                Shot(title="Back at the harbour", location="harbour", content="Ann warns the others.",
                     frames=[F("Ann holds a lamp", "Ann"), F("Ann, Ben and Cal stand together", "Ann", "Ben", "Cal")],
                     lines=[Line(text="The storm is coming.", speaker="Ann", after_frame=0)]),
                Shot(title="The tower", location="tower", content="Cal climbs the tower.", frames=[F("Cal climbs the stairs", "Cal")])]),
            Substory(title="Calm", content="The morning after.", shots=[
                Shot(title="Morning", location="harbour", content="Ben rests.", frames=[F("Ben sits on the pier", "Ben")],
                     lines=[Line(text="It is over.", speaker="Ben", after_frame=0)])])],
        movie_qa=[QA(question="What is the movie about?", answer="A storm at a harbour.")])


@pytest.fixture
def movie(): return hand_made()


def by(items, key=lambda i: i.question): return {key(i): i for i in items}


def test_scene_count(movie):
    items = by(scene_count_qa(movie, random.Random(0), None))
    assert {q: i.answer for q, i in items.items()} == {"How many scenes take place in the harbour?": "3",
                                                        "How many scenes take place in the library?": "1",
                                                        "How many scenes take place in the tower?": "1"}
    assert items["How many scenes take place in the harbour?"].frame_ids == ["s01.t01.f01", "s01.t01.f02", "s02.t01.f01", "s02.t01.f02", "s03.t01.f01"]


def test_next_location(movie):
    items = next_location_qa(movie, random.Random(0), None, n_choices=3)
    assert [(i.question.split('"')[1], i.answer) for i in items] == [
        ("Ann arrives", "library"), ("The old books", "harbour"), ("Back at the harbour", "tower"), ("The tower", "harbour")]
    assert items[0].frame_ids == ["s01.t01.f02", "s01.t02.f01"]
    assert all(i.answer in i.choices and len(i.choices) == 3 for i in items)


def test_characters_together(movie):
    items = characters_together_qa(movie, random.Random(0), None)
    assert [(i.question, i.answer, i.frame_ids) for i in items] == [
        ('Which characters appear together in the scene "Ann arrives"?', "Ann and Ben", ["s01.t01.f02"]),
        ('Which characters appear together in the scene "The old books"?', "Ben and Cal", ["s01.t02.f02"]),
        ('Which characters appear together in the scene "Back at the harbour"?', "Ann, Ben and Cal", ["s02.t01.f02"])]


def test_dialogue_attribution(movie):
    items = dialogue_attribution_qa(movie, random.Random(0), None)
    assert [(i.question, i.answer, i.frame_ids) for i in items] == [
        ('Who says "Hello, Ben."?', "Ann", ["s01.t01.f01"]), ('Who says "Welcome back."?', "Ben", ["s01.t01.f02"]),
        ('Who says "What are you reading?"?', "Cal", ["s01.t02.f02"]), ('Who says "The storm is coming."?', "Ann", ["s02.t01.f01"]),
        ('Who says "It is over."?', "Ben", ["s03.t01.f01"])]
    assert all(i.choices == ["Ann", "Ben", "Cal"] for i in items)


def test_temporal_order(movie):
    position = {f.prompt: k for k, f in enumerate(movie.frames)}
    position |= {s.title: k for k, s in enumerate(movie.shots)}
    items = temporal_order_qa(movie, random.Random(1), 30)
    assert len(items) == 30 and len({i.question for i in items}) == 30
    for item in items:
        first, second = sorted(item.choices, key=position.get)
        assert item.answer == first and f'"{first}"' in item.question and f'"{second}"' in item.question
        assert position[first] < position[second]
    assert {"Which happens first", "Which comes first"} == {i.question.split(":")[0].rsplit(" in the movie", 1)[0] for i in items}
    frame_level = next(i for i in items if i.question.startswith("Which happens first"))
    assert frame_level.frame_ids == sorted(frame_level.frame_ids, key=[f.id for f in movie.frames].index)


def test_before_after(movie):
    prompts = [f.prompt for f in movie.frames]
    items = before_after_qa(movie, random.Random(0), None)
    assert len(items) == len(prompts)
    for item in items:
        word, anchor = item.question.split('"')[0].split()[-1], item.question.split('"')[1]
        expected = prompts[prompts.index(anchor) + (1 if word == "after" else -1)]
        assert item.answer == expected
    assert items[0].question == 'What happens right after "Ann walks on the pier"?' and items[0].answer == "Ann and Ben talk"
    assert items[0].frame_ids == ["s01.t01.f01", "s01.t01.f02"]


def test_range_summary(movie):
    items = by(range_summary_qa(movie, random.Random(0), None))
    assert items['What happens in the scene "The tower"?'].answer == "Cal climbs the tower."
    assert items['What happens in the scene "The tower"?'].frame_ids == ["s02.t02.f01"]
    storm = items['What happens in the part of the movie called "Storm"?']
    assert storm.answer == "A storm comes; the three meet at the harbour."
    assert storm.frame_ids == ["s02.t01.f01", "s02.t01.f02", "s02.t02.f01"]


def test_story_qa_levels(movie):
    items = story_qa(movie)
    everything = [f.id for f in movie.frames]
    assert [(i.type, i.frame_ids) for i in items] == [("story_movie", everything), ("story_substory", ["s01.t01.f01", "s01.t01.f02", "s01.t02.f01", "s01.t02.f02"]),
                                                      ("story_shot", ["s01.t01.f01", "s01.t01.f02"])]


def test_deterministic_and_seeded(movie):
    a = [i.model_dump() for i in temporal_order_qa(movie, random.Random("0:x"), 10)]
    assert a == [i.model_dump() for i in temporal_order_qa(movie, random.Random("0:x"), 10)]
    assert a != [i.model_dump() for i in temporal_order_qa(movie, random.Random("1:x"), 10)]


def test_dedup_and_balance():
    items = [QA(type="a", question=f"Q {k}?", answer="x") for k in range(50)] + [QA(type="a", question="q 0", answer="y")]
    items += [QA(type=t, question=f"{t} {k}", answer="x") for t in "bcd" for k in range(3 + "bcd".index(t))]
    kept = balance(dedup(items), 0.35, random.Random(0))
    counts = Counter(i.type for i in kept)
    assert max(counts.values()) / len(kept) <= 0.35 and counts["b"] == 3 and counts["d"] == 5
    assert len(dedup(items)) == len(items) - 1


def test_config_validation():
    with pytest.raises(ConfigError, match=r"(?s)QAConfig.*at \$\.mix\.why.*'temporal_order'"): QAConfig(mix={"why": 1})
    with pytest.raises(ConfigError, match=r"at \$\.mix\.causal: .*greater than or equal to 0"): QAConfig(mix={"causal": -1})
    with pytest.raises(ConfigError, match=r"at \$\.max_share: .*less than or equal to 1 \(got 1\.5\) — max_share: no type may exceed"): QAConfig(max_share=1.5)
    with pytest.raises(ConfigError, match="dialogue_turns"): QAConfig(dialogue_turns=1)
    with pytest.raises(ConfigError, match="progress"): QAConfig(progress=False)   # an argument of build_qa, not a setting
    assert QAConfig(mix={"causal": 0}).cap("causal") == 0 and QAConfig().cap("causal") is None


def test_mc_check_and_frame_enum(movie):
    model = response_model("multiple_choice", 1, ["s01.t01.f01"], QAConfig(n_choices=3))
    with pytest.raises(Exception): model(items=[dict(question="q", correct_answer="a", distractors=["b", "c"], frame_ids=["s09.t01.f01"])])
    obj = model(items=[dict(question="q", correct_answer="a", distractors=["A!", "c"], frame_ids=["s01.t01.f01"])])
    assert llm_check("multiple_choice", movie)(obj) == ["item 0: the distractors must differ from the correct answer and from each other"]


def local(base_url): return LLMConfig(model="local-test", base_url=base_url, timeout_s=5, retry_base_s=0.01, retry_max_s=0.05)


def test_build_qa_with_local_server(movie, tmp_path):
    movie.save(tmp_path)
    with LocalLLMServer() as server:
        llm = LLM(local(server.base_url), cache_dir=tmp_path / "llm")
        qaset = build_qa(QAConfig(llm_items=4, items_per_call=2), llm, tmp_path, progress=False)
    saved = json.loads((tmp_path / "qa.json").read_text())
    assert [i["id"] for i in saved] == [f"qa{k:04d}" for k in range(1, len(saved) + 1)]
    assert [QA.model_validate(i) for i in saved] == qaset.items   # qa.json holds schema.QA items
    counts = Counter(i["type"] for i in saved)
    assert set(counts) == set(QA_TYPES)
    assert max(counts.values()) / len(saved) <= 0.35
    assert check_qa(movie, qaset.items) == []
    for item in qaset.items:
        if item.type == "multiple_choice": assert len(item.choices) == 4 and item.answer in item.choices
        if item.type == "dialogue": assert len(item.turns) == 3 and item.turns[0].question == item.question
        if item.type == "character": assert any(n in item.question + item.answer for n in ("Ann", "Ben", "Cal"))
    # resumable: a second run answers every request from RUN/llm/ and writes the same file
    again = LLM(local("http://127.0.0.1:9/v1"), cache_dir=tmp_path / "llm")
    build_qa(QAConfig(llm_items=4, items_per_call=2), again, tmp_path, progress=False)
    assert again.stats.sent == 0 and json.loads((tmp_path / "qa.json").read_text()) == saved
    config = json.loads((tmp_path / "config.json").read_text())["qa"]
    assert config["llm_items"] == 4 and "llm" not in config and "progress" not in config   # the LLM has its own section


def test_every_item_points_at_its_frames(movie, tmp_path):
    "Issue 14.8: items about the whole movie point at every frame; items about a part at frames of that part only."
    movie.save(tmp_path)
    with LocalLLMServer() as server:
        build_qa(QAConfig(llm_items=4, items_per_call=2), LLM(local(server.base_url), cache_dir=tmp_path / "llm"), tmp_path, progress=False)
    saved = json.loads((tmp_path / "qa.json").read_text())
    everything = [f.id for f in movie.frames]
    parts = {s.id: [f.id for sh in s.shots for f in sh.frames] for s in movie.substories}
    whole = [i for i in saved if i["type"] in ("overview", "style", "story_movie")]
    assert {i["type"] for i in whole} == {"overview", "style", "story_movie"}
    assert all(i["frame_ids"] == everything for i in whole)
    for item in saved:
        assert item["frame_ids"], item
        if item["type"] in ("causal", "character", "dialogue", "multiple_choice", "story_substory", "story_shot", "range_summary"):
            part = item["frame_ids"][0].split(".")[0]
            assert set(item["frame_ids"]) <= set(parts[part]), item
    assert check_qa(movie, [QA(type="overview", question="What is it about?", answer="A storm.")]) == [
        "QA 'What is it about?' (overview): points at no frames (an item about the whole movie points at all of them)"]


def test_llm_text_that_breaks_formats_is_repaired(movie, tmp_path):
    "An LLM answer holding <image> (or only whitespace) fails the response model; the client asks again; qa.json stays clean."
    def answer(request: dict) -> str:
        value = schema_instance(request["response_format"]["json_schema"]["schema"], seed=len(request["messages"]))
        first_try = len(request["messages"]) == 2
        def spoil(node):
            if isinstance(node, dict): return {k: ("see <image> here" if first_try and k == "answer" else spoil(v)) for k, v in node.items()}
            return [spoil(v) for v in node] if isinstance(node, list) else node
        return json.dumps(spoil(value))
    movie.save(tmp_path)
    with LocalLLMServer(answer=answer) as server:
        llm = LLM(local(server.base_url), cache_dir=tmp_path / "llm")
        build_qa(QAConfig(llm_items=2, items_per_call=2, mix={"dialogue": 0, "multiple_choice": 0}), llm, tmp_path, progress=False)
    assert llm.stats.repairs > 0
    text = (tmp_path / "qa.json").read_text()
    assert "<image>" not in text and '"source": "llm"' in text


def test_build_qa_without_llm(movie, tmp_path):
    movie.save(tmp_path)
    qaset = build_qa(QAConfig(use_llm=False), None, tmp_path, progress=False)
    assert qaset.source_counts().keys() == {"structure", "story"}
    assert {i["source"] for i in json.loads((tmp_path / "qa.json").read_text())} == {"structure", "story"}


def test_repeated_prompts_are_qualified_or_skipped(movie):
    from dreamframe.qa import moment_labels
    movie.substories[2].shots[0].frames[0].prompt = "Ann walks on the pier"   # the same moment again, in "Morning"
    movie.substories[1].shots[1].frames.append(Frame(prompt="Cal climbs the stairs", characters=["Cal"]))  # twice in one scene
    movie = Movie.model_validate(movie.model_dump())
    labels = moment_labels(movie)
    assert labels["s01.t01.f01"] == "Ann walks on the pier (in the scene 'Ann arrives')"
    assert labels["s03.t01.f01"] == "Ann walks on the pier (in the scene 'Morning')"
    assert "s02.t02.f01" not in labels and "s02.t02.f02" not in labels
    items = before_after_qa(movie, random.Random(0), None)
    assert not any("Cal climbs the stairs" in i.question for i in items)
    assert by(items)["What happens right after \"Ann walks on the pier (in the scene 'Ann arrives')\"?"].answer == "Ann and Ben talk"


def test_scene_dialogue(movie):
    from dreamframe.qa import scene_dialogue_qa
    items = by(scene_dialogue_qa(movie, random.Random(0), None), key=lambda i: i.question)
    first = items['Where does the scene "Ann arrives" take place?']
    assert [(t.question, t.answer) for t in first.turns] == [
        ('Where does the scene "Ann arrives" take place?', "In the harbour."), ("Who appears in it?", "Ann and Ben."),
        ("What is said there, and by whom?", 'Ann: "Hello, Ben." Ben: "Welcome back."'),
        ("Where does the story go after that scene?", "To the library.")]
    assert first.frame_ids == ["s01.t01.f01", "s01.t01.f02", "s01.t02.f01"]
    last = items['Where does the scene "Morning" take place?']
    assert [t.answer for t in last.turns] == ["In the harbour.", "Ben.", 'Ben: "It is over."']
    assert last.frame_ids == ["s03.t01.f01"]


def test_repeated_line_is_qualified_by_scene(movie):
    movie.substories[2].shots[0].lines[0].text = "Hello, Ben."   # Ben says Ann's words again, in "Morning"
    movie = Movie.model_validate(movie.model_dump())
    items = by(dialogue_attribution_qa(movie, random.Random(0), None))
    assert 'Who says "Hello, Ben."?' not in items
    assert items['In the scene "Ann arrives", who says "Hello, Ben."?'].answer == "Ann"
    assert items['In the scene "Morning", who says "Hello, Ben."?'].answer == "Ben"


def test_check_qa_names(movie):
    bad = [QA(type="dialogue_attribution", question="Who?", answer="Zed", frame_ids=["s01.t01.f01"]),
           QA(type="characters_together", question="Who together?", answer="Ann, Zed and Ben", frame_ids=["s01.t01.f02"])]
    assert check_qa(movie, bad) == ["QA 'Who?' (dialogue_attribution): 'Zed' is not a character",
                                    "QA 'Who together?' (characters_together): ['Zed'] are not characters"]


def test_story_text_longer_than_a_qa_answer_is_left_out(movie, tmp_path):
    "A scene text or a dialogue line near the schema's caps would make a question or an answer too long: that item is skipped."
    movie.substories[0].shots[0].content = "Ann walks. " * 300            # 3,300 characters: fine for a scene, too long for an answer
    movie.substories[0].shots[0].lines[0].text = "Hello, Ben. " + "x" * 1985   # fits a line, not inside 'Who says "…"?'
    movie = Movie.model_validate(movie.model_dump())
    questions = [i.question for i in range_summary_qa(movie, random.Random(0), None)]
    assert 'What happens in the scene "Ann arrives"?' not in questions and 'What happens in the scene "The tower"?' in questions
    assert not any("Hello, Ben." in i.question for i in dialogue_attribution_qa(movie, random.Random(0), None))
    movie.save(tmp_path)
    qaset = build_qa(QAConfig(use_llm=False), None, tmp_path, progress=False)
    assert check_qa(movie, qaset.items) == []
