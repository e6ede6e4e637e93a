"""Each consumer's data-loading contract, written down as a test of the files a demo run and a folder of three movies
export (the loaders were read, not copied: LLaVA-NeXT `llava/train/train.py` + `llava/utils.py`, LLaMA-Factory
`src/llamafactory/data/`, VideoChat2 `video_chat2/dataset/it_dataset.py` + `video_utils.py`, LLaMA-VID
`llamavid/train/train.py`). Videos are decoded the way each loader decodes them (decord, PyAV), and 🤗 datasets loads
the QA of three runs of different sizes in one call through the shipped card. The runs are built once per module."""
import json
import math
import os
import pickle
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from dreamframe.cli import main
from dreamframe.export import CARD_FEATURES, ExportConfig, export_run
from dreamframe.pipeline import run_pipeline
from dreamframe.run_many import movie_folders

decord = pytest.importorskip("decord")
av = pytest.importorskip("av")
datasets = pytest.importorskip("datasets")

THEMES = {  # three story sizes; one without dialogue (no lines: no dialogue items, no attribution choices)
    "a keeper and a lost ship": {"substories": 3, "shots": 2, "frames": 4},
    "a quiet meadow at dawn": {"substories": 2, "shots": 1, "frames": 3, "lines": 0},
    "two friends on a bridge": {"substories": 1, "shots": 2, "frames": 2},
}


def quiet(line): pass


def draw_frames(run_dir):
    "Keyframes drawn by hand, a different colour each, and their manifest (what the keyframes stage leaves)."
    from dreamframe.run_folder import write_manifest
    from dreamframe.schema import Movie
    frames = Movie.load(run_dir).frames
    (run_dir / "frames").mkdir(exist_ok=True)
    for k, frame in enumerate(frames):
        Image.new("RGB", (64, 64), (37 * k % 256, 90 + 11 * k % 160, 250 - 9 * k % 200)).save(run_dir / "frames" / f"{frame.id}.png")
    write_manifest(run_dir / "frames", [{"frame_id": f.id, "path": f"frames/{f.id}.png", "seed": k} for k, f in enumerate(frames)])


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    "A BLIP-2 (EVA ViT-g architecture) vision tower with random weights, tiny, saved as a user's folder would be."
    import torch
    from transformers import Blip2VisionConfig, Blip2VisionModel
    torch.manual_seed(0)
    config = Blip2VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                               image_size=28, patch_size=14)
    folder = tmp_path_factory.mktemp("tower") / "tower"
    Blip2VisionModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def movies(tmp_path_factory, tower, tiny):
    """A folder laid out as `run-many` lays it out: three exported movies of different sizes. The first is a demo run
    (every stage on the tiny SDXL, with long-video features); the other two have hand-drawn keyframes (cheaper)."""
    root = tmp_path_factory.mktemp("movies") / "out"
    folders = list(movie_folders(list(THEMES), root).items())
    for k, (theme, run_dir) in enumerate(folders):
        given = {"story": {**THEMES[theme], "theme": theme}, "models": {"model": str(tiny)}, "keyframes": {"identity": "none"}}
        if k == 0:
            stages = ("story", "style", "keyframes", "qa", "export")
            run_pipeline(run_dir, stages=stages, given=given, preset="demo", progress=False, log=quiet)
        else:
            run_pipeline(run_dir, stages=("story",), given=given, preset="demo", progress=False, log=quiet)
            draw_frames(run_dir)
            run_pipeline(run_dir, stages=("qa", "export"), given=given, preset="demo", progress=False, log=quiet)
    first = folders[0][1]
    assert main(["long-video", str(first), "--long-video-tower", str(tower), "--quiet"]) == 0
    export_run(ExportConfig(), first, progress=False, log=quiet)   # exported again: it keeps the long-video records
    return root, [run_dir for _, run_dir in folders]


@pytest.fixture(scope="module")
def demo(movies):
    "The demo-sized run (3 x 2 x 4 frames, dialogue, long-video features)."
    return movies[1][0]


@pytest.fixture(scope="module")
def merged(movies):
    "The three movies merged by `dreamframe export-many` (plus a folder never started, which is left out)."
    root, _ = movies
    (root / "not-started").mkdir()
    assert main(["export-many", str(root), "--quiet"]) == 0
    return root


