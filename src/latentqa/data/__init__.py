"""LatentQA data: loading and checking files, masking, the decoder's probe, batches.

See docs/data.md for the file formats and the choices made.
"""

from .collate import Collator, baseline_of
from .errors import DataError, Problem
from .examples import (
    Example,
    LatentQADataset,
    LatentQARows,
    Row,
    TargetInput,
    build_example,
    render_target,
)
from .layouts import AO_LAYOUT, LAYOUTS, PAPER_LAYOUT, ProbeLayout
from .loading import (
    LATENTQA_FILES,
    LatentQAData,
    latentqa_files,
    load_data,
    pair_up,
    read_data,
    validate,
)
from .plain import PLAIN_LABEL, PLAIN_QA, add_plain_dialogs
from .probe import IGNORE_INDEX, Probe, ProbeBuilder, build_probe, placeholder_token_id
from .records import (
    KIND_READ,
    KINDS,
    SYSTEM_RECOVERY_QUESTION,
    Pair,
    Record,
    label_family,
)
from .sampler import LengthGroupedBatchSampler
from .splits import drop_held_out_overlap, is_held_out, split_by_label, split_labels
from .stats import compute_stats
from .swaps import SWAP_SOURCE, add_system_swaps, balanced_swaps
from .system_prompts import (
    RECOVERY_QUESTIONS,
    SYSTEM_PROMPT_SOURCE,
    SYSTEM_PROMPT_SWAP_SOURCE,
    add_system_prompt_records,
    describe_prompt,
    recovery_answer,
)
from .triples import (
    EVALUATED_RELATIONS,
    Triples,
    add_relation_records,
    load_triples,
    question_for,
    read_triples,
)

__all__ = [
    "LATENTQA_FILES", "latentqa_files",
    "Collator", "baseline_of", "DataError", "Problem",
    "Example", "LatentQADataset", "LatentQARows", "Row", "TargetInput", "build_example", "render_target",
    "AO_LAYOUT", "LAYOUTS", "PAPER_LAYOUT", "ProbeLayout",
    "PLAIN_LABEL", "PLAIN_QA", "add_plain_dialogs", "SWAP_SOURCE", "add_system_swaps",
    "LatentQAData", "load_data", "pair_up", "read_data", "validate",
    "IGNORE_INDEX", "Probe", "ProbeBuilder", "build_probe", "placeholder_token_id",
    "KIND_READ", "KINDS", "SYSTEM_RECOVERY_QUESTION", "Pair", "Record", "label_family",
    "LengthGroupedBatchSampler", "is_held_out", "split_by_label", "split_labels",
    "drop_held_out_overlap", "balanced_swaps", "RECOVERY_QUESTIONS", "SYSTEM_PROMPT_SOURCE",
    "SYSTEM_PROMPT_SWAP_SOURCE", "add_system_prompt_records", "describe_prompt",
    "recovery_answer",
    "compute_stats",
    "EVALUATED_RELATIONS", "Triples", "add_relation_records", "load_triples", "question_for",
    "read_triples",
]
