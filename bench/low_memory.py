"""Low-memory mode under an emulated 15 GiB card: keyframes (base only, base + refiner) and style training.

Full-size random-weight SDXL (bench/sdxl-configs), fp16, 1024², 30 steps (+10 refiner), batch 1. In one process:
1. the normal mode, uncapped (everything resident): `normal_batch1_s_per_frame`;
2. the low-memory mode (`dreamframe.low_memory.place_low_memory`, budget 15 GiB) with the process capped at 15 GiB by
   `torch.cuda.set_per_process_memory_fraction`: `low_memory_s_per_frame`, `peak_reserved_gib`, the tier chosen, and
   whether its frames are byte-identical to the normal mode's;
0. style training in its low-memory setting (gradient checkpointing, one micro-step at a time) under the same cap:
   `s_per_update` after warm-up and the peak.
Each time is the median of `--frames` timed frames after one warm-up frame (range recorded). Writes
results/low_memory.json (or `--out`). `--tiny` runs the same code on the tiny model on the CPU (no cap, a dry run).
"""
import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dreamframe.keyframes import KeyframeConfig  # noqa: E402
from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast  # noqa: E402
from dreamframe.low_memory import place_low_memory  # noqa: E402
from dreamframe.models import load_refiner, load_sdxl, sdxl_from_configs  # noqa: E402
from dreamframe.schema import sample_movie  # noqa: E402

GIB = 2**30


def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


def time_frames(pipe, refiner, cfg, run_dir: Path, n: int) -> tuple[list[float], dict]:
    "Render one warm-up frame, then `n` frames one call each; per-frame seconds and the PNG bytes by frame id."
    movie = sample_movie(3, 2, 4)
    ids = [f.id for f in movie.frames][: n + 1]
    seconds = []
    for i, frame_id in enumerate(ids):
        sync(); start = time.perf_counter()
        generate_keyframes_fast(dataclasses.replace(cfg, frame_ids=[frame_id]), SPEED, pipe, movie, run_dir,
                                model_name="random", refiner=refiner, progress=False)
        sync()
        if i: seconds.append(time.perf_counter() - start)
    return seconds, {i: (run_dir / "frames" / f"{i}.png").read_bytes() for i in ids}


def summary(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 3), "range": [round(min(seconds), 3), round(max(seconds), 3)],
            "frames_timed": len(seconds)}


def peak() -> dict:
    if not torch.cuda.is_available(): return {}
    return {"peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)}


def reset():
    import gc; gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


def style_update_seconds(pipe, work: Path, updates: int) -> dict:
    "Seconds per update of the low-memory style setting after warm-up: (time of 2 + updates) - (time of 2), over updates."
    from PIL import Image
    import numpy as np
    from dreamframe.style import StyleConfig
    from dreamframe.style_fast import StyleSpeed, train_embedding_fast
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (RES_STYLE, RES_STYLE, 3), dtype=np.uint8)) for i in range(4)]
    speed = StyleSpeed(gradient_checkpointing=True, fuse_accumulation=False, cuda_graph=False)
    times = {}
    for steps in (2, 2 + updates):
        cfg = StyleConfig(token=f"<bench-{steps}>", steps=steps, resolution=RES_STYLE)
        sync(); start = time.perf_counter()
        train_embedding_fast(cfg, speed, pipe, images, work / f"style-{steps}", init_word="style", progress=False)
        sync(); times[steps] = time.perf_counter() - start
    return {"s_per_update": round((times[2 + updates] - times[2]) / updates, 3), "updates_timed": updates,
            "micro_steps_per_update": 2, "resolution": RES_STYLE, **peak()}