def load(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def roots(demo, merged):
    "The two roots every trainer is pointed at: a run folder, and a merged folder."
    return [(demo, demo / "export"), (merged, merged / "export")]


# ------------------------------------------------------------------ LLaVA-NeXT / LLaVA-Video, LLaMA-VID short video

def decord_sample(path, target_fps=1):
    "LLaVA-NeXT's and LLaMA-VID's decord sampling: every round(avg_fps / target_fps)-th frame."
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    step = round(reader.get_avg_fps() / target_fps)
    assert step >= 1, f"{path}: round({reader.get_avg_fps()} / {target_fps}) = {step}: the loader's range() fails"
    indices = list(range(0, len(reader), step))
    return reader.get_batch(indices).asnumpy()


def pyav_sample(path, target_fps=1):
    "LLaVA-NeXT's PyAV sampling: frame count / time of the last frame / target, rounded."
    with av.open(str(path)) as container:
        frames = [frame for frame in container.decode(video=0)]
    assert len(frames) >= 2 and frames[-1].time > 0, f"{path}: the last frame's time is 0: the loader divides by it"
    step = round(len(frames) / frames[-1].time / target_fps)
    assert step >= 1
    return np.stack([frames[i].to_ndarray(format="rgb24") for i in range(0, len(frames), step)])


def test_llava_next_loads_every_record(demo, merged):
    for root, export in roots(demo, merged):
        records = load(export / "llava.json")
        assert isinstance(records, list) and records
        videos = set()
        for record in records:
            turns = record["conversations"]
            assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith("<image>\n")
            assert sum(turn["value"].count("<image>") for turn in turns) == 1
            media = record.get("video") or record["image"]
            assert os.path.isfile(os.path.join(root, media)), media    # os.path.join(video_folder, video)
            videos.add(media)
        for media in sorted(videos)[:4]:
            by_decord, by_pyav = decord_sample(root / media), pyav_sample(root / media)
            assert by_decord.shape[0] >= 1
            if by_decord.shape == by_pyav.shape:   # same frames taken: the two decoders agree on them
                assert np.abs(by_decord.astype(int) - by_pyav.astype(int)).mean() < 3


def test_llama_vid_short_video_samples_at_its_video_fps(demo):
    "LLaMA-VID's DataArguments.video_fps is 1; every video (movie and clips) must give it at least one frame per step."
    for path in sorted((demo / "export").rglob("*.mp4")):
        frames = decord_sample(path, target_fps=1)
        assert frames.shape[0] == len(decord.VideoReader(str(path)))   # 1 fps movie sampled at 1: every frame


def test_a_video_of_one_keyframe_still_has_two_frames(tmp_path):
    "PyAV's rate is frames / time of the last frame: a single-frame clip would divide by zero."
    from dreamframe.video import write_video
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "one.png")
    path = write_video([tmp_path / "one.png"], tmp_path / "one.mp4", fps=1, progress=False)
    assert pyav_sample(path).shape[0] >= 1


# ------------------------------------------------------------------ LLaMA-Factory

def test_llamafactory_reads_the_declared_dataset(demo, merged):
    for root, export in roots(demo, merged):
        info = load(export / "dataset_info.json")             # dataset_dir = export
        entry = info["dreamframe"]                              # dataset: dreamframe
        assert entry["formatting"] == "sharegpt" and os.path.isfile(export / entry["file_name"])
        columns, tags = entry["columns"], entry["tags"]
        records = load(export / entry["file_name"])
        for record in records:
            messages = record[columns["messages"]]
            assert len(messages) % 2 == 0
            for k, message in enumerate(messages):       # odd positions: user; even: assistant
                assert message[tags["role_tag"]] == (tags["user_tag"] if k % 2 == 0 else tags["assistant_tag"])
            videos = record[columns["videos"]]
            assert sum(m[tags["content_tag"]].count("<video>") for m in messages) == len(videos)
            assert sum(m[tags["content_tag"]].count("<image>") for m in messages) == 0
            for video in videos:                              # media_dir = root
                assert os.path.isfile(os.path.join(root, video)), video
        path = os.path.join(root, records[0][columns["videos"]][0])
        with av.open(path) as container:                       # its PyAV sampling: duration × video_fps (2) frames
            stream = container.streams.video[0]
            duration = float(stream.duration * stream.time_base)
            total = sum(1 for _ in container.decode(video=0))
        wanted = min(total, 128, max(1, math.floor(duration * 2.0)))
        assert duration > 0 and 1 <= wanted <= total


