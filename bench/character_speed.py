"""Identity conditioning's cost: keyframes with identity "none", "ip-adapter" and "shared-attention", one run, one card.

Full SDXL-size random-weight base (bench/sdxl-configs), fp16, 1024², 30 steps, guidance 5, batch 8, and a full-size
random IP-Adapter Plus (`identity.random_ip_adapter(plus=True)`: a 16-query resampler, 20 heads, over a ViT-H/14-size
CLIP image encoder, 632 M parameters) in the layout `load_ip_adapter` reads. The story is `sample_movie(3, 2, 4)`:
24 frames in groups of 8, each frame showing one or both of two characters; their sheets are random 1024² pictures.

In one process, on the same pipeline, `--repeats` rounds (default 3); each round draws, for each mode in turn, the
same `--timed-groups` groups into a fresh run folder with `generate_keyframes_fast` (compile and fused QKV off, so
the three modes run the same attention kernels: the IP-Adapter's and shared attention's processors replace fused
ones). One measurement = the median over the round's frames of the seconds each frame's manifest line records (its
group's render time / 8; loading the adapter and making the anchors are left out, PNG writing too). Each mode warms
up on one group first. Reported: per mode the median of the rounds and their range, the peak GPU memory, and the
ratios `ip_adapter_over_none` and `shared_attention_over_none` as the median of the per-round ratios with their range.

Then the low-memory run: the process capped at 15 GiB (`torch.cuda.set_per_process_memory_fraction`), the pipeline
placed by `low_memory.place_low_memory`, batch 1, one warm-up and `--low-frames` timed frames per identity mode:
seconds per frame and peak memory (target: ≤ 15 GiB with either mode).

    python bench/character_speed.py                 # H100/H200; writes bench/results/character_speed.json (or --out)
    python bench/character_speed.py --tiny          # CPU rehearsal: tiny SDXL, tiny IP-Adapter Plus, 64 px, 2 steps
"""
import argparse
import dataclasses
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import diffusers  # noqa: E402
from dreamframe import models  # noqa: E402
from dreamframe.characters import CharacterConfig, character_ids, sheet_path  # noqa: E402
from dreamframe.identity import identity_condition, random_ip_adapter  # noqa: E402
from dreamframe.keyframes import KeyframeConfig  # noqa: E402
from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast  # noqa: E402
from dreamframe.low_memory import place_low_memory  # noqa: E402
from dreamframe.run_folder import read_manifest  # noqa: E402
from dreamframe.schema import sample_movie  # noqa: E402

GIB = 2**30
MODES = ("none", "ip-adapter", "shared-attention")
VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
             patch_size=14, projection_dim=1024)
T0 = time.perf_counter()


def log(*parts): print(f"[{time.perf_counter() - T0:7.1f}s]", *parts, flush=True)
def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()
def reset():
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
def peak() -> dict:
    if not torch.cuda.is_available(): return {}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2), "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}
def spread(values) -> dict:
    return {"median": round(statistics.median(values), 3), "range": [round(min(values), 3), round(max(values), 3)]}


