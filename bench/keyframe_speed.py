"""Keyframe speed: the DreamFrame reference recipe vs dreamframe's `generate_keyframes_fast`, one run, one card.

Full SDXL-size random-weight base + refiner (bench/sdxl-configs), fp16, 1024², guidance 5:
  (a) reference: batch 1, 30 base + 10 refiner steps (denoising_end/start 0.75), default SDPA attention, no
      compile, stock pipeline decode (fp32-upcast VAE), PNG saved in the loop
  (b) ours, same settings: `generate_keyframes_fast` (KeyframeConfig + KeyframeSpeed) with batch 8, torch.compile of
      both UNets and the VAE decoder, channels-last, fused QKV, cuDNN autotuning, bf16 VAE decode of the batch, PNGs
      written on a background thread
  (c) ours, base only, 30 steps
  (d) ours, low-memory mode (model CPU offload + VAE tiling/slicing), batch 1: peak GPU memory at 1024²
  (c) variants (--c-variants): several settings of (c) side by side in one process, e.g. the previous default
      (batch 8, UNet-only compile) as the in-run baseline and the new ones (compiled channels-last VAE, batch 16,
      cuDNN attention), plus a micro-benchmark of the UNet's attention shapes under each SDPA kernel; written to
      keyframe_speed_c.json
One measurement = the median seconds per frame over the timed frames after warm-up (ours: group seconds / frames in
the group, and the wall clock of the timed groups, PNG writing included). (a), (b) and (c) repeat their measurement
`--repeats` times (default 3) in the same process on the same models, each repeat drawing the same frames into a fresh
run folder; the result is the median of the repeats with their range, and the b/a ratio is the median of the
per-repeat ratios with its range. Frames per GPU-hour = 3600 / seconds per frame.

    python bench/keyframe_speed.py            # H100; writes $OUT/keyframe_speed.json (or bench/results/)
    python bench/keyframe_speed.py --tiny     # CPU rehearsal on the tiny pipeline (64 px, 2+1 steps)
    python bench/keyframe_speed.py --only b,c --repeats 5   # (b) and (c) only, five measurements each
    python bench/keyframe_speed.py --only c --c-variants prev_b8,b8_vae,b16_vae_cudnn,b16_vae   # (c) side by side
"""
import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/dreamframe-inductor")  # reused by a later run on the same machine

import torch
import diffusers, transformers, accelerate
from dreamframe import models
from dreamframe.keyframes import KeyframeConfig, decode_latents
from dreamframe.keyframes_fast import KeyframeSpeed, attention, generate_keyframes_fast
from dreamframe.run_folder import read_manifest
from dreamframe.schema import sample_movie

T0 = time.perf_counter()


def elapsed(): return time.perf_counter() - T0
def gib(n_bytes): return round(n_bytes / 2**30, 2)
def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()
def log(*parts): print(f"[{elapsed():6.1f}s]", *parts, flush=True)


def build(args, tmp):
    if args.tiny:
        path = __import__('dreamframe.testing', fromlist=['tiny_sdxl']).tiny_sdxl(tmp / "tiny", refiner=True)
        base = models.load_sdxl(path)
        return base, models.load_refiner(path / "refiner", base)
    return models.sdxl_from_configs(ROOT / "bench/sdxl-configs", dtype=torch.float16, device="cuda", refiner=True)


def summary(seconds_per_frame, **extra):
    return dict(seconds_per_frame=round(seconds_per_frame, 3), frames_per_gpu_hour=round(3600 / seconds_per_frame), **extra)


def repeated(measurements, key="seconds_per_frame"):
    "Median and range of one number over the repeats."
    values = [m[key] for m in measurements]
    return round(statistics.median(values), 3), [round(min(values), 3), round(max(values), 3)]