def test_llamafactory_system_prompt_is_declared(tmp_path, demo):
    run = tmp_path / "run"
    shutil.copytree(demo, run)
    export_run(ExportConfig(system_prompt="You watch movies closely."), run, progress=False, log=quiet)
    info = load(run / "export" / "dataset_info.json")["dreamframe"]
    assert info["columns"]["system"] == "system"
    assert {r["system"] for r in load(run / "export" / "llamafactory.json")} == {"You watch movies closely."}
    assert {qa["i"] for r in load(run / "export" / "videochat2.json") for qa in r["QA"]} == {"You watch movies closely."}


# ------------------------------------------------------------------ VideoChat2

def nearest_keyframe(frame, keyframes):
    "Index of the keyframe most like a decoded video frame."
    errors = [np.abs(frame.astype(int) - key.astype(int)).mean() for key in keyframes]
    return int(np.argmin(errors))


def test_videochat2_spans_show_their_part(demo, merged):
    from dreamframe.schema import Movie
    movie = Movie.load(demo)
    keyframes = [np.asarray(Image.open(demo / "frames" / f"{f.id}.png").convert("RGB")) for f in movie.frames]
    parts = [frame.id.split(".")[0] for frame in movie.frames]
    for root, export in roots(demo, merged):
        records = load(export / "videochat2.json")
        assert any("start" in record for record in records) and any("start" not in record for record in records)
        for record in records:
            assert os.path.isfile(os.path.join(root, record["video"]))
            instructions = {qa["i"] for qa in record["QA"]}
            assert len(instructions) == 1            # whichever QA the shuffle puts first gives the instruction
            assert all(qa["q"] and qa["a"] for qa in record["QA"])
            if "start" in record and record["video"].startswith(demo.name if root == merged else "export"):
                reader = decord.VideoReader(os.path.join(root, record["video"]), num_threads=1)
                fps = reader.get_avg_fps()
                first, count = int(record["start"] * fps), int((record["end"] - record["start"]) * fps)
                assert count >= 1 and first + count <= len(reader)
                frames = reader.get_batch(list(range(first, first + count))).asnumpy()
                shown = {parts[nearest_keyframe(frame, keyframes)] for frame in frames}
                assert len(shown) == 1, shown           # the span is one part, whole


def test_videochat2_qas_stand_alone_when_shuffled(demo):
    records = load(demo / "export" / "videochat2.json")
    items = {item["id"]: item for item in load(demo / "qa.json")}
    dialogue = next(item for item in items.values() if item["turns"] and len(item["turns"]) > 1)
    later = dialogue["turns"][1]
    first, later = dialogue["turns"][0], dialogue["turns"][1]
    earlier = f"Q: {first['question']}\nA: {first['answer']}"
    qas = [qa for record in records for qa in record["QA"]]
    carried = [qa for qa in qas if qa["q"].endswith(f"Now: {later['question']}") and earlier in qa["q"]]
    assert carried and carried[0]["a"] == later["answer"]          # the later turn carries the one before it
    assert not [qa for qa in qas if qa["q"] == later["question"]]   # and never stands bare
    for seed in range(3):
        shuffled = json.loads(json.dumps(records))
        for record in shuffled: random.Random(seed).shuffle(record["QA"])
        assert {qa["i"] for record in shuffled for qa in record["QA"][:1]} == {""}


# ------------------------------------------------------------------ LLaMA-VID long video

