"""Evaluations that come with their controls."""

from .heldout import CONDITIONS, heldout_losses

__all__ = ["CONDITIONS", "heldout_losses"]
