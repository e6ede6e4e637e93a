"""Every GPU-bound number of dreamframe in one command: keyframes, identity modes, style training, low memory.

Full SDXL-size random-weight models from `bench/sdxl-configs` (a step costs the same whatever the weights' values), fp16,
1024², guidance 5, on one CUDA card. The parts, in the order they run (`--only` picks some, `--plan` prints them with
their estimated seconds on an H100 so a call is sized to the device's 10-minute limit):

  keyframes   the reference's own loop (emulated: batch 1, 30 base + 10 refiner steps, the pipelines' own fp32-upcast
              decode, PNG saved in the loop); ours at the reference settings (`generate_keyframes_fast`, batch 8,
              compiled); ours base-only (30 steps); with `--levers`, base-only in bfloat16 (compiled again). A profile
              of one base-only group: device time by kind of kernel and the device-busy share of the wall clock.
  identity    identity "none", "ip-adapter" (a random full-size IP-Adapter Plus over a ViT-H-size image encoder) and
              "shared-attention", batch 8, same story, same pipeline, rounds alternating the modes.
  style       the style embedding's training at the reference's size (400 updates x 2 micro-steps at 768²) with the
              default `StyleSpeed`, end to end after a short warm-up run.
  low_memory  batch 1: the normal mode uncapped (base, base + refiner), then the process capped at `--cap` GiB and the
              models placed by `low_memory.place_low_memory`: style training with the colab preset's settings, base
              only, base + refiner, and the three identity modes; each low-memory frame drawn with the default
              switches (UNet calls replayed as CUDA graphs) and, for the base, without graphs; a profile of both
              (device-busy share of the wall clock).

Every time is the median of at least 3 measurements made in this process (range and values recorded). Each time comes
with its FLOPs (counted on PyTorch's `meta` device with `torch.utils.flop_counter` for the shapes run: UNet calls and
VAE decode; text encoders and identity extras left out) and its fraction of the card's dense 16-bit peak (a table by
card name). Peak memory and the card, versions, date and command are recorded. Each part writes its own result file
under `--out` (default `$OUT`, else `bench/results/`) as soon as it has a number, so a kill keeps what was measured:
keyframe_speed.json, character_speed.json, style_training.json, low_memory.json.

    python bench/gpu_suite.py --plan                 # the parts and their estimated seconds
    python bench/gpu_suite.py --only identity,style,low_memory
    python bench/gpu_suite.py --only keyframes --levers
    python bench/gpu_suite.py --tiny                 # CPU rehearsal of every part on the tiny pipeline (seconds)
"""
import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/dreamframe-inductor")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from dreamframe import models  # noqa: E402
from dreamframe.characters import CharacterConfig, character_ids, sheet_path  # noqa: E402
from dreamframe.identity import clear_identity, identity_condition, random_ip_adapter  # noqa: E402
from dreamframe.keyframes import KeyframeConfig, select_frames  # noqa: E402
from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast, speed_up  # noqa: E402
from dreamframe.low_memory import place_low_memory  # noqa: E402
from dreamframe.pipeline import PRESETS  # noqa: E402
from dreamframe.run_folder import read_manifest  # noqa: E402
from dreamframe.schema import sample_movie  # noqa: E402

GIB = 2**30
PARTS = {  # name: estimated seconds on an H100 (compile included), what it measures
    "keyframes": (330, "reference loop vs ours (compiled, batch 8), base-only, profile; +120 s with --levers"),
    "identity": (150, "none / ip-adapter / shared-attention at batch 8"),
    "style": (60, "style training, 400 updates x 2 micro-steps at 768²"),
    "low_memory": (200, "batch 1 under the cap: base, base + refiner, identity modes, colab style, CUDA graphs on/off"),
}
DENSE_16BIT_TFLOPS = {  # dense (no sparsity) fp16/bf16 tensor-core peak by card name, from NVIDIA's data sheets
    "H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "A100": 312.0, "L40S": 362.1, "L4": 121.0, "T4": 65.0,
}
VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
             patch_size=14, projection_dim=1024)
T0 = time.perf_counter()
DEADLINE = [None]   # seconds after the start past which no step begins (--deadline)
SKIP = set()   # steps not to run (--skip)


def log(*parts):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *parts, flush=True)


def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


def reset_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak() -> dict:
    if not torch.cuda.is_available(): return {}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}


def spread(values: list[float]) -> dict:
    "Median, range and the values themselves."
    return {"median": round(statistics.median(values), 3), "range": [round(min(values), 3), round(max(values), 3)],
            "values": [round(v, 3) for v in values]}


def cap(gib: float | None) -> None:
    "Emulate a card of `gib` GiB (None: the whole card)."
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if gib is None else gib * GIB / total)


