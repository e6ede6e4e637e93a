"""Issue 25, the distilled keyframe recipe, on the tiny pipeline: a random LoRA in diffusers' format and a swapped random
UNet draw byte-stable frames; the manifest records the recipe; switching recipe marks frames stale; a bad checkpoint
is refused naming it before any model is loaded; the identity modes work with it; `--preset fast` reaches the frames."""
import dataclasses
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from cli_support import DREAMFRAME, ENV, one_line_failure
from diffusers import UNet2DConditionModel
from PIL import Image

from dreamframe.characters import CharacterConfig, character_ids, sheet_path
from dreamframe.config import ConfigError
from dreamframe.distilled import (DistilledConfig, apply_recipe, check_recipe, check_recipe_settings, model_name,
                                  random_lora, random_unet)
from dreamframe.identity import identity_condition, random_ip_adapter
from dreamframe.keyframes import KeyframeConfig, generate_keyframes, plan_keyframes
from dreamframe.keyframes_fast import KeyframeSpeed, speed_up
from dreamframe.models import load_sdxl
from dreamframe.pipeline import describe_plan, run_settings
from dreamframe.run_folder import read_manifest
from dreamframe.schema import sample_movie
from dreamframe.testing import tiny_sdxl

FAST = KeyframeConfig(recipe="distilled", steps=4, guidance=0.0, resolution=64, batch_size=2, limit=4,
                      negative_prompt="blurry")
DEMO = ["--preset", "demo", "--substories", "1", "--shots", "1", "--frames", "2", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    "One CPU thread for the whole module (module fixtures included): tiny models run fastest so on a shared machine."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tiny, tmp_path_factory):
    "A random LoRA (diffusers' format) and a random UNet (one state-dict file) for the tiny UNet."
    folder = tmp_path_factory.mktemp("checkpoints")
    unet = load_sdxl(tiny).unet
    return {"lora": random_lora(folder / "lora", unet, rank=4, seed=0),
            "unet": random_unet(folder / "tiny_4step_unet.safetensors", unet, seed=1)}


