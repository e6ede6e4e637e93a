"""Low-memory mode under an emulated 15 GiB card: keyframes (base only, base + refiner) and style training.

Full-size random-weight SDXL (bench/sdxl-configs), fp16, 1024², 30 steps (+10 refiner), batch 1. In one process:
1. style training with the `--preset colab` settings (512², float16, gradient checkpointing) under the cap, on its
   own pipeline before any keyframe pipeline exists: `s_per_update` after warm-up and the peak;
2. the normal mode, uncapped (everything resident), with the default switches (fused attention projections):
   `normal_batch1_s_per_frame`; then, on freshly built pipelines, the normal mode with the projections unfused, the
   math the low-memory mode does (`normal_unfused_s_per_frame`);
3. the low-memory mode (`dreamframe.low_memory.place_low_memory`, budget = the cap) on those pipelines with the
   process capped by `torch.cuda.set_per_process_memory_fraction`: `low_memory_s_per_frame`, `peak_reserved_gib`,
   the tier chosen, the ratio to the default normal mode (the target) and to the unfused one, whether its frames are
   byte-identical to the unfused normal mode's, and a profile of one more frame (where the time goes: the top kernels
   by device time and the time spent copying between host and device).
Each time is the median of `--frames` timed frames after one warm-up frame (range recorded). The result file is
rewritten after every part, and a part that fails records its error, so a crash or a kill keeps what was measured.
Writes results/low_memory.json (or `--out`). `--tiny` runs the same code on the tiny model on the CPU (a dry run).
"""
import argparse
import dataclasses
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dreamframe.keyframes import KeyframeConfig  # noqa: E402
from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast  # noqa: E402
from dreamframe.low_memory import WORKING_GIB, place_low_memory  # noqa: E402
from dreamframe.models import load_refiner, load_sdxl, sdxl_from_configs  # noqa: E402
from dreamframe.pipeline import PRESETS  # noqa: E402
from dreamframe.schema import sample_movie  # noqa: E402

GIB = 2**30
MOVIE = sample_movie(3, 2, 4)   # 24 frames: enough ids for warm-up + timed + profiled frames


def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


def draw(pipe, refiner, cfg, run_dir: Path, frame_id: str, speed: KeyframeSpeed = KeyframeSpeed()) -> float:
    "Seconds for one call of the keyframe stage on one frame (plan, render, PNG write and fsync included)."
    sync(); start = time.perf_counter()
    generate_keyframes_fast(dataclasses.replace(cfg, frame_ids=[frame_id]), speed, pipe, MOVIE, run_dir,
                            model_name="random", refiner=refiner, progress=False)
    sync()
    return time.perf_counter() - start


def time_frames(pipe, refiner, cfg, run_dir: Path, n: int, speed: KeyframeSpeed = KeyframeSpeed()) -> tuple[list[float], dict]:
    "One warm-up frame, then `n` frames one call each; per-frame seconds and the PNG bytes by frame id."
    ids = [f.id for f in MOVIE.frames][: n + 1]
    seconds = [draw(pipe, refiner, cfg, run_dir, i, speed) for i in ids][1:]
    return seconds, {i: (run_dir / "frames" / f"{i}.png").read_bytes() for i in ids}


def profile_frame(pipe, refiner, cfg, run_dir: Path, frame_id: str) -> dict:
    "Where one frame's time goes: wall seconds, host<->device copy time, and the top kernels by device time."
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        wall = draw(pipe, refiner, cfg, run_dir, frame_id)
    device_ms = lambda e: (getattr(e, "self_device_time_total", 0) or 0) / 1e3
    cuda = getattr(torch.autograd.DeviceType, "CUDA", None)   # the kernels and copies themselves, not the CPU ops that launched them
    events = [e for e in prof.key_averages() if e.device_type == cuda and not getattr(e, "is_user_annotation", False)] \
        or sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)   # on the CPU: its own ops
    copies = {kind: round(sum(device_ms(e) for e in events if kind in e.key), 1) for kind in ("HtoD", "DtoH")}
    top = sorted(events, key=lambda e: device_ms(e) or e.self_cpu_time_total / 1e3, reverse=True)[:8]
    return {"wall_s": round(wall, 3), "device_busy_s": round(sum(device_ms(e) for e in events) / 1e3, 3),
            "memcpy_htod_ms": copies["HtoD"], "memcpy_dtoh_ms": copies["DtoH"],
            "top": [{"op": e.key[:80], "device_ms": round(device_ms(e), 1), "calls": e.count} for e in top]}