def card_peak_flops() -> float | None:
    "The card's dense 16-bit tensor peak in FLOP/s, or None for a card not in the table (or no card)."
    if not torch.cuda.is_available(): return None
    name = torch.cuda.get_device_name()
    for key, tflops in DENSE_16BIT_TFLOPS.items():
        if key in name: return tflops * 1e12
    return None


# FLOPs, counted on the meta device for the shapes a frame runs ------------------------------------------------------

def _meta_copy(module):
    "The same architecture on the meta device (no memory, no time), SDPA attention."
    from diffusers.models.attention_processor import AttnProcessor2_0
    module = getattr(module, "_orig_mod", module)   # under a torch.compile wrapper
    with torch.device("meta"):
        copy = type(module).from_config(module.config).to(torch.float16)
    if hasattr(copy, "set_attn_processor"): copy.set_attn_processor(AttnProcessor2_0())
    return copy


def unet_flops(unet, rows: int, side: int, text_dim: int, time_ids: int) -> int:
    "FLOPs of one UNet call on `rows` latents of `side`² (guidance doubles the rows of a frame)."
    from torch.utils.flop_counter import FlopCounterMode
    meta = _meta_copy(unet)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = torch.empty(rows, meta.config.in_channels, side, side, dtype=torch.float16)
        text = torch.empty(rows, 77, meta.config.cross_attention_dim, dtype=torch.float16)
        conditions = {"text_embeds": torch.empty(rows, text_dim, dtype=torch.float16),
                      "time_ids": torch.empty(rows, time_ids, dtype=torch.float16)}
        with FlopCounterMode(display=False) as counter:
            meta(sample, torch.tensor(500.0), encoder_hidden_states=text, added_cond_kwargs=conditions)
    return counter.get_total_flops()


def decode_flops(vae, side: int) -> int:
    "FLOPs of decoding one latent of `side`²."
    from torch.utils.flop_counter import FlopCounterMode
    meta = _meta_copy(vae)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FlopCounterMode(display=False) as counter:
            meta.decode(torch.empty(1, meta.config.latent_channels, side, side, dtype=torch.float16))
    return counter.get_total_flops()


def frame_flops(base, refiner, cfg: KeyframeConfig) -> dict:
    "FLOPs of one frame at `cfg`'s settings: base steps, refiner steps, decode (guided: 2 rows per UNet call)."
    side = cfg.resolution // base.vae_scale_factor
    rows = 2 if cfg.guidance > 1 else 1
    text_dim = base.text_encoder_2.config.projection_dim
    per_step = unet_flops(base.unet, rows, side, text_dim, 6)
    total = cfg.steps + cfg.refiner_steps
    base_steps = cfg.steps if not cfg.refiner_steps else round(total * cfg.steps / total)
    flops = {"unet_per_step": per_step, "unet": base_steps * per_step, "decode": decode_flops(base.vae, side)}
    if cfg.refiner_steps:
        refiner_step = unet_flops(refiner.unet, rows, side, text_dim, 5)
        flops.update(refiner_per_step=refiner_step, refiner=cfg.refiner_steps * refiner_step)
    flops["frame"] = flops["unet"] + flops["decode"] + flops.get("refiner", 0)
    return flops


def with_peak_fraction(seconds: float, flops: int) -> dict:
    "TFLOP per frame, achieved TFLOP/s and the fraction of the card's dense 16-bit peak."
    peak_flops = card_peak_flops()
    achieved = flops / seconds
    return {"tflop_per_frame": round(flops / 1e12, 1), "achieved_tflops": round(achieved / 1e12, 1),
            "fraction_of_peak": round(achieved / peak_flops, 3) if peak_flops else None}


# Profiles -----------------------------------------------------------------------------------------------------------