def draw(tiny, run_dir, cfg, recipe=None, movie=None, **kwargs) -> tuple[dict, list]:
    "Draw `cfg`'s frames into a fresh run folder with a fresh tiny base (carrying `recipe`): PNG bytes, manifest lines."
    movie = movie or sample_movie()
    movie.save(run_dir)
    pipe = load_sdxl(tiny) if recipe is None else apply_recipe(load_sdxl(tiny), recipe)
    name = "tiny" if recipe is None else model_name("tiny", recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = generate_keyframes(cfg, pipe, movie, run_dir, model_name=name, progress=False, **kwargs)
    return {line["frame_id"]: (Path(run_dir) / line["path"]).read_bytes() for line in lines}, lines


def test_lora_and_swapped_unet_draw_byte_stable_frames(tiny, checkpoints, tmp_path):
    plain, _ = draw(tiny, tmp_path / "plain", dataclasses.replace(FAST, recipe="reference"))
    drawn = {}
    for kind, path in checkpoints.items():
        recipe = DistilledConfig(weights=str(path))
        first, lines = draw(tiny, tmp_path / f"{kind}-1", FAST, recipe)
        second, _ = draw(tiny, tmp_path / f"{kind}-2", FAST, recipe)
        assert len(first) == 4 and first == second   # a fresh base with the same checkpoint: the same bytes
        assert all(first[i] != plain[i] for i in plain)   # and the checkpoint is what drew them
        assert {(line["recipe"], line["model"], line["steps"], line["guidance"]) for line in lines} == {
            ("distilled", f"tiny + lightning {path}", 4, 0.0)}
        drawn[kind] = first
    assert all(drawn["lora"][i] != drawn["unet"][i] for i in plain)


def test_a_left_out_model_name_names_the_recipe(tiny, checkpoints, tmp_path):
    "Without `model_name`, a frame records the model `load_sdxl` noted on the pipeline and the recipe it carries."
    recipe = DistilledConfig(weights=str(checkpoints["lora"]))
    movie = sample_movie()
    movie.save(tmp_path)
    pipe = apply_recipe(load_sdxl(tiny), recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = generate_keyframes(dataclasses.replace(FAST, limit=2), pipe, movie, tmp_path, progress=False)
    assert {line["model"] for line in lines} == {model_name(str(tiny), recipe)}


def test_switching_recipe_marks_frames_stale_both_ways(tiny, checkpoints, tmp_path):
    recipe = DistilledConfig(weights=str(checkpoints["lora"]))
    reference = dataclasses.replace(FAST, recipe="reference", guidance=5.0)
    movie = sample_movie()
    draw(tiny, tmp_path / "run", reference, movie=movie)
    plan = plan_keyframes(FAST, movie, tmp_path / "run", model_name=model_name("tiny", recipe))
    assert (plan.done, len(plan.stale)) == (0, 4)
    assert next(iter(plan.stale.values()))["recipe"] == ("reference", "distilled")
    pipe = apply_recipe(load_sdxl(tiny), recipe)
    lines = generate_keyframes(FAST, pipe, movie, tmp_path / "run", model_name=model_name("tiny", recipe),
                               progress=False, redo=True)
    assert {line["recipe"] for line in lines} == {"distilled"}
    back = plan_keyframes(reference, movie, tmp_path / "run", model_name="tiny")
    assert len(back.stale) == 4 and next(iter(back.stale.values()))["recipe"] == ("distilled", "reference")
    # a line written before the recipe setting existed was drawn with the reference recipe: still done
    manifest = tmp_path / "run" / "frames" / "manifest.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k != "recipe"} for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in old))
    assert len(plan_keyframes(FAST, movie, tmp_path / "run", model_name=model_name("tiny", recipe)).stale) == 4
    assert plan_keyframes(reference, movie, tmp_path / "run", model_name=model_name("tiny", recipe)).stale
    with pytest.raises(ValueError, match="no distilled checkpoint"):   # settings that ask for a recipe the pipe lacks
        generate_keyframes(FAST, load_sdxl(tiny), movie, tmp_path / "run", model_name="tiny", progress=False)
    with pytest.raises(ValueError, match="recipe='reference'"):
        generate_keyframes(reference, pipe, movie, tmp_path / "run", model_name="tiny", progress=False)


def test_identity_modes_work_with_the_distilled_recipe(tiny, checkpoints, tmp_path):
    "IP-Adapter over a DMD2-style recipe (LCM at its training timesteps), shared attention over an LCM one."
    movie = sample_movie()
    adapter = random_ip_adapter(tmp_path / "ip-adapter", load_sdxl(tiny).unet)
    chars = CharacterConfig(candidates=1, steps=2, resolution=64, **adapter)
    pictures = {i: Image.new("RGB", (64, 64), (40 * n, 200 - 40 * n, 90)) for n, i in enumerate(character_ids(movie).values())}

    def with_sheets(name):
        run = tmp_path / name
        for character_id, picture in pictures.items():
            sheet_path(run, character_id).parent.mkdir(parents=True, exist_ok=True)
            picture.save(sheet_path(run, character_id))
        return run
    for mode, family in (("ip-adapter", "dmd2"), ("shared-attention", "lcm")):
        recipe = DistilledConfig(family=family, weights=str(checkpoints["lora"]))
        cfg = dataclasses.replace(FAST, identity=mode)
        runs = [with_sheets(f"{mode}-{n}") for n in range(2)]
        frames = [draw(tiny, run, cfg, recipe, movie=movie, condition=identity_condition(chars, cfg, movie, run))
                  for run in runs]
        none, _ = draw(tiny, tmp_path / f"{mode}-none", FAST, recipe, movie=movie)
        assert frames[0][0] == frames[1][0], mode
        assert all(frames[0][0][i] != none[i] for i in none), mode
        assert {line["identity"] for line in frames[0][1]} == {mode}
        assert {line["recipe"] for line in frames[0][1]} == {"distilled"}


def test_rules_and_foreign_checkpoints_are_refused(tiny, checkpoints, tmp_path):
    with pytest.raises(ConfigError, match=r"steps=30 .*guidance=5 .*--steps 4 --guidance 0 --refiner-steps 0"):
        check_recipe_settings(KeyframeConfig(), DistilledConfig())
    with pytest.raises(ConfigError, match="refiner_steps=10"):
        check_recipe_settings(KeyframeConfig(steps=4, guidance=0, refiner_steps=10), DistilledConfig())
    with pytest.raises(ConfigError, match="is the 4-step checkpoint"):
        check_recipe_settings(KeyframeConfig(steps=8, guidance=0), DistilledConfig(weights=str(checkpoints["unet"])))
    with pytest.raises(ConfigError, match=r"trained for 4\)"):
        check_recipe_settings(KeyframeConfig(steps=8, guidance=0), DistilledConfig(family="dmd2"))
    # a UNet of another architecture (the tiny refiner's) is refused naming it, before the base is touched
    refiner = tiny_sdxl(tmp_path / "with-refiner", refiner=True)
    foreign = random_unet(tmp_path / "refiner_unet.safetensors", UNet2DConditionModel.from_pretrained(str(refiner / "refiner" / "unet")))
    assert check_recipe(FAST, DistilledConfig(weights=str(foreign))) == "unet"   # a UNet, by its tensor names
    with pytest.raises(ValueError, match=r"refiner_unet.safetensors'.*not a UNet of the base model's architecture"):
        apply_recipe(load_sdxl(tiny), DistilledConfig(weights=str(foreign)))
    pipe = apply_recipe(load_sdxl(tiny), DistilledConfig(weights=str(checkpoints["lora"])))
    with pytest.raises(ValueError, match="load the base model again"):
        apply_recipe(pipe, DistilledConfig(weights=str(checkpoints["unet"])))
    sped_up = speed_up(load_sdxl(tiny), KeyframeSpeed())   # attention projections fused: a LoRA would miss them
    with pytest.raises(ValueError, match="apply the recipe to a freshly loaded base"):
        apply_recipe(sped_up, DistilledConfig(weights=str(checkpoints["lora"])))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    "A 2-frame demo run (story, style, sheets, keyframes) drawn with the reference recipe; tests work on copies."
    from dreamframe.cli import main
    run = tmp_path_factory.mktemp("demo") / "run"
    assert main(["run", str(run), *DEMO, "--only", "story,style,characters,keyframes"]) == 0
    return run


def test_cli_switches_recipe_with_redo_and_refuses_bad_checkpoints_before_loading(reference_run, checkpoints,
                                                                                  tmp_path, cli, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = {p.name: p.read_bytes() for p in (run / "frames").glob("*.png")}
    distilled = ["--recipe", "distilled", "--steps", "4", "--guidance", "0"]
    import dreamframe.models
    real_load = dreamframe.models.load_sdxl
    monkeypatch.setattr(dreamframe.models, "load_sdxl", lambda *a, **k: pytest.fail("a model was loaded"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    for weights, says in ((tmp_path / "missing" / "lora.safetensors", "no such file or folder"),
                          (junk, "junk.safetensors is not a readable .safetensors checkpoint")):
        refused = cli("keyframes", run, *distilled, "--distilled-weights", weights, "--redo")
        assert refused.returncode == 1 and str(weights) in refused.stderr and says in refused.stderr, refused.stderr
    # the demo's 2 guided steps are not what the checkpoint is trained for: the error names the flags, which work
    wrong = cli("keyframes", run, "--recipe", "distilled", "--distilled-weights", checkpoints["lora"], "--redo")
    assert wrong.returncode == 1 and "guidance=5" in wrong.stderr and "--steps 4 --guidance 0 --refiner-steps 0" in wrong.stderr
    assert {p.name: p.read_bytes() for p in (run / "frames").glob("*.png")} == before
    monkeypatch.setattr(dreamframe.models, "load_sdxl", real_load)
    stale = cli("keyframes", run, *distilled, "--refiner-steps", "0", "--distilled-weights", checkpoints["lora"])
    assert stale.returncode == 1 and "recipe: 'reference' → 'distilled'" in stale.stderr and "--redo" in stale.stderr
    redone = cli("keyframes", run, *distilled, "--refiner-steps", "0", "--distilled-weights", checkpoints["lora"], "--redo")
    assert redone.returncode == 0, redone.stderr
    lines = read_manifest(run / "frames")
    assert len(lines) == 2 and {line["recipe"] for line in lines.values()} == {"distilled"}
    assert {line["identity"] for line in lines.values()} == {"shared-attention"}   # the demo's identity mode, kept
    assert {line["model"] for line in lines.values()} == {f"tiny + lightning {checkpoints['lora']}"}
    assert all((run / "frames" / name).read_bytes() != data for name, data in before.items())
    again = cli("keyframes", run)   # the recipe is in RUN/config.json now
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr


def test_preset_fast_with_the_hub_unreachable(tmp_path):
    "No network and no HF_HUB_OFFLINE: the hub checkpoint is refused in one line, in seconds, before anything is spent."
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))   # nobody listens there; an empty cache
    done = subprocess.run([*DREAMFRAME, "run", tmp_path / "run", "--preset", "fast", "--theme", "a fox learns to sail",
                           "--llm-model", "scripted", "--model", "tiny", "--only", "story,keyframes", "--quiet"],
                          capture_output=True, text=True,
                          env=env, timeout=300)
    one_line_failure(done, "'ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors'",   # no retry warnings
                     "http://127.0.0.1:9 cannot be reached", "pass a local file")
    assert not (tmp_path / "run" / "movie.json").exists()


def test_preset_fast(checkpoints, tmp_path, cli):
    settings = run_settings(tmp_path / "settings", ["keyframes", "distilled", "models"], preset="fast")
    frames, recipe = settings["keyframes"], settings["distilled"]
    assert (frames.recipe, frames.steps, frames.guidance, frames.refiner_steps) == ("distilled", 4, 0.0, 0)
    check_recipe_settings(frames, recipe)   # the preset draws as the default checkpoint's authors do
    assert "distilled: lightning ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors" in describe_plan(settings, "fast")
    small = ["--preset", "fast", "--theme", "a fox learns to sail", "--llm-model", "scripted", "--model", "tiny",
             "--substories", "1", "--shots", "1", "--frames", "2", "--resolution", "64", "--only", "story,keyframes",
             "--quiet"]
    offline = cli("run", tmp_path / "run", *small)   # the default checkpoint is on the hub, and the hub is offline
    assert offline.returncode == 1 and "'ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors'" in offline.stderr
    assert not (tmp_path / "run" / "movie.json").exists()   # refused before anything was spent
    done = cli("run", tmp_path / "run", *small, "--distilled-weights", checkpoints["unet"])
    assert done.returncode == 0, done.stderr
    lines = read_manifest(tmp_path / "run" / "frames")
    assert {(line["recipe"], line["steps"], line["guidance"]) for line in lines.values()} == {("distilled", 4, 0.0)}
