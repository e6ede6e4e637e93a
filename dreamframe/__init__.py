"""Synthetic, style-consistent movie keyframes and QA for training video-understanding models

Modules:

- `dreamframe.models`: `load_sdxl` reads Stable Diffusion XL from the hub or a local folder; `tiny_sdxl` builds a pocket-sized pipeline with the same architecture that runs on a laptop CPU in about a second; `load_style` puts a learned style embedding into both text encoders."""

__version__ = "0.1.0"