KERNEL_KINDS = (  # first match wins: (kind, name fragments)
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "winograd", "implicit_convolve")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "sm90_")),
    ("normalization", ("norm", "moments", "welford")),
    ("copy", ("memcpy", "memset", "copy")),
    ("fused elementwise (Triton)", ("triton",)),
    ("elementwise", ("elementwise", "vectorized", "reduce", "unrolled", "cat", "index")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KERNEL_KINDS:
        if any(fragment in lowered for fragment in fragments): return kind
    return "other"


def profiled(run) -> dict:
    "Run `run()` under the profiler: wall seconds, device-busy seconds and share, device time by kind of kernel, top kernels."
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        run()
        sync()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    intervals = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy_us, last_end = 0.0, None
    for start_us, end_us in intervals:   # the union of kernel intervals: time the device was doing something
        if last_end is None or start_us > last_end:
            busy_us += end_us - start_us
            last_end = end_us
        elif end_us > last_end:
            busy_us += end_us - last_end
            last_end = end_us
    by_kind, by_name = {}, {}
    for event in kernels:
        duration = event.time_range.end - event.time_range.start
        by_kind[kernel_kind(event.name)] = by_kind.get(kernel_kind(event.name), 0.0) + duration
        by_name[event.name] = by_name.get(event.name, 0.0) + duration
    total = sum(by_kind.values()) or 1.0
    top = sorted(by_name.items(), key=lambda item: -item[1])[:10]
    return {"wall_s": round(wall, 3), "device_busy_s": round(busy_us / 1e6, 3),
            "device_busy_share": round(busy_us / 1e6 / wall, 3) if wall else None,
            "device_time_by_kind": {k: {"s": round(v / 1e6, 3), "share": round(v / total, 3)}
                                    for k, v in sorted(by_kind.items(), key=lambda item: -item[1])},
            "top_kernels": [{"kernel": name[:90], "s": round(us / 1e6, 3)} for name, us in top]}


# Results ------------------------------------------------------------------------------------------------------------

class Results(dict):
    "One result file, rewritten whenever a number arrives; a failing step records its error instead of ending the run."
    def __init__(self, path: Path, **head):
        super().__init__(head)
        self.path = path

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, indent=1, allow_nan=False) + "\n")
        tmp.replace(self.path)

    def step(self, name: str, measure):
        "Run `measure()` into `self[name]`, save, and log; an exception is recorded (the other steps still run)."
        started = time.perf_counter()
        if name in SKIP:
            log(name, "skipped (--skip)")
            return self.get(name, {})
        if DEADLINE[0] is not None and started - T0 > DEADLINE[0]:
            self[name] = {"skipped": f"--deadline {DEADLINE[0]:.0f} s passed before this step"}
            self.save()
            log(name, "skipped (deadline)")
            return self[name]
        try:
            self[name] = measure()
        except Exception as error:
            traceback.print_exc()
            self[name] = {"error": f"{type(error).__name__}: {str(error)[:600]}", "trace": traceback.format_exc()[-1500:]}
        if isinstance(self[name], dict): self[name]["step_wall_s"] = round(time.perf_counter() - started, 1)
        self.save()
        log(name, json.dumps(self[name])[:600])
        return self[name]


def head(args, benchmark: str) -> dict:
    return dict(benchmark=benchmark, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                card=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (tiny pipeline: no performance meaning)",
                peak_dense_16bit_tflops=(card_peak_flops() or 0) / 1e12 or None, python=platform.python_version(),
                torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers.__version__,
                transformers=transformers.__version__, command="python bench/gpu_suite.py " + " ".join(sys.argv[1:]),
                tiny=args.tiny, model="random-weight SDXL from bench/sdxl-configs" if not args.tiny else "tiny_sdxl")


# The models and the story -------------------------------------------------------------------------------------------

def build(args):
    "Base and refiner pipelines: full size on the GPU (fp16), or the tiny ones on the CPU."
    if args.tiny:
        from dreamframe.testing import tiny_sdxl
        folder = tiny_sdxl(args.work / "tiny", refiner=True)
        base = models.load_sdxl(folder)
        refiner = models.load_refiner(folder / "refiner", base)
    else:
        base, refiner = models.sdxl_from_configs(ROOT / "bench/sdxl-configs", dtype=torch.float16, device="cuda",
                                                 refiner=True)
    for pipe in (base, refiner): pipe.set_progress_bar_config(disable=True)
    return base, refiner


def settings(args, **overrides) -> KeyframeConfig:
    values = dict(steps=args.steps, guidance=5.0, resolution=args.resolution, batch_size=args.batch_size,
                  negative_prompt="blurry, low quality, watermark, text")
    return KeyframeConfig(**{**values, **overrides})


def fresh_run(args, movie, name: str) -> Path:
    run = args.work / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    movie.save(run)
    if (args.work / "sheets").exists(): shutil.copytree(args.work / "sheets", run / "characters")
    return run


def draw(args, base, movie, name: str, cfg: KeyframeConfig, speed: KeyframeSpeed, refiner=None, condition=None):
    "Draw `cfg`'s frames into a fresh run folder: (wall seconds per frame, render seconds per frame, the run folder)."
    run = fresh_run(args, movie, name)
    chars = getattr(args, "characters", None)
    if condition is None and cfg.identity != "none": condition = identity_condition(chars, cfg, movie, run)
    frames = len(select_frames(cfg, movie))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sync()
        start = time.perf_counter()
        generate_keyframes_fast(cfg, speed, base, movie, run, model_name="random", refiner=refiner, progress=False,
                                condition=condition)
        sync()
    wall = (time.perf_counter() - start) / frames
    lines = read_manifest(run / "frames")
    render = statistics.median(lines[f.id]["seconds"] for f in select_frames(cfg, movie))
    return wall, render, run