def reference(args, base, refiner, movie, tmp):
    "The reference loop: one frame per call, base then refiner, pipeline decode, PNG save."
    for p in (base, refiner):
        p.set_progress_bar_config(disable=True)
        if args.device == "cuda": p.unet.to(memory_format=torch.contiguous_format)
    total = args.steps + args.refiner_steps
    split = args.steps / total
    negative = KeyframeConfig().negative_prompt
    if args.device == "cuda": torch.cuda.reset_peak_memory_stats()

    def frame(i):
        prompt = f"generate an image in {movie.style_keyword} style: {movie.render_prompt(movie.frames[i])}"
        sync(); start = time.perf_counter()
        generator = torch.Generator(args.device).manual_seed(20 + i)
        latents = base(prompt=prompt, negative_prompt=negative, num_inference_steps=total, denoising_end=split,
                       guidance_scale=args.guidance, height=args.resolution, width=args.resolution, generator=generator,
                       output_type="latent").images
        image = refiner(prompt=prompt, negative_prompt=negative, num_inference_steps=total, denoising_start=split,
                        guidance_scale=args.guidance, image=latents, generator=generator).images[0]
        image.save(tmp / f"reference-{i}.png")
        sync(); return time.perf_counter() - start

    warmup = [frame(i) for i in range(args.ref_warmup)]
    log(f"(a) warm-up {[round(t, 3) for t in warmup]}")
    measurements = []
    for repeat in range(args.repeats):
        times = [frame(i) for i in range(args.ref_warmup, args.ref_warmup + args.ref_frames)]
        measurements.append(dict(seconds_per_frame=statistics.median(times), per_frame=[round(t, 3) for t in times]))
        log(f"(a) repeat {repeat}: median {measurements[-1]['seconds_per_frame']:.3f}s/frame {measurements[-1]['per_frame']}")
    median, spread = repeated(measurements)
    peak = gib(torch.cuda.max_memory_allocated()) if args.device == "cuda" else None
    return summary(median, range=spread, repeats=[round(m["seconds_per_frame"], 3) for m in measurements],
                   frames_timed_per_repeat=args.ref_frames, per_frame=[m["per_frame"] for m in measurements],
                   warmup_s=[round(t, 3) for t in warmup], peak_allocated_gib=peak,
                   settings=f"fp16, batch 1, {args.steps}+{args.refiner_steps} steps, SDPA, no compile, fp32-upcast VAE")


def ours(args, base, refiner, movie, tmp, label, timed_groups=None, speed_overrides=None, **overrides):
    "generate_keyframes_fast: warm-up groups (compile happens here) in one folder, then `--repeats` timed runs of the same frames."
    cfg = KeyframeConfig(**{**dict(steps=args.steps, guidance=args.guidance, resolution=args.resolution,
                                   batch_size=args.batch_size), **overrides})
    speed = KeyframeSpeed(**{**dict(compile=args.compile, compile_mode=args.compile_mode, cudnn_benchmark=args.device == "cuda"),
                             **(speed_overrides or {})})
    model_name = "tiny_sdxl" if args.tiny else "random-weight SDXL from bench/sdxl-configs"
    warm_frames = cfg.batch_size * args.warmup_groups
    timed_frames = cfg.batch_size * (timed_groups or args.timed_groups)

    def draw(folder, frames):
        run = tmp / folder
        movie.save(run)
        sync(); start = time.perf_counter()
        generate_keyframes_fast(dataclasses.replace(cfg, limit=frames), speed, base, movie, run, refiner=refiner,
                                model_name=model_name, progress=False)
        sync(); return run, time.perf_counter() - start

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, warm_s = draw(f"{label}-warmup", warm_frames)
        log(f"{label}: warm-up {warm_frames} frames {warm_s:.1f}s")
        warm_peak = gib(torch.cuda.max_memory_allocated()) if args.device == "cuda" else None
        if args.device == "cuda": torch.cuda.reset_peak_memory_stats()
        measurements = []
        for repeat in range(args.repeats):
            run, wall = draw(f"{label}-{repeat}", timed_frames)
            records = read_manifest(run / "frames")
            per_frame = [records[f.id]["seconds"] for f in movie.frames[:timed_frames]]
            measurements.append(dict(seconds_per_frame=statistics.median(per_frame), wall_seconds_per_frame=wall / timed_frames))
            log(f"{label} repeat {repeat}: {timed_frames} frames {wall:.2f}s wall, median {measurements[-1]['seconds_per_frame']:.3f}s/frame")
    latent = args.resolution // 8
    decode_times = []
    for _ in range(3):
        latents = torch.randn(cfg.batch_size, 4, latent, latent, device=args.device, dtype=base.unet.dtype)
        sync(); start = time.perf_counter()
        decode_latents(base, latents, cfg.vae_dtype)
        sync(); decode_times.append(time.perf_counter() - start)
    decode_s = round(statistics.median(decode_times) / cfg.batch_size, 3)
    log(f"{label}: VAE decode + 8-bit conversion {decode_s:.3f}s/frame")
    median, spread = repeated(measurements)
    wall_median, wall_spread = repeated(measurements, "wall_seconds_per_frame")
    return summary(median, range=spread, repeats=[round(m["seconds_per_frame"], 3) for m in measurements],
                   wall_seconds_per_frame=wall_median, wall_range=wall_spread,
                   wall_repeats=[round(m["wall_seconds_per_frame"], 3) for m in measurements],
                   frames_timed_per_repeat=timed_frames, warmup_s=round(warm_s, 1), vae_decode_seconds_per_frame=decode_s,
                   inductor_tuning=args.inductor_tuning,
                   peak_allocated_gib=gib(torch.cuda.max_memory_allocated()) if args.device == "cuda" else None,
                   peak_allocated_warmup_gib=warm_peak,
                   peak_reserved_gib=gib(torch.cuda.max_memory_reserved()) if args.device == "cuda" else None,
                   config={k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("negative_prompt", "template")},
                   speed=dataclasses.asdict(speed))