def main():
    global SPEED, RES_STYLE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=15.0, help="emulated card size, GiB")
    parser.add_argument("--frames", type=int, default=4, help="timed frames per measurement (after one warm-up frame)")
    parser.add_argument("--style-updates", type=int, default=6)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (a dry run of the code)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "low_memory.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    SPEED = KeyframeSpeed()
    # 0. style training first, on its own pipeline, under the cap (before any keyframe pipeline holds memory)
    if args.tiny:
        from dreamframe.testing import tiny_sdxl
        RES_STYLE, style_pipe = 64, load_sdxl(tiny_sdxl(work / "tiny-style"))
    else:
        RES_STYLE = 768
        torch.cuda.set_per_process_memory_fraction(args.cap * GIB / torch.cuda.get_device_properties(0).total_memory)
        style_pipe = sdxl_from_configs(ROOT / "bench" / "sdxl-configs", dtype=torch.bfloat16)
    reset()
    style_result = style_update_seconds(style_pipe, work, args.style_updates)
    print(json.dumps(style_result), flush=True)
    del style_pipe; reset()
    if torch.cuda.is_available(): torch.cuda.set_per_process_memory_fraction(1.0)
    if args.tiny:
        from dreamframe.testing import tiny_sdxl
        folder = tiny_sdxl(work / "tiny", refiner=True)
        base = load_sdxl(folder); refiner = load_refiner(folder / "refiner", base)
        resolution, device = 64, torch.device("cpu")
    else:
        base, refiner = sdxl_from_configs(ROOT / "bench" / "sdxl-configs", refiner=True)
        resolution, device = 1024, torch.device("cuda")
    for p in (base, refiner): p.set_progress_bar_config(disable=True)
    cfg = KeyframeConfig(resolution=resolution, steps=30, batch_size=1, negative_prompt="blurry, low quality")
    with_refiner = dataclasses.replace(cfg, refiner_steps=10)
    result = {"benchmark": "low_memory", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "diffusers": __import__("diffusers").__version__, "cap_gib": args.cap, "resolution": resolution, "steps": 30,
              "refiner_steps": 10, "batch_size": 1, "dtype": "float16" if not args.tiny else "float32",
              "command": "python bench/low_memory.py " + " ".join(sys.argv[1:]), "tiny": args.tiny}

    # 1. normal mode, uncapped: everything resident
    reset(); normal_base, normal_base_png = time_frames(base, None, cfg, work / "normal-base", args.frames)
    reset(); normal_ref, normal_ref_png = time_frames(base, refiner, with_refiner, work / "normal-refiner", args.frames)
    print("normal", summary(normal_base), summary(normal_ref), flush=True)

    # 2. low-memory mode under the cap
    if torch.cuda.is_available():
        refiner.unet.to("cpu")   # base only first: the refiner's UNet is not on the card
        reset()
        torch.cuda.set_per_process_memory_fraction(args.cap * GIB / torch.cuda.get_device_properties(0).total_memory)
    tier_base = place_low_memory(base, device, gpu_memory=args.cap)
    reset(); low_base, low_base_png = time_frames(base, None, cfg, work / "low-base", args.frames)
    base_peak = peak()
    tier_ref = place_low_memory(refiner, device, gpu_memory=args.cap, base=base)
    reset(); low_ref, low_ref_png = time_frames(base, refiner, with_refiner, work / "low-refiner", args.frames)
    ref_peak = peak()
    result["keyframes_base_only"] = {
        "normal_batch1_s_per_frame": summary(normal_base), "low_memory_s_per_frame": summary(low_base), "tier": tier_base,
        "ratio": round(statistics.median(low_base) / statistics.median(normal_base), 3),
        "frames_identical_to_normal": low_base_png == normal_base_png, **base_peak}
    result["keyframes_base_refiner"] = {
        "normal_batch1_s_per_frame": summary(normal_ref), "low_memory_s_per_frame": summary(low_ref),
        "tier": f"base {base.memory_tier}, refiner {tier_ref}",
        "ratio": round(statistics.median(low_ref) / statistics.median(normal_ref), 3),
        "frames_identical_to_normal": low_ref_png == normal_ref_png, **ref_peak}
    print(json.dumps({k: result[k] for k in ("keyframes_base_only", "keyframes_base_refiner")}, indent=1), flush=True)
    result["style_low_memory"] = style_result

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