def frame_bytes(run: Path) -> dict:
    return {png.stem: png.read_bytes() for png in sorted((run / "frames").glob("*.png"))}


# Part: keyframes ----------------------------------------------------------------------------------------------------

def reference_loop(args, base, refiner, movie) -> dict:
    "DreamFrame's own loop, emulated: one frame per call, base then refiner, the pipelines' own decode, PNG saved."
    steps, refiner_steps = args.steps, args.refiner_steps
    total = steps + refiner_steps
    split = steps / total
    negative = KeyframeConfig().negative_prompt
    speed_up(base, KeyframeSpeed.off(), refiner)   # the stock pipelines: eager, unfused, no graphs, contiguous
    out = args.work / "reference"
    out.mkdir(parents=True, exist_ok=True)

    def frame(i: int) -> float:
        prompt = f"generate an image in {movie.style_keyword} style: {movie.render_prompt(movie.frames[i])}"
        sync()
        start = time.perf_counter()
        generator = torch.Generator(base.device).manual_seed(20 + i)
        latents = base(prompt=prompt, negative_prompt=negative, num_inference_steps=total, denoising_end=split,
                       guidance_scale=5.0, height=args.resolution, width=args.resolution, generator=generator,
                       output_type="latent").images
        image = refiner(prompt=prompt, negative_prompt=negative, num_inference_steps=total, denoising_start=split,
                        guidance_scale=5.0, image=latents, generator=generator).images[0]
        image.save(out / f"{i}.png")
        sync()
        return time.perf_counter() - start

    warmup = frame(0)
    repeats = []
    for repeat in range(args.repeats):
        first = 1 + repeat * args.reference_frames
        repeats.append(statistics.median(frame(i) for i in range(first, first + args.reference_frames)))
    cfg = settings(args, refiner_steps=refiner_steps, batch_size=1)
    seconds = statistics.median(repeats)
    return {"seconds_per_frame": spread(repeats), "frames_per_repeat": args.reference_frames,
            "warmup_s": round(warmup, 2), **with_peak_fraction(seconds, frame_flops(base, refiner, cfg)["frame"]),
            "settings": f"fp16, batch 1, {steps}+{refiner_steps} steps, eager, stock decode (fp32-upcast VAE), PNG", **peak()}


def ours(args, base, movie, label: str, speed: KeyframeSpeed, refiner=None, **overrides) -> dict:
    "`generate_keyframes_fast`: one warm-up group (compile happens there), then `--repeats` timed runs."
    cfg = settings(args, **overrides)
    frames = cfg.batch_size * args.timed_groups
    warm_wall, _, _ = draw(args, base, movie, f"{label}-warm", dataclasses.replace(cfg, limit=cfg.batch_size), speed, refiner)
    reset_memory()
    walls, renders = [], []
    for repeat in range(args.repeats):
        wall, render, _ = draw(args, base, movie, f"{label}-{repeat}", dataclasses.replace(cfg, limit=frames), speed, refiner)
        walls.append(wall)
        renders.append(render)
        log(f"{label} repeat {repeat}: render {render:.3f} s/frame, wall {wall:.3f}")
    flops = frame_flops(base, refiner, cfg)
    return {"seconds_per_frame": spread(renders), "wall_seconds_per_frame": spread(walls),
            "frames_per_hour_wall": round(3600 / statistics.median(walls)), "frames_per_repeat": frames,
            "warmup_s": round(warm_wall * cfg.batch_size, 1),
            "by_render_time": with_peak_fraction(statistics.median(renders), flops["frame"]),
            "by_wall_clock": with_peak_fraction(statistics.median(walls), flops["frame"]),
            "flops": {k: v for k, v in flops.items()}, **peak(),
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("negative_prompt", "template")},
            "speed": dataclasses.asdict(speed)}