def test_llama_vid_long_video_records_and_features(demo, merged):
    video_token = 2   # its DataArguments.video_token
    for root, export in roots(demo, merged):
        records = load(export / "long_video.json")      # --data_path: a JSON list
        assert isinstance(records, list) and records
        for record in records:
            path = os.path.join(root, record["video"])
            assert path.endswith(".pkl") and os.path.isfile(path)
            turns = record["conversations"]
            assert len(turns) == 2                         # one round: imgsp_v1 adds <image> to every later human turn
        with open(os.path.join(root, records[0]["video"]), "rb") as file:
            info = pickle.load(file)
        feats = info["feats"][:, 1:]                       # the loader drops the class token
        assert info["feats"].dtype == np.float16 and feats.shape == (info["feats"].shape[0], 4, 32)
        inputs = info["inputs"].replace("...", "").replace("<image>", "<image>" * video_token)
        human = records[0]["conversations"][0]["value"]
        prompt = human.replace("<image>", "").strip()   # the question the tower's text query gets
        assert prompt and human.count("<image>") == 1
        assert human.replace("<image>", inputs).count("<image>") == feats.shape[0] * video_token


def test_long_video_features_follow_the_frames(tmp_path, demo, tower):
    "A keyframe redrawn after the features were made: the next export drops long_video.json and says how to remake it."
    run = tmp_path / "run"
    shutil.copytree(demo, run)
    frame = sorted((run / "frames").glob("*.png"))[0]
    Image.new("RGB", Image.open(frame).size, (0, 0, 0)).save(frame)
    manifest = (run / "frames" / "manifest.jsonl").read_text().replace('"seed": ', '"seed": 1', 1)
    (run / "frames" / "manifest.jsonl").write_text(manifest)
    notes = []
    export_run(ExportConfig(), run, progress=False, log=notes.append)
    assert not (run / "export" / "long_video.json").exists()
    assert "dreamframe long-video" in notes[0]
    assert main(["long-video", str(run), "--long-video-tower", str(tower), "--quiet"]) == 0
    assert (run / "export" / "long_video.json").exists()


# ------------------------------------------------------------------ 🤗 datasets

def test_datasets_loads_three_runs_in_one_call_through_the_card(movies, tmp_path):
    _, runs = movies
    files = [str(run / "export" / "qa.jsonl") for run in runs]
    cache = str(tmp_path / "hf")
    shapes = {tuple((key, type(value).__name__) for key, value in record.items()) for run in runs
              for record in load(run / "export" / "qa.jsonl")}
    assert len(shapes) == 1, shapes   # one JSON type per column, whatever rows a run has
    features = datasets.load_dataset_builder(str(runs[0] / "export"), "qa", cache_dir=cache).info.features
    ds = datasets.load_dataset("json", data_files=files, features=features, split="train", cache_dir=cache)
    assert len(ds) == sum(len(load(run / "export" / "qa.jsonl")) for run in runs)
    assert not any(row["type"] == "dialogue_attribution" for row in ds.select(range(len(ds)))
                   if row["movie_id"] == load(runs[1] / "export" / "qa.jsonl")[0]["movie_id"])


def test_every_card_config_loads(demo, merged, tmp_path):
    for root, export in roots(demo, merged):
        for name, (file, _) in CARD_FEATURES.items():
            if not (export / file).exists():
                continue
            cache = str(tmp_path / "hf" / root.name)   # datasets keys a folder's cache by its name ("export" twice)
            ds = datasets.load_dataset(str(export), name, split="train", cache_dir=cache)
            assert len(ds) == len(load(export / file)), (export, name)


# ------------------------------------------------------------------ the merged set

def test_merged_paths_resolve_from_the_root(merged, movies):
    _, runs = movies
    export = merged / "export"
    paths = []
    for record in load(export / "llava.json") + load(export / "long_video.json") + load(export / "videochat2.json"):
        paths.append(record.get("video") or record["image"])
    for record in load(export / "llamafactory.json"):
        paths += record["videos"]
    for record in load(export / "qa.jsonl"):
        paths += record["frame_paths"]
    assert paths and all((merged / path).is_file() for path in paths)
    assert {path.split("/")[0] for path in paths} == {run.name for run in runs}
    summary = load(export / "summary.json")
    assert summary["movies"] == 3 and summary["skipped"] == {"not-started": "not started (no movie.json)"}
    assert summary["records"]["qa.jsonl"] == sum(len(load(run / "export" / "qa.jsonl")) for run in runs)
    assert "not started" in (export / "README.md").read_text()


