"""Speed of `dreamframe eval` on full-size random-weight models: CLIP ViT-L/14, DINO ViT-B/8, LPIPS-AlexNet.

Builds the three networks from their published architectures (random weights: speed does not depend on the
values), draws N stand-in 1024x1024 frames into a run folder, and times `evaluate_run` on the device in
float32 and float16 (CLIP/DINO; LPIPS stays float32), with frames/s and peak GPU memory, plus the time spent
decoding and resizing images on the CPU. Writes `$OUT/eval_speed.json` (or `bench/results/eval_speed.json`).

    python bench/eval_speed.py                         # on a GPU
    python bench/eval_speed.py --device cpu --frames 8 --size 128 --dtypes float32   # dry run
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

from dreamframe.evaluate import EvalConfig, EvalModels, evaluate_with
from dreamframe.lpips import LPIPS, alexnet_features
from dreamframe.run_folder import write_manifest
from dreamframe.testing import clip_tokenizer
from dreamframe.schema import sample_movie


def full_size_models(device, dtype) -> EvalModels:
    tok = clip_tokenizer()
    clip_l = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                         max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14),
                        projection_dim=768)
    dino_b8 = ViTConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=8)
    with torch.device(device):
        clip, dino = CLIPModel(clip_l).to(dtype).eval(), ViTModel(dino_b8, add_pooling_layer=False).to(dtype).eval()
        lpips = LPIPS(alexnet_features(), name="alex (random)").to(device)
    return EvalModels(clip, tok, dino, lpips, {"clip": "ViT-L/14 random", "dino": "ViT-B/8 random", "lpips": "alex random, uniform"}, torch.device(device), dtype)


def make_run(run_dir: Path, n_frames: int, size: int) -> Path:
    movie = sample_movie(n_substories=max(1, n_frames // 44), n_shots=4, n_frames=11)  # 11 frames a shot, like the method
    movie.save(run_dir)
    (run_dir / "frames").mkdir(parents=True)
    y, x = np.mgrid[0:size, 0:size] / size
    lines = []
    for i, frame in enumerate(movie.frames[:n_frames]):
        rgb = np.stack([np.sin(6 * x + i * 0.3), np.cos(5 * y - i * 0.2), np.sin(3 * (x + y) + i * 0.1)], -1) * 110 + 128
        Image.fromarray(rgb.astype(np.uint8)).save(run_dir / "frames" / f"{frame.id}.png", compress_level=1)
        lines.append({"frame_id": frame.id, "prompt": movie.render_prompt(frame), "path": f"frames/{frame.id}.png"})
    write_manifest(run_dir / "frames", lines)
    return run_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=264)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "card": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "frames": args.frames, "size": args.size, "batch_size": args.batch_size, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = make_run(Path(tmp) / "run", args.frames, args.size)
        result["write_frames_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        for path in sorted((run / "frames").glob("*.png")):
            Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        result["decode_resize_only_s"] = round(time.perf_counter() - t0, 2)
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            models = full_size_models(args.device, dtype)
            cfg = EvalConfig(batch_size=args.batch_size)  # device and dtype: the models above are already there
            if cuda: torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize()
            t0 = time.perf_counter()
            metrics = evaluate_with(cfg, models, run, progress=False)
            if cuda: torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            result["runs"][dtype_name] = {"seconds": round(seconds, 2), "frames_per_s": round(args.frames / seconds, 1),
                                          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                                          "movie": metrics["movie"]}
            print(dtype_name, result["runs"][dtype_name], flush=True)
            del models
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