def keyframes_part(args, base, refiner) -> None:
    results = Results(args.out / "keyframe_speed.json", **head(args, "keyframe_speed"),
                      resolution=args.resolution, guidance=5.0)
    movie = sample_movie(n_substories=4, n_shots=2, n_frames=4)   # 32 frames
    results.save()
    compiled = KeyframeSpeed(compile=not args.tiny, cudnn_benchmark=not args.tiny)
    results.step("a_reference", lambda: reference_loop(args, base, refiner, movie))
    results.step("b_ours_reference_settings",
                 lambda: ours(args, base, movie, "b", compiled, refiner, refiner_steps=args.refiner_steps))
    c = results.step("c_ours_base_only", lambda: ours(args, base, movie, "c", compiled))

    def profile_base_only():
        cfg = settings(args, limit=args.batch_size)
        return profiled(lambda: draw(args, base, movie, "c-profile", cfg, compiled))
    results.step("c_profile_one_group", profile_base_only)
    a, b = results.get("a_reference", {}), results.get("b_ours_reference_settings", {})
    if "seconds_per_frame" in a and "seconds_per_frame" in b:   # repeat i of (a) against repeat i of (b)
        for key, b_key in (("render", "seconds_per_frame"), ("wall", "wall_seconds_per_frame")):
            ratios = [ra / rb for ra, rb in zip(a["seconds_per_frame"]["values"], b[b_key]["values"])]
            results[f"b_over_a_speedup_{key}"] = spread(ratios)
    if args.levers and "seconds_per_frame" in c:
        def bfloat16():
            base.to(dtype=torch.bfloat16)
            try: return ours(args, base, movie, "c-bf16", compiled)
            finally: base.to(dtype=torch.float16)
        results.step("c_lever_bfloat16", bfloat16)
    targets = {"base_only_fraction_of_peak_by_wall": 0.55, "ours_over_reference_loop": 3.0}
    got = {"base_only_fraction_of_peak_by_wall": c.get("by_wall_clock", {}).get("fraction_of_peak"),
           "ours_over_reference_loop": results.get("b_over_a_speedup_wall", {}).get("median")}
    results["targets"] = {name: {"target": targets[name], "measured": got[name],
                                 "met": None if got[name] is None else got[name] >= targets[name]} for name in targets}
    results["total_s"] = round(time.perf_counter() - T0, 1)
    results.save()


# Part: identity -----------------------------------------------------------------------------------------------------

def make_characters(args, base) -> None:
    "A random IP-Adapter Plus for the base UNet (full size: ViT-H-size encoder) and random sheets for the story's characters."
    if getattr(args, "characters", None) is not None: return
    if args.tiny: adapter = random_ip_adapter(args.work / "ip-adapter", base.unet, plus=True)
    else: adapter = random_ip_adapter(args.work / "ip-adapter", base.unet, plus=True, heads=20, encoder=VIT_H)
    rng = np.random.default_rng(0)
    for character_id in character_ids(args.movie).values():
        picture = rng.integers(0, 255, (args.resolution, args.resolution, 3), dtype=np.uint8)
        path = sheet_path(args.work / "sheets-run", character_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path)
    shutil.copytree(args.work / "sheets-run" / "characters", args.work / "sheets", dirs_exist_ok=True)
    args.characters = CharacterConfig(resolution=args.resolution, steps=args.steps, **adapter)


MODES = ("none", "ip-adapter", "shared-attention")


def identity_part(args, base) -> None:
    results = Results(args.out / "character_speed.json", **head(args, "character_speed"),
                      settings=f"fp16, {args.resolution}², {args.steps} steps, guidance 5, batch {args.batch_size}, "
                               "fused QKV off (identity processors replace fused ones), default switches otherwise "
                               "(UNet calls replayed as CUDA graphs), random IP-Adapter Plus over a ViT-H-size encoder",
                      story="sample_movie(3, 2, 4): 24 frames, each showing one or both of two characters")
    make_characters(args, base)
    speed = KeyframeSpeed(fuse_qkv=False)
    cfg = settings(args)
    frames = cfg.batch_size * args.timed_groups
    flops = frame_flops(base, None, cfg)["frame"]
    results.save()

    def measure():
        for mode in MODES:   # warm-up: the adapter's load, kernels, the graphs' first recording
            draw(args, base, args.movie, f"id-warm-{mode}", dataclasses.replace(cfg, identity=mode, limit=cfg.batch_size), speed)
        rounds = {mode: [] for mode in MODES}
        memory = {}
        for repeat in range(args.repeats):
            for mode in MODES:
                reset_memory()
                _, render, _ = draw(args, base, args.movie, f"id-{mode}-{repeat}",
                                    dataclasses.replace(cfg, identity=mode, limit=frames), speed)
                rounds[mode].append(render)
                memory[mode] = peak()
                log(f"identity round {repeat} {mode}: {render:.3f} s/frame")
        out = {mode: {"seconds_per_frame": spread(rounds[mode]), **memory[mode],
                      **with_peak_fraction(statistics.median(rounds[mode]), flops)} for mode in MODES}
        for mode in MODES[1:]:
            out[f"{mode.replace('-', '_')}_over_none"] = spread([m / n for m, n in zip(rounds[mode], rounds["none"])])
        return out
    results.step("batch_8", measure)
    measured = results.get("batch_8", {})
    results["ip_adapter_over_none"] = measured.get("ip_adapter_over_none")
    results["shared_attention_over_none"] = measured.get("shared_attention_over_none")
    results["targets"] = {"ip_adapter_over_none": 1.15, "shared_attention_over_none": 1.3,
                          "low_memory_shared_attention_over_none": 1.5, "low_memory_peak_gib": args.cap}
    results["total_s"] = round(time.perf_counter() - T0, 1)
    results.save()


