"""Stage 5 (export): every export validates; the mp4 has one video frame per keyframe; errors name what is missing or
broken (the frame, the manifest line, the qa.json item) and nothing is written before the checks pass."""
import json

import pytest
from PIL import Image

from dreamframe.config import ConfigError
from dreamframe.export import (QA_JSONL_KEYS, ExportConfig, check_frames, export_run, frame_path, load_qa,
                               long_video_inputs, media_groups, validate_qa_jsonl)
from dreamframe.trainers import llava_records, validate_llava
from dreamframe.video import srt_text, validate_srt, video_frame_count
from dreamframe.run_folder import write_manifest
from dreamframe.schema import FormatError, sample_movie


def make_run(tmp_path, size=(64, 48), n_substories=3):
    movie = sample_movie(n_substories=n_substories)
    movie.save(tmp_path)
    for k, frame in enumerate(movie.frames):
        path = frame_path(tmp_path, frame.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (10 * k % 256, 100, 200)).save(path)
    write_manifest(tmp_path / "frames", [{"frame_id": f.id, "path": f"frames/{f.id}.png", "seed": k} for k, f in enumerate(movie.frames)])
    items = [{"id": "qa0001", "type": "dialogue_attribution", "question": 'Who says "Line 1 of shot 1 in part 1."?', "answer": "Mara",
              "frame_ids": ["s01.t01.f01"], "choices": ["Mara", "Tom"], "turns": None, "source": "structure"},
             {"id": "qa0002", "type": "temporal_order", "question": 'Which happens first: "B" or "A"?', "answer": "A",
              "frame_ids": ["s01.t01.f02", "s02.t01.f01"], "choices": ["B", "A"], "turns": None, "source": "structure"},
             {"id": "qa0003", "type": "overview", "question": "What is it about?", "answer": "A message.", "frame_ids": [f.id for f in movie.frames],
              "choices": None, "turns": None, "source": "llm"}]
    items += [{"id": f"qa{k:04d}", "type": "dialogue", "question": "Q1", "answer": "A1", "frame_ids": ["s03.t02.f04"], "choices": None,
               "source": "llm", "turns": [{"question": f"Q{t}", "answer": f"A{t}"} for t in range(1, 6)]} for k in (4, 5)]
    (tmp_path / "qa.json").write_text(json.dumps(items))
    return movie


def llava(movie, items, cfg):
    return llava_records(movie.id, media_groups(movie, items, cfg), cfg.rounds_per_record)


def test_export_run_validates_everything(tmp_path):
    movie = make_run(tmp_path)
    written = export_run(ExportConfig(rounds_per_record=3), tmp_path, progress=False, log=lambda line: None)
    assert sorted(written) == ["README.md", "clips/s01.mp4", "clips/s03.mp4", "dataset_info.json", "llamafactory.json",
                               "llava.json", "movie.mp4", "movie.srt", "qa.jsonl", "videochat2.json"]
    assert all(path == tmp_path / "export" / name for name, path in written.items())
    assert video_frame_count(written["clips/s03.mp4"]) == 8
    records = json.loads(written["llava.json"].read_text())
    assert validate_llava(records, root=tmp_path) == len(records)
    rounds = sum(len(r["conversations"]) // 2 for r in records)
    assert rounds == 3 + 5 + 5 and all(len(r["conversations"]) <= 6 for r in records)
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in records)
    assert sum(r["conversations"][0]["value"].count("<image>") for r in records) == len(records)
    assert not (tmp_path / "export" / "long_video.json").exists()   # no features yet: no records that cannot load
    flat = [json.loads(line) for line in written["qa.jsonl"].read_text().splitlines()]
    assert validate_qa_jsonl(flat, movie) == 5 and all(tuple(r) == QA_JSONL_KEYS for r in flat)
    assert flat[1]["frame_paths"] == ["frames/s01.t01.f02.png", "frames/s02.t01.f01.png"]
    assert [r["turns"] == [] for r in flat] == [True, True, True, False, False] and flat[2]["choices"] == []
    assert validate_srt(written["movie.srt"].read_text()) == len(movie.lines)
    assert video_frame_count(written["movie.mp4"]) == len(movie.frames)
    saved = json.loads((tmp_path / "config.json").read_text())["export"]
    assert saved["rounds_per_record"] == 3 and "progress" not in saved


