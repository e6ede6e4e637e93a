"""Synthetic, style-consistent movie keyframes and QA for training video-understanding models"""

__version__ = "0.1.0"
