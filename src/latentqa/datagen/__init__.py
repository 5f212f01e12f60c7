"""``latentqa data generate``: write LatentQA datasets with a generator LLM.

Behaviours (goals, personas, extractive scenarios) -> a 4-turn dialog per behaviour -> QA pairs
that never name the behaviour -> the LatentQA files. See docs/datagen.md.
"""

from .backends import ChatBackend, LocalBackend, OpenAIBackend
from .errors import BackendError, DatagenError
from .pipeline import GenerateConfig, Summary, generate, qa_for

__all__ = ["ChatBackend", "LocalBackend", "OpenAIBackend", "BackendError", "DatagenError",
           "GenerateConfig", "Summary", "generate", "qa_for"]