def test_broken_and_unfinished_movies_are_left_out_named_and_mended_as_advised(tmp_path, movies, capsys):
    "Each movie left out is named with the reason and a command; running that command brings it into the next merge."
    root = tmp_path / "root"
    _, runs = movies
    for run in runs:
        shutil.copytree(run, root / run.name)
    shutil.copytree(runs[2], root / "good")
    unfinished, broken, older = (root / run.name for run in runs)
    record = json.loads((unfinished / "pipeline.json").read_text())
    record["stages"]["export"]["state"] = "running"      # stopped during its export
    (unfinished / "pipeline.json").write_text(json.dumps(record))
    next((broken / "export" / "clips").glob("*.mp4")).unlink()
    (older / "export" / "videochat2.json").unlink()       # exported by an older dreamframe
    assert main(["export-many", str(root), "--merge-seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"left out: {unfinished.name} | unfinished: its export has not run; `dreamframe run {unfinished}`" in out
    assert f"left out: {broken.name} | broken: llava.json:" in out and "does not exist under" in out
    assert f"`rm {broken}/export/llava.json && dreamframe export {broken}`" in out
    assert f"left out: {older.name} | export/videochat2.json is missing" in out and f"`dreamframe export {older}`" in out
    assert load(root / "export" / "summary.json")["movies"] == 1
    assert main(["run", str(unfinished), "--quiet"]) == 0
    (broken / "export" / "llava.json").unlink()
    assert main(["export", str(broken), "--quiet"]) == 0
    assert main(["export", str(older), "--quiet"]) == 0
    assert main(["export-many", str(root), "--merge-seed", "3", "--quiet"]) == 0
    summary = load(root / "export" / "summary.json")
    assert summary["movies"] == 4 and summary["skipped"] == {} and summary["seed"] == 3


# ------------------------------------------------------------------ refused settings

@pytest.mark.parametrize("flags, setting", [
    (["--export-video-fps", "0.5", "--export-seconds-per-frame", "2"], "video_fps"),
    (["--export-video-fps", "1", "--export-seconds-per-frame", "1.5"], "seconds_per_frame"),
])
def test_refused_export_settings_write_nothing(tmp_path, demo, cli, flags, setting):
    run = tmp_path / "run"
    shutil.copytree(demo, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = cli("export", run, *flags)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0] and lines[0].startswith("dreamframe export: error:"), lines
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_refused_long_video_and_merge_settings(tmp_path, demo, cli):
    result = cli("long-video", demo)
    assert result.returncode != 0 and "tower (--long-video-tower) is required" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("export-many", tmp_path, "--merge-seed", "x")
    assert result.returncode != 0 and "seed" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "export").exists()


@pytest.mark.skipif(os.environ.get("DREAMFRAME_FULL_TOWER") != "1",
                    reason="LLaMA-VID's full-size tower (1B random weights, 4 GB) takes minutes on a CPU; DREAMFRAME_FULL_TOWER=1")
def test_long_video_features_with_llama_vid_shapes(tmp_path):
    "EVA ViT-g as BLIP-2 ships it (1,408 wide, 39 blocks, 224², patch 14), random weights: 257 tokens × 1,408 per frame."
    import torch
    from transformers import Blip2VisionConfig, Blip2VisionModel
    from dreamframe.schema import sample_movie
    config = Blip2VisionConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size) == (1408, 39, 224, 14)
    torch.manual_seed(0)
    Blip2VisionModel(config).save_pretrained(tmp_path / "eva-vit-g")
    run = tmp_path / "run"
    movie = sample_movie(n_substories=1, n_shots=1, n_frames=2, lines_per_shot=1)
    movie.save(run)
    draw_frames(run)
    everything = [f.id for f in movie.frames]
    (run / "qa.json").write_text(json.dumps([{"id": "q1", "question": "What is it about?", "answer": "A message.",
                                               "frame_ids": everything}]))
    export_run(ExportConfig(write_video=False), run, progress=False, log=quiet)
    assert main(["long-video", str(run), "--long-video-tower", str(tmp_path / "eva-vit-g"), "--quiet"]) == 0
    with open(run / "export" / "long_video.pkl", "rb") as file:
        info = pickle.load(file)
    assert info["feats"].shape == (2, 257, 1408) and info["feats"].dtype == np.float16
    assert info["feats"][:, 1:].shape == (2, 256, 1408)     # what LLaMA-VID's loader keeps
    assert info["inputs"].count("<image>") == 2