# (c) variants: name -> KeyframeConfig batch size and KeyframeSpeed switches. "prev_b8" is the setting before the
# compiled VAE (the in-run baseline).
C_VARIANTS = {
    "prev_b8": dict(batch_size=8, compile_vae=False, attention_backend="default"),
    "b8_vae": dict(batch_size=8, compile_vae=True, attention_backend="default"),
    "b8_vae_cudnn": dict(batch_size=8, compile_vae=True, attention_backend="cudnn"),
    "b16_vae": dict(batch_size=16, compile_vae=True, attention_backend="default"),
    "b16_vae_cudnn": dict(batch_size=16, compile_vae=True, attention_backend="cudnn"),
}


def uncompile(pipe):
    "Drop every compiled graph: `speed_up` applies the next variant's switches afresh and the next call traces anew."
    pipe._dreamframe_speed = None
    torch._dynamo.reset()


def attention_bench(args, batch_size):
    "Seconds per frame spent in the base UNet's attention (30 CFG steps) under each SDPA kernel, on SDXL's shapes."
    from torch.nn.attention import SDPBackend, sdpa_kernel
    n = 2 * batch_size  # CFG doubles the UNet batch
    # SDXL base at 1024²: 10 transformer layers at 64² latents (10 heads), 60 at 32² (20 heads); head dim 64;
    # each layer one self-attention and one cross-attention over 77 text tokens
    shapes = [(10, 10, 4096, 4096), (10, 10, 4096, 77), (60, 20, 1024, 1024), (60, 20, 1024, 77)]
    kernels = {"default": None, "flash": [SDPBackend.FLASH_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION],
               "efficient": [SDPBackend.EFFICIENT_ATTENTION],
               "cudnn_first (attention_backend='cudnn')": "cfg"}
    out = dict(unet_batch=n, shapes="(layers, heads, query tokens, key tokens), head dim 64, fp16")
    for name, backends in kernels.items():
        try:
            total = 0.0
            for layers, heads, lq, lk in shapes:
                q = torch.randn(n, heads, lq, 64, device="cuda", dtype=torch.float16)
                k, v = (torch.randn(n, heads, lk, 64, device="cuda", dtype=torch.float16) for _ in range(2))
                ctx = (attention("cudnn") if backends == "cfg" else
                       sdpa_kernel(backends) if backends else torch.no_grad())
                with ctx, torch.inference_mode():
                    for _ in range(3): torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    times = []
                    for _ in range(10):
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record(); torch.nn.functional.scaled_dot_product_attention(q, k, v); b.record()
                        b.synchronize(); times.append(a.elapsed_time(b) / 1000)
                total += layers * statistics.median(times)
            out[name] = round(total * args.steps / batch_size, 4)
        except Exception as error:
            out[name] = f"{type(error).__name__}: {error}"[:200]
    flops = sum(layers * 4 * n * heads * lq * lk * 64 for layers, heads, lq, lk in shapes)
    out["tflop_per_unet_call"] = round(flops / 1e12, 2)
    log(f"attention (s/frame, 30 steps): {out}")
    return out