# Part: style --------------------------------------------------------------------------------------------------------

def style_images(count: int, resolution: int) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)) for _ in range(count)]


def style_run(base, cfg, speed, folder: Path) -> tuple[float, list]:
    "Seconds of one whole training run (set-up, latent cache, checkpoints included) and its losses."
    from dreamframe.style_fast import train_embedding_fast
    shutil.rmtree(folder, ignore_errors=True)
    sync()
    start = time.perf_counter()
    train_embedding_fast(cfg, speed, base, style_images(4, cfg.resolution), folder, init_word="style", progress=False)
    sync()
    return time.perf_counter() - start, json.loads((folder / "loss.json").read_text())["loss"]


def style_update_seconds(base, settings_: dict, speed, updates: int, folder: Path) -> dict:
    "Seconds per update after warm-up: a warm-up run, then runs of 2 and 2 + `updates` updates, timed; their difference."
    from dreamframe.style import StyleConfig
    times = {}
    for label, steps in (("warmup", 2), ("short", 2), ("long", 2 + updates)):
        cfg = StyleConfig(**{**settings_, "token": f"<bench-{label}>", "steps": steps})
        times[label], _ = style_run(base, cfg, speed, folder / label)
    per_update = (times["long"] - times["short"]) / updates
    return {"s_per_update": round(per_update, 4), "updates_timed": updates,
            "run_seconds": {k: round(v, 2) for k, v in times.items()}}


def style_unet_flops(base, resolution: int, rows: int) -> int:
    "FLOPs of one training pass of the UNet on `rows` samples: forward, and backward into its inputs (weights frozen)."
    from torch.utils.flop_counter import FlopCounterMode
    meta = _meta_copy(base.unet)
    meta.requires_grad_(False)
    side = resolution // base.vae_scale_factor
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = torch.empty(rows, 77, meta.config.cross_attention_dim, dtype=torch.float16, requires_grad=True)
        conditions = {"text_embeds": torch.empty(rows, base.text_encoder_2.config.projection_dim, dtype=torch.float16),
                      "time_ids": torch.empty(rows, 6, dtype=torch.float16)}
        sample = torch.empty(rows, meta.config.in_channels, side, side, dtype=torch.float16)
        with FlopCounterMode(display=False) as counter:
            out = meta(sample, torch.tensor(500.0), encoder_hidden_states=text, added_cond_kwargs=conditions).sample
            out.float().pow(2).mean().backward()
    return counter.get_total_flops()


def restore_dtype(base, args) -> None:
    "Back to the keyframes' dtype after style training (which casts the frozen parts to its own)."
    dtype = torch.float32 if args.tiny else torch.float16
    for module in (base.unet, base.vae, base.text_encoder, base.text_encoder_2): module.to(dtype=dtype)


def style_part(args, base) -> None:
    from dreamframe.style import StyleConfig
    from dreamframe.style_fast import StyleSpeed
    results = Results(args.out / "style_training.json", **head(args, "style_training"))
    results.save()
    clear_identity(base)   # the plain UNet, as the style stage finds it
    resolution, steps = (64, 8) if args.tiny else (768, 400)
    speed = StyleSpeed()

    def measure():
        warm = StyleConfig(token="<warm>", steps=5, resolution=resolution)
        style_run(base, warm, speed, args.work / "style-warm")
        reset_memory()
        seconds = []
        for repeat in range(args.style_repeats):
            cfg = StyleConfig(token=f"<style{repeat}>", steps=steps, resolution=resolution)
            took, loss = style_run(base, cfg, speed, args.work / f"style-{repeat}")
            seconds.append(took)
            log(f"style run {repeat}: {took:.1f} s for {steps} updates, last loss {loss[-1]:.4f}")
        cfg = StyleConfig(token="<x>", steps=steps, resolution=resolution)
        flops = steps * style_unet_flops(base, resolution, cfg.grad_accum)
        median = statistics.median(seconds)
        return {"seconds": spread(seconds), "updates": steps, "micro_steps_per_update": cfg.grad_accum,
                "resolution": resolution, "speed": dataclasses.asdict(speed), **peak(),
                "unet_tflop": round(flops / 1e12, 1), **with_peak_fraction(median, flops)}
    try: results.step("reference_size", measure)
    finally: restore_dtype(base, args)
    results["total_s"] = round(time.perf_counter() - T0, 1)
    results.save()