def setup(args, work: Path):
    "The base pipeline, the CharacterConfig of a random IP-Adapter Plus for it, and a folder of random sheets."
    if args.tiny:
        from dreamframe.testing import tiny_sdxl
        pipe = models.load_sdxl(tiny_sdxl(work / "tiny"))
        adapter = random_ip_adapter(work / "ip-adapter", pipe.unet, plus=True)
    else:
        pipe = models.sdxl_from_configs(ROOT / "bench" / "sdxl-configs", dtype=torch.float16, device="cuda")
        adapter = random_ip_adapter(work / "ip-adapter", pipe.unet, plus=True, heads=20, encoder=VIT_H)
    pipe.set_progress_bar_config(disable=True)
    sheets, rng = work / "sheets", np.random.default_rng(0)
    for character_id in character_ids(MOVIE).values():
        picture = rng.integers(0, 255, (args.resolution, args.resolution, 3), dtype=np.uint8)
        sheet_path(sheets, character_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(sheet_path(sheets, character_id))
    return pipe, CharacterConfig(resolution=args.resolution, steps=args.steps, **adapter), sheets


def save(result: dict, out: Path) -> None:
    "Write the result file now (after every part: a crash or a kill later keeps what was measured)."
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp"); tmp.write_text(json.dumps(result, indent=1) + "\n"); tmp.replace(out)


def draw(pipe, chars, sheets, cfg, run_dir: Path, mode: str, frames: int) -> list[float]:
    "Draw the first `frames` frames in `mode` into a fresh run folder; the seconds per frame their manifest lines record."
    MOVIE.save(run_dir)
    shutil.copytree(sheets / "characters", run_dir / "characters")
    cfg = dataclasses.replace(cfg, identity=mode, limit=frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_keyframes_fast(cfg, SPEED, pipe, MOVIE, run_dir, model_name="random", progress=False,
                                condition=identity_condition(chars, cfg, MOVIE, run_dir))
    lines = read_manifest(run_dir / "frames")
    return [lines[f.id]["seconds"] for f in MOVIE.frames[:frames]]


def main():
    global MOVIE, SPEED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a rehearsal of the code)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timed-groups", type=int, default=1, help="groups of `--batch-size` frames timed per round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--low-frames", type=int, default=3, help="timed frames per mode in the low-memory run")
    parser.add_argument("--cap", type=float, default=15.0, help="GiB the low-memory run may use")
    parser.add_argument("--out", default=None, help="result file (default bench/results/character_speed.json; --tiny: a temporary file)")
    args = parser.parse_args()
    args.resolution, args.steps = (64, 2) if args.tiny else (1024, 30)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) / "character_speed_tiny.json" if args.tiny else ROOT / "bench/results/character_speed.json")
    MOVIE, SPEED, work = sample_movie(3, 2, 4), KeyframeSpeed(fuse_qkv=False), Path(tempfile.mkdtemp())
    pipe, chars, sheets = setup(args, work)
    cfg = KeyframeConfig(steps=args.steps, resolution=args.resolution, guidance=5.0, batch_size=args.batch_size)
    frames = args.batch_size * args.timed_groups
    log(f"built; {frames} timed frames per mode and round, {args.repeats} rounds")

    for mode in MODES:   # warm-up: kernels, the adapter's first load, the anchors' first pass
        draw(pipe, chars, sheets, cfg, work / f"warm-{mode}", mode, args.batch_size)
        log(f"warm-up {mode} done")
    rounds = {mode: [] for mode in MODES}
    peaks = {mode: {} for mode in MODES}
    for repeat in range(args.repeats):
        for mode in MODES:
            reset(); sync()
            seconds = draw(pipe, chars, sheets, cfg, work / f"{mode}-{repeat}", mode, frames)
            rounds[mode].append(statistics.median(seconds)); peaks[mode] = peak() or peaks[mode]
            log(f"round {repeat} {mode}: {rounds[mode][-1]:.3f} s/frame {peaks[mode]}")
    ratio = lambda mode: spread([m / n for m, n in zip(rounds[mode], rounds["none"])])
    result = {
        "benchmark": "character_speed", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "diffusers": diffusers.__version__, "command": "python bench/character_speed.py " + " ".join(sys.argv[1:]), "tiny": args.tiny,
        "settings": f"{'float32' if args.tiny else 'float16'}, {args.resolution}², {args.steps} steps, guidance 5, batch {args.batch_size}, "
                    "compile and fused QKV off, random-weight SDXL base + random IP-Adapter Plus (ViT-H-size encoder)",
        "ip_adapter": {k: v for k, v in dataclasses.asdict(chars).items() if k in ("scale", "style_only")},
        "shared_attention": {k: v for k, v in dataclasses.asdict(chars).items() if k in ("shared_strength", "shared_layers")},
        "seconds_per_frame": {mode: {**spread(rounds[mode]), "rounds": [round(v, 3) for v in rounds[mode]], **peaks[mode]} for mode in MODES},
        "ip_adapter_over_none": ratio("ip-adapter"), "shared_attention_over_none": ratio("shared-attention"),
        "targets": {"ip_adapter_over_none": 1.15, "shared_attention_over_none": 1.3, "low_memory_peak_gib": args.cap},
    }
    log(json.dumps({k: result[k] for k in ("ip_adapter_over_none", "shared_attention_over_none")}))
    save(result, out)

    # the low-memory run: batch 1 under the cap
    low = dataclasses.replace(cfg, batch_size=1)
    if torch.cuda.is_available():
        reset(); torch.cuda.set_per_process_memory_fraction(args.cap * GIB / torch.cuda.get_device_properties(0).total_memory)
    tier = place_low_memory(pipe, pipe._execution_device, gpu_memory=args.cap)
    result["low_memory"] = {"cap_gib": args.cap, "tier": tier, "batch_size": 1}
    for mode in MODES[1:]:
        reset()
        try:
            seconds = draw(pipe, chars, sheets, low, work / f"low-{mode}", mode, 1 + args.low_frames)[1:]
            result["low_memory"][mode] = {"seconds_per_frame": spread(seconds), **peak()}
        except Exception as error:   # e.g. out of memory under the cap: recorded, the other mode still measured
            result["low_memory"][mode] = {"error": f"{type(error).__name__}: {str(error)[:500]}", **peak()}
        log(f"low memory {mode}: {result['low_memory'][mode]}")
        save(result, out)
    log("wrote", out)


if __name__ == "__main__":
    main()