def c_variants(args, base, movie, tmp, names, results, save):
    "Each named (c) variant in turn on the same models; a variant whose graphs must be traced afresh resets Dynamo."
    traced = {}  # batch size -> attention backend its compiled UNet graph was traced with
    cost = dict(unet=150.0, vae=60.0)  # compile seconds, updated from what the run measures
    for name in names:
        overrides = C_VARIANTS[name]
        batch, attention = overrides["batch_size"], overrides["attention_backend"]
        reset = traced.get(batch, attention) != attention  # Dynamo does not guard on the SDPA kernel: force a new trace
        new_unet = reset or batch not in traced
        estimate = (cost["unet"] if new_unet else 0) + (cost["vae"] if overrides["compile_vae"] else 0) + \
                   1.2 * (batch + args.repeats * args.c_timed_frames) + 10
        failed = results.get("attention_microbench_s_per_frame", {}).get(f"batch_{batch}", {}).get("cudnn", 0)
        if attention == "cudnn" and isinstance(failed, str):
            results["c_variants"][name] = dict(skipped=f"cuDNN attention failed in the micro-benchmark: {failed}")
            log(f"{name}: skipped (cuDNN attention failed)"); save(); continue
        if elapsed() + estimate > args.deadline:
            results["c_variants"][name] = dict(skipped=f"would end near {elapsed() + estimate:.0f}s > deadline {args.deadline}s")
            log(f"{name}: skipped ({results['c_variants'][name]['skipped']})"); save(); continue
        if reset:
            uncompile(base); traced.clear(); log(f"{name}: Dynamo reset (new attention kernel at batch {batch})")
        gc.collect()
        if args.device == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        try:
            r = ours(args, base, None, movie, tmp, f"c_{name}", timed_groups=args.c_timed_frames // batch, batch_size=batch,
                     speed_overrides=dict(compile_vae=overrides["compile_vae"], attention_backend=attention))
            traced[batch] = attention
            group_s = r["seconds_per_frame"] * batch
            if new_unet and not overrides["compile_vae"]: cost["unet"] = max(30.0, r["warmup_s"] - group_s)
            if not new_unet and overrides["compile_vae"]: cost["vae"] = max(10.0, r["warmup_s"] - group_s)
            r["reset_dynamo"] = reset
        except Exception as error:
            import traceback; traceback.print_exc()
            r = dict(error=f"{type(error).__name__}: {error}"[:800])
            traced[batch] = attention  # a graph may have been traced: a later variant at this batch size resets
        results["c_variants"][name] = r
        save()