# Part: low memory ---------------------------------------------------------------------------------------------------

def low_memory_part(args, base, refiner) -> None:
    results = Results(args.out / "low_memory.json", **head(args, "low_memory"), cap_gib=args.cap,
                      resolution=args.resolution, steps=args.steps, refiner_steps=args.refiner_steps, batch_size=1,
                      targets={"ratio_max": 1.5, "peak_reserved_max_gib": args.cap, "device_busy_share_min": 0.85})
    results.save()
    movie = args.movie
    one = settings(args, batch_size=1)
    with_refiner = dataclasses.replace(one, refiner_steps=args.refiner_steps)
    default, ungraphed = KeyframeSpeed(), KeyframeSpeed(cuda_graph=False)
    count = args.low_frames
    normal = {}

    def timed(name, cfg, speed, ref=None, condition_mode="none"):
        "One warm-up frame, then `count` frames in ONE stage call (as a real run draws them): render s/frame, bytes."
        warm = dataclasses.replace(cfg, identity=condition_mode, limit=1)
        draw(args, base, movie, f"{name}-warm", warm, speed, ref)
        reset_memory()
        ids = [f.id for f in movie.frames[1: 1 + count]]
        run = fresh_run(args, movie, name)
        chosen = dataclasses.replace(cfg, identity=condition_mode, frame_ids=ids)
        condition = identity_condition(args.characters, chosen, movie, run) if condition_mode != "none" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generate_keyframes_fast(chosen, speed, base, movie, run, model_name="random", refiner=ref,
                                    progress=False, condition=condition)
        lines = read_manifest(run / "frames")
        return [lines[i]["seconds"] for i in ids], frame_bytes(run), peak()

    def uncapped():
        for name, cfg, ref in (("base", one, None), ("refiner", with_refiner, refiner)):
            normal[name] = timed(f"normal-{name}", cfg, default, ref)
        return {name: {"seconds_per_frame": spread(seconds), **memory} for name, (seconds, _, memory) in normal.items()}
    base_flops = frame_flops(base, None, one)["frame"]
    results.step("normal_uncapped", uncapped)

    def style_under_cap():
        from dreamframe.style_fast import StyleSpeed
        preset = PRESETS["colab"]
        if torch.cuda.is_available(): refiner.unet.to("cpu")
        reset_memory()
        cap(None if args.tiny else args.cap)
        settings_ = {**preset["style"], "resolution": 64 if args.tiny else preset["style"]["resolution"]}
        if args.tiny: settings_["dtype"] = "float32"   # the tiny model stays float32: casting would round its weights
        speed = StyleSpeed(**preset["style_speed"])
        try: measured = style_update_seconds(base, settings_, speed, args.style_updates, args.work / "style-low")
        finally: restore_dtype(base, args)
        return {**measured, "settings": settings_, "speed": dataclasses.asdict(speed), **peak()}
    results.step("style_low_memory", style_under_cap)
    cap(None if args.tiny else args.cap)
    tier = place_low_memory(base, base._execution_device, gpu_memory=None if args.tiny else args.cap)
    results["tier_base"] = tier
    make_characters(args, base)

    drawn = {}   # the PNG bytes of each low-memory measurement, by step name

    def low(name: str, cfg, speed, ref=None, against: str | None = None, mode: str = "none") -> dict:
        seconds, pictures, memory = timed(f"low-{name}", cfg, speed, ref, mode)
        drawn[name] = pictures
        out = {"seconds_per_frame": spread(seconds), **memory}
        if against in normal:
            baseline, baseline_bytes, _ = normal[against]
            out["normal_batch1_seconds_per_frame"] = spread(baseline)
            out["ratio_to_normal"] = round(statistics.median(seconds) / statistics.median(baseline), 3)
            out["frames_identical_to_normal"] = pictures == baseline_bytes
        return out

    graphed = results.step("base_only", lambda: {**low("base", one, default, against="base"), "tier": tier})
    eager = results.step("base_only_no_cuda_graph", lambda: low("base-eager", one, ungraphed, against="base"))
    for entry in (graphed, eager):
        if "seconds_per_frame" in entry: entry.update(with_peak_fraction(entry["seconds_per_frame"]["median"], base_flops))
    if "base" in drawn and "base-eager" in drawn:
        results["cuda_graph_frames_identical_to_eager"] = drawn["base"] == drawn["base-eager"]

    for mode in MODES:
        results.step(f"identity_{mode}", lambda mode=mode: low(f"id-{mode}", one, KeyframeSpeed(fuse_qkv=False), mode=mode))
    none = results.get("identity_none", {}).get("seconds_per_frame", {}).get("median")
    for mode in MODES[1:]:
        entry = results.get(f"identity_{mode}", {})
        if none and "seconds_per_frame" in entry:
            entry["over_none"] = round(entry["seconds_per_frame"]["median"] / none, 3)

    def base_and_refiner():
        refiner_tier = place_low_memory(refiner, base._execution_device, gpu_memory=None if args.tiny else args.cap, base=base)
        return {**low("refiner", with_refiner, default, refiner, against="refiner"),
                "tier": f"base {base.memory_tier}, refiner {refiner_tier}"}
    results.step("base_refiner", base_and_refiner)
    def busy(speed):
        cfg = dataclasses.replace(one, frame_ids=[f.id for f in movie.frames[10:10 + args.profile_frames]])
        return profiled(lambda: draw(args, base, movie, "busy", cfg, speed))
    results.step("profile_cuda_graph", lambda: busy(default))
    results.step("profile_eager", lambda: busy(ungraphed))

    verdict = {}
    for name in ("base_only", "base_refiner"):
        entry = results.get(name, {})
        if "ratio_to_normal" in entry:
            met = entry["ratio_to_normal"] <= 1.5 and entry.get("peak_reserved_gib", 0) <= args.cap
            verdict[name] = f"{'met' if met else 'missed'}: {entry['ratio_to_normal']}x the uncapped batch-1 time, " \
                            f"peak reserved {entry.get('peak_reserved_gib')} GiB"
    share = results.get("profile_cuda_graph", {}).get("device_busy_share")
    if share is not None: verdict["device_busy_share"] = f"{'met' if share >= 0.85 else 'missed'}: {share}"
    results["verdict"] = verdict
    results["total_s"] = round(time.perf_counter() - T0, 1)
    results.save()


