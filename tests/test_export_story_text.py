"""Issue 14.5: story text that would break an export format. A movie.json written by hand whose dialogue line holds
`<image>` (or nothing but whitespace) is refused when export reads it, naming movie.json and the JSON path of the line,
before anything is written; whitespace inside a line (a blank line, a fake subtitle) is collapsed by the story's one text
rule, so the subtitles stay well formed. (Only names that old and new code share are used, so the file can be run
against an older checkout to see it fail there.)"""
import json
from pathlib import Path

import pytest
from PIL import Image

from dreamframe.export import ExportConfig, export_run, long_video_inputs, validate_srt
from dreamframe.schema import Movie, sample_movie


def hand_written_run(run: Path, text: str) -> dict:
    "A run folder whose movie.json (written as plain JSON, past the model) has `text` as its first dialogue line."
    movie = sample_movie(n_substories=1)
    story = json.loads(movie.model_dump_json())
    story["substories"][0]["shots"][0]["lines"][0]["text"] = text
    run.mkdir(parents=True)
    (run / "movie.json").write_text(json.dumps(story, indent=1))
    (run / "frames").mkdir()
    for frame in movie.frames: Image.new("RGB", (32, 32), (90, 120, 160)).save(run / "frames" / f"{frame.id}.png")
    (run / "frames" / "manifest.jsonl").write_text("".join(json.dumps({"frame_id": f.id, "path": f"frames/{f.id}.png"}) + "\n" for f in movie.frames))
    everything = [f.id for f in movie.frames]
    (run / "qa.json").write_text(json.dumps([{"id": "qa0001", "type": "overview", "question": "What is it about?", "answer": "A message.",
                                              "frame_ids": everything, "choices": None, "turns": None, "source": "llm"}]))
    return story


@pytest.mark.parametrize("text, rule", [
    ("Look at this <image> here.", "<image>"),
    ("Hello <video>", "<video>"),
    ("   \n\n  ", "empty"),
])
def test_dialogue_line_that_breaks_a_format_is_refused_with_its_place(tmp_path, text, rule):
    run = tmp_path / "run"
    hand_written_run(run, text)
    with pytest.raises(ValueError) as caught: export_run(ExportConfig(write_video=False), run)
    message = str(caught.value)
    assert str(run / "movie.json") in message, message
    assert "$.substories[0].shots[0].lines[0].text" in message, message
    assert rule in message, message
    assert not (run / "export").exists()   # refused before anything is written


def test_blank_line_inside_a_dialogue_line_cannot_start_a_subtitle(tmp_path):
    run = tmp_path / "run"
    story = hand_written_run(run, "Hello.\n\n99\n00:00:00,000 --> 00:00:01,000\nA fake subtitle.")
    written = export_run(ExportConfig(write_video=False), run)
    srt = written["movie.srt"].read_text()
    lines = sum(len(shot["lines"]) for sub in story["substories"] for shot in sub["shots"])
    assert validate_srt(srt) == lines
    assert srt.split("\n\n")[0].splitlines()[2] == "Mara: Hello. 99 00:00:00,000 --> 00:00:01,000 A fake subtitle."
    inputs = long_video_inputs(Movie.load(run))
    assert "\n" not in inputs and inputs.count("<image>") == 8