def low_memory(args, movie, tmp):
    "Fresh models, CPU offload + VAE tiling, batch 1: peak GPU memory and speed at full resolution."
    base, refiner = build(args, tmp)
    if args.device == "cuda":  # what models.load_sdxl(..., low_memory=True) does: offload whole models, tile the VAE
        for p in (base, refiner): p.enable_model_cpu_offload(device=args.device)
        base.vae.enable_tiling(); base.vae.enable_slicing()
        torch.cuda.empty_cache()
    result = {}
    for label, ref in (("base_only", None), ("base_refiner", refiner)):
        cfg = KeyframeConfig(steps=args.steps, refiner_steps=args.refiner_steps if ref is not None else 0, guidance=args.guidance,
                             resolution=args.resolution, batch_size=1, limit=args.lowmem_frames)
        if args.device == "cuda":
            gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        run = tmp / f"lowmem-{label}"; movie.save(run)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sync(); start = time.perf_counter()
                generate_keyframes_fast(cfg, KeyframeSpeed(), base, movie, run, refiner=ref, model_name="random-weight SDXL",
                                        progress=False)
                sync(); seconds = (time.perf_counter() - start) / cfg.limit
            result[label] = dict(seconds_per_frame=round(seconds, 2), frames=cfg.limit,
                                 peak_allocated_gib=gib(torch.cuda.max_memory_allocated()) if args.device == "cuda" else None,
                                 peak_reserved_gib=gib(torch.cuda.max_memory_reserved()) if args.device == "cuda" else None)
        except Exception as error:  # record and go on: the other numbers are still worth having
            result[label] = dict(error=f"{type(error).__name__}: {error}"[:500])
        log(f"(d) {label}: {result[label]}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal on the tiny pipeline")
    parser.add_argument("--out", type=Path, help="result JSON (default: $OUT/keyframe_speed.json or bench/results/)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--inductor-tuning", action="store_true",
                        help="inductor coordinate-descent tuning of Triton kernels, no epilogue fusion (longer compile)")
    parser.add_argument("--ref-warmup", type=int, default=1); parser.add_argument("--ref-frames", type=int, default=4)
    parser.add_argument("--warmup-groups", type=int, default=1); parser.add_argument("--timed-groups", type=int, default=2)
    parser.add_argument("--lowmem-frames", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=480, help="skip sections that would start after this many seconds")
    parser.add_argument("--only", default="a,b,c,d", help="sections to run, e.g. a,b,c")
    parser.add_argument("--c-variants", default="", help=f"run these (c) variants instead of (c), in order: {','.join(C_VARIANTS)}")
    parser.add_argument("--c-timed-frames", type=int, default=16, help="timed frames per (c) variant and repeat (after one warm-up group)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of (a), (b), (c) and each (c) variant, same process, same models")
    args = parser.parse_args()
    args.device = "cpu" if args.tiny else "cuda"
    args.steps, args.refiner_steps = (2, 1) if args.tiny else (30, 10)
    args.resolution, args.guidance = (64 if args.tiny else 1024), 5.0
    if args.tiny: torch.set_num_threads(1)
    if args.inductor_tuning:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True
        inductor_config.coordinate_descent_check_all_directions = True
        inductor_config.epilogue_fusion = False
    variants = [v for v in args.c_variants.split(",") if v]
    unknown = set(variants) - set(C_VARIANTS)
    if unknown: parser.error(f"unknown --c-variants {sorted(unknown)}; choose from {list(C_VARIANTS)}")
    stem = "keyframe_speed_c" if variants else "keyframe_speed"
    out = args.out or (Path(os.environ["OUT"]) / f"{stem}.json" if os.environ.get("OUT") else
                       ROOT / "bench/results" / (f"{stem}_tiny.json" if args.tiny else f"{stem}.json"))
    results = dict(benchmark=stem, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   card=torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}), tiny pipeline",
                   tiny=args.tiny, python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                   diffusers=diffusers.__version__, transformers=transformers.__version__, accelerate=accelerate.__version__,
                   command="python " + " ".join(sys.argv), resolution=args.resolution, guidance=args.guidance,
                   model="random-weight SDXL base + refiner from bench/sdxl-configs (fp16)" if not args.tiny else "tiny_sdxl")
    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    sections = args.only.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="keyframe-speed-"))
    movie = sample_movie(n_substories=4, n_shots=2, n_frames=4)  # 32 frames
    base, refiner = build(args, tmp)
    results["build_s"] = round(elapsed(), 1)
    log("built", {k: results[k] for k in ("card", "torch", "diffusers")})
    save()
    if args.device == "cuda":
        results["cudnn"] = torch.backends.cudnn.version()
        results["sdp_priority_order"] = [str(torch._C._SDPBackend(int(b))) for b in torch._C._get_sdp_priority_order()]
    if variants and "c" in sections:
        sections.remove("c")
        results["c_variants"] = {}
        if args.device == "cuda":
            results["attention_microbench_s_per_frame"] = {f"batch_{b}": attention_bench(args, b)
                                                           for b in sorted({C_VARIANTS[v]["batch_size"] for v in variants})}
            save()
        c_variants(args, base, movie, tmp, variants, results, save)
    plan = [("a", "a_reference", lambda: reference(args, base, refiner, movie, tmp)),
            ("b", "b_ours_refiner", lambda: ours(args, base, refiner, movie, tmp, "b_ours_refiner", refiner_steps=args.refiner_steps)),
            ("c", "c_ours_base_only", lambda: ours(args, base, None, movie, tmp, "c_ours_base_only"))]
    for key, name, run in plan:
        if key not in sections: continue
        if elapsed() > args.deadline: results[name] = dict(skipped=f"deadline {args.deadline}s reached"); continue
        try: results[name] = run()
        except Exception as error:
            import traceback; traceback.print_exc()
            results[name] = dict(error=f"{type(error).__name__}: {error}"[:800])
        save()
    if "d" in sections:
        del base, refiner
        gc.collect()
        if args.device == "cuda": torch.cuda.empty_cache()
        if elapsed() > args.deadline: results["d_low_memory"] = dict(skipped=f"deadline {args.deadline}s reached")
        else: results["d_low_memory"] = low_memory(args, movie, tmp)
        save()
    a, b, c = (results.get(k, {}) for k in ("a_reference", "b_ours_refiner", "c_ours_base_only"))
    if "seconds_per_frame" in a and "seconds_per_frame" in b:
        for key, b_key in (("speedup_b_over_a", "repeats"), ("speedup_b_over_a_wall", "wall_repeats")):
            ratios = [ra / rb for ra, rb in zip(a["repeats"], b[b_key])]   # repeat i of (a) against repeat i of (b)
            results[key] = round(statistics.median(ratios), 2)
            results[key + "_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
    d = results.get("d_low_memory", {})
    measured = {k: v for k, v in results.get("c_variants", {}).items() if "seconds_per_frame" in v}
    if measured:
        results["c_best"] = min(measured, key=lambda k: measured[k]["seconds_per_frame"])
        c = measured[results["c_best"]]
    results["acceptance"] = dict(
        b_at_least_2_5x_a=results.get("speedup_b_over_a", 0) >= 2.5 if "speedup_b_over_a" in results else None,
        c_at_most_1_0_s=c["seconds_per_frame"] <= 1.0 if "seconds_per_frame" in c else None,
        d_at_most_15_gib=max((v.get("peak_reserved_gib") or 99) for v in d.values()) <= 15 if d and all("peak_reserved_gib" in v for v in d.values()) else None)
    results["total_s"] = round(elapsed(), 1)
    save()
    print(json.dumps({k: results[k] for k in ("card", "speedup_b_over_a", "speedup_b_over_a_range", "acceptance", "total_s") if k in results}, indent=1))
    for name in ("a_reference", "b_ours_refiner", "c_ours_base_only"):
        r = results.get(name, {})
        print(f"{name:18s} {r.get('seconds_per_frame', '-')!s:>7} s/frame {r.get('range', '')}  {r.get('frames_per_gpu_hour', '-')!s:>6} frames/h  "
              f"wall {r.get('wall_seconds_per_frame', '-')} {r.get('wall_range', '')}")
    print("d_low_memory", json.dumps(results.get("d_low_memory")))
    for name, r in results.get("c_variants", {}).items():
        print(f"c/{name:14s} {r.get('seconds_per_frame', r.get('skipped', r.get('error', '-')))!s:>7} s/frame  "
              f"wall {r.get('wall_seconds_per_frame', '-')}  vae {r.get('vae_decode_seconds_per_frame', '-')}  "
              f"warm-up {r.get('warmup_s', '-')}s  peak {r.get('peak_allocated_warmup_gib', '-')}/{r.get('peak_allocated_gib', '-')} GiB")


if __name__ == "__main__":
    main()