# Main ---------------------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts, in this order: {','.join(PARTS)}")
    parser.add_argument("--plan", action="store_true", help="print the parts and their estimated seconds, run nothing")
    parser.add_argument("--tiny", action="store_true", help="rehearse every part on the tiny pipeline on the CPU")
    parser.add_argument("--levers", action="store_true", help="keyframes: also base-only in bfloat16 (one more compile)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per time (median and range reported)")
    parser.add_argument("--timed-groups", type=int, default=1, help="groups of --batch-size frames per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reference-frames", type=int, default=3, help="frames per measurement of the reference loop")
    parser.add_argument("--low-frames", type=int, default=4, help="timed frames per low-memory measurement")
    parser.add_argument("--style-repeats", type=int, default=3)
    parser.add_argument("--style-updates", type=int, default=8, help="timed updates of the low-memory style measurement")
    parser.add_argument("--cap", type=float, default=15.0, help="GiB the low-memory part may use")
    parser.add_argument("--out", type=Path, default=None, help="folder of the result files (default $OUT or bench/results)")
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which no further step starts")
    parser.add_argument("--skip", default="", help="comma-separated steps not to run, e.g. style_low_memory,profile_eager")
    parser.add_argument("--profile-frames", type=int, default=8, help="frames in one profiled low-memory stage call")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown: parser.error(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    if args.plan:
        total = 0
        for name in PARTS:
            if name not in parts: continue
            seconds = PARTS[name][0] + (120 if name == "keyframes" and args.levers else 0)
            total += seconds
            print(f"{name:11} ~{seconds:4d} s  {PARTS[name][1]}")
        print(f"{'total':11} ~{total:4d} s on an H100 (+~30 s to build the models); a device call may run 600 s")
        return
    if not args.tiny and not torch.cuda.is_available(): parser.error("no CUDA card here; use --tiny to rehearse on the CPU")
    DEADLINE[0] = args.deadline
    SKIP.update(step for step in args.skip.split(",") if step)
    args.out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results")
    if args.tiny and args.out == ROOT / "bench" / "results": args.out = Path(tempfile.mkdtemp()) / "results"
    args.work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    args.steps, args.refiner_steps, args.resolution = (2, 1, 64) if args.tiny else (30, 10, 1024)
    args.movie, args.characters = sample_movie(3, 2, 4), None
    base, refiner = build(args)
    log(f"built the models; parts {parts}; results in {args.out}")
    for name in [p for p in PARTS if p in parts]:
        started = time.perf_counter()
        try:
            if name == "keyframes": keyframes_part(args, base, refiner)
            elif name == "identity": identity_part(args, base)
            elif name == "style": style_part(args, base)
            elif name == "low_memory": low_memory_part(args, base, refiner)
        except Exception:   # a part that breaks leaves the others their chance
            traceback.print_exc()
        log(f"part {name} took {time.perf_counter() - started:.0f} s")
        reset_memory()
    log("done")


if __name__ == "__main__":
    main()