def summary(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 3), "range": [round(min(seconds), 3), round(max(seconds), 3)],
            "frames_timed": len(seconds)}


def peak() -> dict:
    if not torch.cuda.is_available(): return {}
    return {"peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)}


def reset():
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


def cap(gib: float | None):
    "Emulate a card of `gib` GiB (None: the whole card)."
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0 if gib is None else gib * GIB / torch.cuda.get_device_properties(0).total_memory)


def style_update_seconds(pipe, work: Path, updates: int, resolution: int) -> dict:
    "Seconds per update with the colab preset's style settings after warm-up: (time of 2 + updates) - (time of 2), over updates."
    from PIL import Image
    import numpy as np
    from dreamframe.style import StyleConfig
    from dreamframe.style_fast import StyleSpeed, train_embedding_fast
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)) for i in range(4)]
    speed = StyleSpeed(**PRESETS["colab"]["style_speed"])
    settings = {**PRESETS["colab"]["style"], "resolution": resolution}
    times = {}
    for steps in (2, 2 + updates):
        cfg = StyleConfig(**settings, token=f"<bench-{steps}>", steps=steps)
        sync(); start = time.perf_counter()
        train_embedding_fast(cfg, speed, pipe, images, work / f"style-{steps}", init_word="style", progress=False)
        sync(); times[steps] = time.perf_counter() - start
    return {"s_per_update": round((times[2 + updates] - times[2]) / updates, 3), "updates_timed": updates,
            "settings": settings, "speed": dataclasses.asdict(speed), **peak()}