def test_settings_are_checked():
    with pytest.raises(ConfigError, match=r"video_fps \(--export-video-fps\) = 0.5: .* round\(0.5\) = 0"):
        ExportConfig(video_fps=0.5, seconds_per_frame=2)
    assert ExportConfig(video_fps=0.75, seconds_per_frame=4).repeat == 3   # round(0.75) = 1: loaders can sample it
    with pytest.raises(ConfigError, match=r"(?s)seconds_per_frame × video_fps = 1.5 must be a whole number"):
        ExportConfig(seconds_per_frame=1.5, video_fps=1)
    with pytest.raises(ConfigError, match=r"at \$\.media: .*'clip', 'video' or 'image' \(got 'gif'\)"): ExportConfig(media="gif")
    with pytest.raises(ConfigError, match=r"at \$\.max_side: .*greater than or equal to 16"): ExportConfig(max_side=8)
    with pytest.raises(ConfigError, match="progress"): ExportConfig(progress=False)   # an argument of export_run
    assert ExportConfig(seconds_per_frame=0.5, video_fps=4).repeat == 2


def test_mp4_repeats_and_odd_sizes(tmp_path):
    movie = make_run(tmp_path, size=(65, 49))  # odd sides: yuv420p needs them even
    written = export_run(ExportConfig(seconds_per_frame=2, video_fps=1, media="video"), tmp_path, progress=False)
    assert video_frame_count(written["movie.mp4"]) == 2 * len(movie.frames)
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(written["movie.mp4"]))
    meta = next(reader)
    assert meta["size"] == (64, 48)
    assert sum(1 for _ in reader) == 2 * len(movie.frames)


def test_missing_frame_is_named(tmp_path):
    make_run(tmp_path)
    frame_path(tmp_path, "s02.t02.f03").unlink()
    with pytest.raises(FileNotFoundError, match=r"frame s02\.t02\.f03 has no image at .*s02\.t02\.f03\.png"):
        export_run(ExportConfig(), tmp_path)
    assert not (tmp_path / "export").exists()   # nothing written before the check


def test_frame_missing_from_manifest_is_not_exported(tmp_path):
    "A PNG without its manifest line is not a finished frame (the keyframes stage writes the line last)."
    movie = make_run(tmp_path)
    write_manifest(tmp_path / "frames", [{"frame_id": f.id, "path": f"frames/{f.id}.png"} for f in movie.frames[:-1]])
    with pytest.raises(FileNotFoundError, match=r"frame s03\.t02\.f04 is not in .*manifest\.jsonl \(not rendered yet\)"):
        export_run(ExportConfig(), tmp_path)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("path", ["/etc/hostname", "../outside.png", "frames/../../outside.png"])
def test_manifest_path_outside_the_run_is_refused(tmp_path, path):
    "Issue 14.6: frames are read only through run_folder.read_manifest; a line pointing elsewhere is an error naming the line."
    run = tmp_path / "run"
    movie = make_run(run)
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "outside.png")
    manifest = run / "frames" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[4] = json.dumps({"frame_id": movie.frames[4].id, "path": path})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"manifest\.jsonl, line 5: .*frames/s01\.t02\.f01\.png"):
        export_run(ExportConfig(), run)
    assert not (run / "export").exists()


def test_symlinked_frame_leading_outside_is_refused(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    Image.new("RGB", (64, 48)).save(tmp_path / "outside.png")
    frame_path(run, "s01.t01.f02").unlink()
    frame_path(run, "s01.t01.f02").symlink_to(tmp_path / "outside.png")
    with pytest.raises(FormatError, match="leads outside the run folder"): export_run(ExportConfig(), run)


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], r"qa\.json: not valid JSON: "),
    (lambda text: text.replace('"answer": "A1"', '"answer": 7', 1), r"qa\.json: 1 problem\(s\) in the QA items:\n  at \$\[3\]\.answer: Input should be a valid string"),
    (lambda text: json.dumps({"items": json.loads(text)}), r"qa\.json: 1 problem\(s\) in the QA items:\n  at \$: Input should be a valid list"),
    (lambda text: text.replace('"question": "Q1"', '"question": "<video> Q1"', 1), r"at \$\[3\]\.question: holds '<video>'"),
    (lambda text: "[" * 100_000, r"qa\.json: JSON nested too deeply"),
])
def test_broken_qa_json_is_one_format_error(tmp_path, damage, message):
    "Issue 14.7: a truncated or hand-broken qa.json is one FormatError naming the file (and the item); nothing is written."
    make_run(tmp_path)
    path = tmp_path / "qa.json"
    path.write_text(damage(path.read_text()))
    with pytest.raises(FormatError, match=message): export_run(ExportConfig(), tmp_path)
    assert not (tmp_path / "export").exists()
    path.write_bytes(b"\xff\xfe[" + b"\x00" * 8)
    with pytest.raises(FormatError, match=r"qa\.json: not a UTF-8 text file"): export_run(ExportConfig(), tmp_path)


