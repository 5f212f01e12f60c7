"""Latent Interpretation Tuning: train a decoder on LatentQA data (``latentqa train``)."""

from .config import ConfigError, TrainConfig, build_config
from .loop import train

__all__ = ["ConfigError", "TrainConfig", "build_config", "train"]
