"""Keyframe scaling: the same movie slice rendered by `accelerate launch --num_processes N` for several N.

For each N a fresh run folder gets the first `--frames` frames of a 1,331-frame movie (11 x 11 x 11). Each process
renders every N-th pending group (`generate_keyframes`' own split, through `generate_keyframes_fast`) after one
warm-up group per process in a separate
folder (compile and cuDNN set-up stay out of the timing). Recorded per N: generation seconds (barrier to barrier,
model build excluded), frames per hour, scaling efficiency = throughput(N) / (N x throughput(1)), and whether every
frame's PNG is byte-identical to the N=1 run (else the largest pixel difference).

    python bench/keyframe_scaling.py --tiny --nprocs 1,2          # CPU processes (torchrun, gloo), tiny pipeline: a rehearsal
    python bench/keyframe_scaling.py --nprocs 1,2,4,8 --frames 64  # GPUs: full-size random-weight SDXL, 1024², 30 steps
Writes $OUT/keyframe_scaling.json (or bench/results/keyframe_scaling.json).
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/dreamframe-inductor")
for name in ("NCCL_NVLS_ENABLE", "NVSHMEM_DISABLE_NVLS"): os.environ.setdefault(name, "0" if name == "NCCL_NVLS_ENABLE" else "1")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")  # keep NVLink multicast off (device README)


def movie_1331():
    from dreamframe.schema import sample_movie
    return sample_movie(n_substories=11, n_shots=11, n_frames=11)


def worker(args):
    "One process of `accelerate launch`: build the model, warm up, render the slice, report timing (main process)."
    import dataclasses
    import warnings
    import torch
    from accelerate import PartialState
    from dreamframe import models
    from dreamframe.keyframes import KeyframeConfig
    from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast
    state = PartialState(cpu=args.tiny)
    if args.tiny:
        torch.set_num_threads(1)
        device, dtype = "cpu", torch.float32
        pipe = models.load_sdxl(args.model, dtype=dtype, device=device)
    else:
        device, dtype = f"cuda:{state.local_process_index}", torch.float16
        torch.cuda.set_device(device)
        pipe = models.sdxl_from_configs(ROOT / "bench/sdxl-configs", dtype=dtype, device=device, seed=0)
    movie = movie_1331()
    cfg = KeyframeConfig(steps=args.steps, resolution=args.resolution, batch_size=args.batch_size)
    speed = KeyframeSpeed(compile=args.compile)
    model_name = "tiny_sdxl" if args.tiny else "random-weight SDXL from bench/sdxl-configs"
    def draw(limit, run):
        generate_keyframes_fast(dataclasses.replace(cfg, limit=limit), speed, pipe, movie, run, model_name=model_name, progress=False)
    warm, run = Path(args.run_folder).with_name(Path(args.run_folder).name + "-warmup"), Path(args.run_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if state.is_main_process: movie.save(warm)
        state.wait_for_everyone()
        # warm-up: one group per process, in its own folder
        draw(args.batch_size * state.num_processes, warm)
        state.wait_for_everyone()
        if not args.tiny: torch.cuda.synchronize()
        start = time.perf_counter()
        draw(args.frames, run)
        if not args.tiny: torch.cuda.synchronize()
        state.wait_for_everyone()
        seconds = time.perf_counter() - start
    if state.is_main_process:
        Path(args.timing_file).write_text(json.dumps(dict(seconds=seconds, processes=state.num_processes,
                                                     device=torch.cuda.get_device_name(0) if not args.tiny else "cpu")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(run_a: Path, run_b: Path) -> dict:
    import numpy as np
    from PIL import Image
    names = sorted(p.name for p in (run_a / "frames").glob("*.png"))
    other = sorted(p.name for p in (run_b / "frames").glob("*.png"))
    same = [n for n in names if n in other and (run_a / "frames" / n).read_bytes() == (run_b / "frames" / n).read_bytes()]
    max_diff = 0
    for n in set(names) & set(other) - set(same):
        a = np.asarray(Image.open(run_a / "frames" / n), dtype=np.int16)
        b = np.asarray(Image.open(run_b / "frames" / n), dtype=np.int16)
        max_diff = max(max_diff, int(np.abs(a - b).max()))
    return dict(frames=len(names), frames_other=len(other), byte_identical=len(same) == len(names) == len(other),
                identical_frames=len(same), max_pixel_diff=max_diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU processes on the tiny pipeline (64 px, 2 steps)")
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--frames", type=int, default=None, help="first N frames of the 1,331 (default 16 tiny, 32 GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 2 tiny, 8 GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timeout", type=float, default=500, help="seconds allowed per N")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-folder", help=argparse.SUPPRESS); parser.add_argument("--timing-file", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS); parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.frames = args.frames or (16 if args.tiny else 32)
    args.batch_size = args.batch_size or (2 if args.tiny else 8)
    args.steps = args.steps or (2 if args.tiny else 30)
    args.resolution = args.resolution or (64 if args.tiny else 1024)
    if args.worker: return worker(args)

    import accelerate, diffusers, torch
    tmp = Path(tempfile.mkdtemp(prefix="keyframe-scaling-"))
    model = str(__import__("dreamframe.testing", fromlist=["tiny_sdxl"]).tiny_sdxl(tmp / "tiny")) if args.tiny else "random"
    out = args.out or (Path(os.environ["OUT"]) / "keyframe_scaling.json" if os.environ.get("OUT") else ROOT / "bench/results/keyframe_scaling.json")
    results = dict(benchmark="keyframe_scaling", date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   mode="CPU processes, tiny pipeline (gloo) — a rehearsal, NOT the GPU acceptance" if args.tiny else
                        "GPUs, full-size random-weight SDXL base (fp16)",
                   command="python " + " ".join(sys.argv), python=platform.python_version(), torch=torch.__version__,
                   diffusers=diffusers.__version__, accelerate=accelerate.__version__, frames=args.frames,
                   batch_size=args.batch_size, steps=args.steps, resolution=args.resolution, guidance=5.0,
                   compile=args.compile, runs={})
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    if args.tiny: env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for n in [int(x) for x in args.nprocs.split(",")]:
        run, timing = tmp / f"n{n}", tmp / f"n{n}.json"
        # CPU processes start with torchrun (`accelerate launch --cpu` starts one process unless MPI is set up)
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(free_port())]
                    if args.tiny else
                    [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                     *(["--multi_gpu"] if n > 1 else [])])
        command = [*launcher, str(Path(__file__).resolve()), "--worker", "--run-folder", str(run), "--timing-file", str(timing), "--model", model,
                   "--frames", str(args.frames), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--resolution", str(args.resolution), *(["--tiny"] if args.tiny else []), *(["--compile"] if args.compile else [])]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            failed = done.returncode != 0 and done.stderr[-2000:]
        except subprocess.TimeoutExpired:
            failed = f"timed out after {args.timeout}s"
        record = dict(processes=n, launch_wall_s=round(time.perf_counter() - start, 1))
        if failed:
            record["error"] = failed
        else:
            seconds = json.loads(timing.read_text())["seconds"]
            record.update(generation_s=round(seconds, 3), frames_per_hour=round(args.frames / seconds * 3600))
            if "1" in results["runs"]:
                one = results["runs"]["1"]
                record["efficiency"] = round(record["frames_per_hour"] / (n * one["frames_per_hour"]), 3)
                record["vs_1_process"] = compare(tmp / "n1", run)
            record["device"] = json.loads(timing.read_text())["device"]
            record["processes_seen"] = json.loads(timing.read_text())["processes"]  # what the workers saw: N, not 1
        results["runs"][str(n)] = record
        print(json.dumps(record), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