def test_qa_items_must_be_grounded_in_the_movie(tmp_path):
    make_run(tmp_path)
    items = json.loads((tmp_path / "qa.json").read_text())
    items[0]["frame_ids"] = ["s09.t01.f01"]
    (tmp_path / "qa.json").write_text(json.dumps(items))
    with pytest.raises(FormatError, match=r"qa\.json: item 0 \(id 'qa0001'\): points at frames \['s09.t01.f01'\] that are not in the movie"):
        export_run(ExportConfig(), tmp_path)
    items[0]["frame_ids"] = []
    (tmp_path / "qa.json").write_text(json.dumps(items))
    with pytest.raises(FormatError, match=r"item 0 \(id 'qa0001'\): points at no frames"): export_run(ExportConfig(), tmp_path)
    items[0]["frame_ids"], items[0]["answer"] = ["s01.t01.f01"], "Nobody"
    (tmp_path / "qa.json").write_text(json.dumps(items))
    with pytest.raises(FormatError, match=r"item 0 \(id 'qa0001'\): the answer must be one of at most 26 choices"): export_run(ExportConfig(), tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[0]["conversations"][0].update(value="no token"), "exactly once"),
    (lambda r: r[0]["conversations"][0].update(value="<image>\n<image>\nQ"), "exactly once"),
    (lambda r: r[0]["conversations"][-1].update(value=r[0]["conversations"][-1]["value"] + "<image>"), "belongs to the first turn only"),
    (lambda r: r[0]["conversations"].pop(), "human/gpt pairs"),
    (lambda r: r[0].update(image="x.png"), "exactly one of 'video' or 'image'"),
    (lambda r: r[1].update(id=r[0]["id"]), "duplicate id"),
])
def test_validate_llava_rejects(tmp_path, mutate, message):
    movie = make_run(tmp_path)
    records = llava(movie, load_qa(tmp_path, movie), ExportConfig(rounds_per_record=2))
    validate_llava(records)
    mutate(records)
    with pytest.raises(ValueError, match=message): validate_llava(records)


def test_image_media(tmp_path):
    movie = make_run(tmp_path)
    records = llava(movie, load_qa(tmp_path, movie), ExportConfig(media="image"))
    assert validate_llava(records, root=tmp_path) == len(records)
    # the overview (about every frame) has no one picture: left out; the others show their first frame
    assert {r["image"] for r in records} == {"frames/s01.t01.f01.png", "frames/s01.t01.f02.png", "frames/s03.t02.f04.png"}
    assert not any("What is it about?" in r["conversations"][0]["value"] for r in records)


def test_long_video_inputs_and_srt_timing(tmp_path):
    movie = make_run(tmp_path)
    inputs = long_video_inputs(movie)
    chunks = inputs.split("<image>")[1:]
    assert len(chunks) == len(movie.frames)
    for k, frame in enumerate(movie.frames):
        assert chunks[k] == " ".join(f"{l.speaker}: {l.text}" for l in movie.lines if l.frame_id == frame.id)
    assert long_video_inputs(movie, speaker_names=False).split("<image>")[1] == "Line 1 of shot 1 in part 1."
    srt = srt_text(movie, seconds_per_frame=2).strip().split("\n\n")
    index = [f.id for f in movie.frames].index(movie.lines[1].frame_id)
    assert srt[1].splitlines()[1].startswith(f"00:00:{2 * index:02d},000 --> ")


def test_qa_jsonl_loads_with_datasets_through_its_card(tmp_path):
    datasets = pytest.importorskip("datasets")
    make_run(tmp_path)
    export_run(ExportConfig(write_video=False), tmp_path, progress=False, log=lambda line: None)
    ds = datasets.load_dataset(str(tmp_path / "export"), "qa", split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 5 and ds.column_names == list(QA_JSONL_KEYS)
    assert ds[3]["turns"][4] == {"question": "Q5", "answer": "A5"}


def test_clip_and_video_media(tmp_path):
    movie = make_run(tmp_path)
    clip = {r["video"] for r in llava(movie, load_qa(tmp_path, movie), ExportConfig())}
    assert clip == {"export/clips/s01.mp4", "export/clips/s03.mp4", "export/movie.mp4"}   # qa0002 spans parts 1 and 2: the movie
    whole = {r["video"] for r in llava(movie, load_qa(tmp_path, movie), ExportConfig(media="video"))}
    assert whole == {"export/movie.mp4"}
    written = export_run(ExportConfig(media="video"), tmp_path, progress=False)
    assert not any("clips" in k for k in written) and not (tmp_path / "export" / "clips").exists()


def test_frames_come_from_the_manifest(tmp_path):
    movie = make_run(tmp_path)
    assert check_frames(movie, tmp_path) == [tmp_path / "frames" / f"{f.id}.png" for f in movie.frames]