class Results(dict):
    "The result file, rewritten after every part; a failing part records its error instead of ending the run."
    def __init__(self, out: Path, **head):
        super().__init__(head); self.out = out

    def save(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp"); tmp.write_text(json.dumps(self, indent=1) + "\n"); tmp.replace(self.out)

    def part(self, name: str, measure):
        started = time.perf_counter()
        try: self[name] = measure()
        except Exception as error:   # keep going: the other parts are still worth measuring
            self[name] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-1500:]}
        self[name]["part_wall_s"] = round(time.perf_counter() - started, 1)
        self.save()
        print(name, json.dumps(self[name])[:2000], flush=True)
        return self[name]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=15.0, help="emulated card size, GiB")
    parser.add_argument("--frames", type=int, default=6, help="timed frames per measurement (after one warm-up frame)")
    parser.add_argument("--style-updates", type=int, default=6)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (a dry run of the code)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "low_memory.json"))
    args = parser.parse_args()
    work, configs = Path(tempfile.mkdtemp()), ROOT / "bench" / "sdxl-configs"
    resolution, device = (64, torch.device("cpu")) if args.tiny else (1024, torch.device("cuda"))
    if args.tiny:
        from dreamframe.testing import tiny_sdxl
        folder = tiny_sdxl(work / "tiny", refiner=True)
    results = Results(Path(args.out), benchmark="low_memory", date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch=torch.__version__,
                      diffusers=__import__("diffusers").__version__, cap_gib=args.cap, working_gib=WORKING_GIB, resolution=resolution,
                      steps=30, refiner_steps=10, batch_size=1, dtype="float32" if args.tiny else "float16",
                      command="python bench/low_memory.py " + " ".join(sys.argv[1:]), tiny=args.tiny,
                      targets={"ratio_max": 1.5, "peak_reserved_max_gib": args.cap})
    results.save()

    def style():   # first, on its own pipeline, before any keyframe pipeline holds memory
        cap(None if args.tiny else args.cap)
        pipe = load_sdxl(folder) if args.tiny else sdxl_from_configs(configs, dtype=torch.float16)
        reset()
        try: return style_update_seconds(pipe, work, args.style_updates, 64 if args.tiny else PRESETS["colab"]["style"]["resolution"])
        finally: del pipe; reset(); cap(None)
    results.part("style_low_memory", style)

    def build():
        pipes = (lambda b: (b, load_refiner(folder / "refiner", b)))(load_sdxl(folder)) if args.tiny else sdxl_from_configs(configs, refiner=True)
        for p in pipes: p.set_progress_bar_config(disable=True)
        return pipes
    cfg = KeyframeConfig(resolution=resolution, steps=30, batch_size=1, negative_prompt="blurry, low quality")
    with_refiner = dataclasses.replace(cfg, refiner_steps=10)
    normal, unfused = {}, {}

    def uncapped(into: dict, speed: KeyframeSpeed, tag: str):
        for name, (ref, c) in {"base": (None, cfg), "refiner": (refiner, with_refiner)}.items():
            reset(); into[name] = time_frames(base, ref, c, work / f"{tag}-{name}", args.frames, speed)
        return {name: summary(seconds) for name, (seconds, _) in into.items()}

    base, refiner = build()   # the default switches fuse the attention projections: those pipelines are dropped after
    results.part("normal_uncapped", lambda: uncapped(normal, KeyframeSpeed(), "normal"))
    del base, refiner; reset()
    base, refiner = build()
    from dreamframe.low_memory import weights_bytes
    results["weights_gib"] = {name: round(weights_bytes(m) / GIB, 2) for name, m in
                              dict(unet=base.unet, vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2, refiner_unet=refiner.unet).items()}
    results.part("normal_uncapped_unfused", lambda: uncapped(unfused, KeyframeSpeed(fuse_qkv=False), "unfused"))

    def low(name: str, ref, c) -> dict:
        seconds, png = time_frames(base, ref, c, work / f"low-{name}", args.frames)
        measured = {"low_memory_s_per_frame": summary(seconds), **peak()}
        if name in normal: measured.update(normal_batch1_s_per_frame=summary(normal[name][0]),
                                           ratio=round(statistics.median(seconds) / statistics.median(normal[name][0]), 3))
        if name in unfused: measured.update(normal_unfused_s_per_frame=summary(unfused[name][0]), frames_identical_to_normal_unfused=png == unfused[name][1],
                                            ratio_to_unfused=round(statistics.median(seconds) / statistics.median(unfused[name][0]), 3))
        measured["profile_one_frame"] = profile_frame(base, ref, c, work / f"low-{name}", MOVIE.frames[args.frames + 1].id)
        return measured

    def base_only():
        if torch.cuda.is_available(): refiner.unet.to("cpu"); reset(); cap(args.cap)   # base only: the refiner's UNet is off the card
        tier = place_low_memory(base, device, gpu_memory=args.cap)
        reset()
        return {"tier": tier, **low("base", None, cfg)}
    results.part("keyframes_base_only", base_only)

    def base_refiner():
        tier = place_low_memory(refiner, device, gpu_memory=args.cap, base=base)
        reset()
        return {"tier": f"base {base.memory_tier}, refiner {tier}", **low("refiner", refiner, with_refiner)}
    results.part("keyframes_base_refiner", base_refiner)

    verdict = {}
    for name in ("keyframes_base_only", "keyframes_base_refiner"):
        r = results.get(name, {})
        if "ratio" in r:
            met = r["ratio"] <= 1.5 and r.get("peak_reserved_gib", 0) <= args.cap
            verdict[name] = (f"{'met' if met else 'missed'}: {r['ratio']}x the uncapped batch-1 time ({r.get('ratio_to_unfused')}x the unfused one), "
                             f"peak reserved {r.get('peak_reserved_gib')} GiB, frames identical to the unfused normal mode: {r.get('frames_identical_to_normal_unfused')}")
    results["verdict"] = verdict
    results.save()
    print("wrote", args.out)


if __name__ == "__main__":
    main()
