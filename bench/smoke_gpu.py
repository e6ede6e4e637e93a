"""GPU smoke test: full-size random-weight SDXL from the published configs, fp16 on CUDA.

Prints versions and the card, the build time, one 1024x1024 4-step image (seconds, peak memory), one
1-frame UNet forward+backward at 768x768 (autograd through the UNet into the text-embedding rows, as
textual inversion needs), and a tiny_sdxl -> load_sdxl(low_memory=True) round trip. Writes
`$OUT/smoke_gpu.json` (or `bench/results/smoke_gpu.json` when OUT is unset).

    python bench/smoke_gpu.py                       # on a GPU
    python bench/smoke_gpu.py --device cpu --dtype float32 --config-dir SMALL --size 64 --train-size 64  # dry run
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

import torch
import diffusers, transformers, huggingface_hub
from dreamframe.models import load_sdxl, sdxl_from_configs
from dreamframe.embedding import load_style, save_style_embedding
from dreamframe.testing import tiny_sdxl


def gib(n_bytes): return round(n_bytes / 2**30, 2)

def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def timed(fn):
    sync(); t0 = time.perf_counter(); out = fn(); sync()
    return out, round(time.perf_counter() - t0, 3)

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--config-dir", default=str(ROOT / "bench/sdxl-configs"))
    parser.add_argument("--size", type=int, default=1024, help="generated image side")
    parser.add_argument("--train-size", type=int, default=768, help="training image side")
    args = parser.parse_args()
    device, dtype, size, train = args.device, getattr(torch, args.dtype), args.size, args.train_size
    cuda = device.startswith("cuda")
    results = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), python=platform.python_version(),
                   torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers.__version__,
                   transformers=transformers.__version__, huggingface_hub=huggingface_hub.__version__,
                   card=torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu")
    print(results, flush=True)

    pipe, results["build_s"] = timed(lambda: sdxl_from_configs(args.config_dir, dtype=dtype, device=device))
    pipe.set_progress_bar_config(disable=True)
    results["unet_params_b"] = round(sum(p.numel() for p in pipe.unet.parameters()) / 1e9, 3)
    results["memory_after_build_gib"] = gib(torch.cuda.memory_allocated()) if cuda else None
    print("built", results, flush=True)

    def generate(steps):
        return pipe("an image in cinematic style: a man is standing in a garden", num_inference_steps=steps,
                    height=size, width=size, guidance_scale=5.0, generator=torch.Generator(device).manual_seed(0)).images[0]
    _, results["warmup_1step_s"] = timed(lambda: generate(1))
    if cuda: torch.cuda.reset_peak_memory_stats()
    image, results[f"generate_{size}_4steps_s"] = timed(lambda: generate(4))
    results["generate_peak_gib"] = gib(torch.cuda.max_memory_allocated()) if cuda else None
    results["image_size"] = list(image.size)
    print("generated", results, flush=True)

    # textual inversion's gradient path: embedding rows -> both text encoders -> UNet -> noise MSE
    style_file = Path(tempfile.mkdtemp()) / "embedding.safetensors"
    save_style_embedding(style_file, "<smoke-style>", torch.randn(1, pipe.text_encoder.config.hidden_size) * 0.01,
                         torch.randn(1, pipe.text_encoder_2.config.hidden_size) * 0.01)
    token = load_style(pipe, style_file)
    pipe.unet.requires_grad_(False); pipe.vae.requires_grad_(False)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.requires_grad_(False); encoder.get_input_embeddings().weight.requires_grad_(True)
    if cuda: torch.cuda.reset_peak_memory_stats()
    def train_step():
        prompt_embeds, _, pooled, _ = pipe.encode_prompt(f"an image in {token} style", device=device,
                                                          do_classifier_free_guidance=False)
        latents = torch.randn(1, 4, train // 8, train // 8, device=device, dtype=dtype)
        time_ids = torch.tensor([[train, train, 0, 0, train, train]], device=device, dtype=dtype)
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            prediction = pipe.unet(latents, torch.tensor([500], device=device), encoder_hidden_states=prompt_embeds,
                                   added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), torch.randn_like(prediction, dtype=torch.float32))
        loss.backward()
        return loss
    _, results[f"train_step_{train}_warmup_s"] = timed(train_step)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2): encoder.get_input_embeddings().weight.grad = None
    loss, results[f"train_step_{train}_s"] = timed(train_step)
    results[f"train_step_{train}_peak_gib"] = gib(torch.cuda.max_memory_allocated()) if cuda else None
    ids = [pipe.tokenizer.convert_tokens_to_ids(token), pipe.tokenizer_2.convert_tokens_to_ids(token)]
    grads = [e.get_input_embeddings().weight.grad for e in (pipe.text_encoder, pipe.text_encoder_2)]
    results["style_row_grad_norms"] = [float(g[i].float().norm()) for g, i in zip(grads, ids)]
    results["loss"] = float(loss.detach())
    print("trained", results, flush=True)
    del pipe, grads
    if cuda: torch.cuda.empty_cache()

    # the user-facing loader on CUDA: fp16, and low_memory (model CPU offload + VAE tiling)
    folder = tiny_sdxl(Path(tempfile.mkdtemp()) / "tiny")
    for low_memory in ((False, True) if cuda else (False,)):
        small = load_sdxl(folder, dtype=dtype, device=device, low_memory=low_memory)
        small.set_progress_bar_config(disable=True)
        img = small("a man", num_inference_steps=2, height=64, width=64).images[0]
        results[f"tiny_load_sdxl_{device}_low_memory_{low_memory}"] = list(img.size)
    print("loaders", results, flush=True)

    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "smoke_gpu.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
