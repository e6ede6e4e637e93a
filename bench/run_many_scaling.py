"""`dreamframe run-many --executor ray` on 1 and on 2 GPUs: movies per hour and the scaling efficiency.

Four movies, each the same short story (scripted LLM, `--substories 3 --shots 2 --frames 4`: 24 keyframes), rendered
base-only at 1024², 30 steps, batch 8, fp16 with a full-size random-weight SDXL saved once to a local folder (the
cost of a step does not depend on the weights). For N in 1, 2: Ray starts on this machine seeing N GPUs, and
`run_many.run_ray` runs one task per movie asking for one GPU each, in a fresh output folder. Wall time runs from
the first task submitted to the last one done (Ray's own start-up is reported apart). efficiency = throughput(2) /
(2 x throughput(1)). Writes results/run_many_scaling.json. `--tiny` is a CPU dry run of the same code.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THEMES = ["a lighthouse keeper finds a message in a bottle", "a heist in a floating city",
          "two rival bakers share one oven", "a robot learns to paint the sea"]


def save_random_sdxl(folder: Path) -> Path:
    "Full-size random-weight SDXL base in diffusers layout (built on the GPU, saved as fp16 safetensors)."
    import torch
    from dreamframe.models import sdxl_from_configs
    pipe = sdxl_from_configs(ROOT / "bench" / "sdxl-configs", dtype=torch.float16, device="cuda")
    pipe.save_pretrained(folder)
    del pipe; torch.cuda.empty_cache()
    return folder


def one_scale(n_gpus: int, model: str, out: Path, given: dict, tiny: bool) -> dict:
    import ray
    from dreamframe.run_many import RunManyConfig, movie_folders, run_ray
    started = time.perf_counter()
    ray.init(num_gpus=n_gpus if not tiny else 0, num_cpus=max(2, 4 * n_gpus) if not tiny else 2, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TQDM_", "NCCL_", "TORCH_", "NVSHMEM_"))}})
    ray_start_s = time.perf_counter() - started
    folders = movie_folders(THEMES, out)
    cfg = RunManyConfig(executor="ray", gpus_per_movie=0 if tiny else 1, refresh_s=30)
    started = time.perf_counter()
    results = run_ray(folders, given, "demo", False, cfg, stages=["story", "keyframes"])
    wall = time.perf_counter() - started
    ray.shutdown()
    frames = sum(len((f / "frames" / "manifest.jsonl").read_text().splitlines()) for f in folders.values())
    return {"gpus": n_gpus, "movies": len(folders), "complete": sum(r == "complete" for r in results.values()),
            "frames": frames, "wall_s": round(wall, 1), "ray_start_s": round(ray_start_s, 1),
            "movies_per_hour": round(len(folders) / wall * 3600, 1), "frames_per_hour": round(frames / wall * 3600),
            "results": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU dry run on the tiny model")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "run_many_scaling.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp())
    if args.tiny:
        model, resolution, steps, batch = "tiny", 64, 2, 8
    else:
        started = time.perf_counter()
        model = str(save_random_sdxl(work / "sdxl-random"))
        print(f"saved random-weight SDXL in {time.perf_counter() - started:.0f}s", flush=True)
        resolution, steps, batch = 1024, 30, 8
    given = {"models": {"model": model, "dtype": "float32" if args.tiny else "float16"},
             "keyframes": {"resolution": resolution, "steps": steps, "batch_size": batch, "negative_prompt": "blurry, low quality", "identity": "none"}}
    import ray, torch
    result = {"benchmark": "run_many_scaling", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "gpus_visible": torch.cuda.device_count(),
              "torch": torch.__version__, "ray": ray.__version__, "command": "python bench/run_many_scaling.py " + " ".join(sys.argv[1:]),
              "story": "scripted LLM, 3 substories x 2 shots x 4 frames = 24 keyframes per movie", "resolution": resolution,
              "steps": steps, "batch_size": batch, "stages": "story, keyframes (base only)", "model": "full-size random-weight SDXL base, fp16" if not args.tiny else "tiny"}
    runs = [one_scale(n, model, work / f"out-{n}", given, args.tiny) for n in (1, 2)]
    for run in runs: print({k: v for k, v in run.items() if k != "results"}, flush=True)
    result["runs"] = runs
    result["efficiency"] = round(runs[1]["frames_per_hour"] / (2 * runs[0]["frames_per_hour"]), 3)
    result["note"] = "efficiency = throughput(2 GPUs) / (2 x throughput(1 GPU)); each movie is one Ray task holding one GPU"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("efficiency", result["efficiency"], "wrote", args.out, flush=True)


if __name__ == "__main__":
    main()
