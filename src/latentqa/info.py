"""What a user needs to know about a model before reading it: blocks, sizes, template spans."""

from __future__ import annotations

from .arch import model_info
from .chat import SCAFFOLD, ChatTemplateError, render_dialog


def token_spans(rendered, tokenizer) -> list[dict]:
    """Runs of consecutive tokens with the same owner (a message, or template scaffolding)."""
    spans, start = [], 0
    owners = rendered.message_index
    for i in range(1, len(owners) + 1):
        if i == len(owners) or owners[i] != owners[start]:
            m = owners[start]
            owner = ("template scaffolding" if m == SCAFFOLD
                     else f"message {m} ({rendered.messages[m]['role']})")
            spans.append({"start": start, "end": i, "owner": owner, "message": m,
                          "text": tokenizer.decode(rendered.input_ids[start:i])})
            start = i
    return spans


def describe_model(loaded, dialog) -> dict:
    info = model_info(loaded.model)
    tok = loaded.tokenizer
    report = {
        "spec": loaded.spec,
        "source": loaded.source,
        "architecture": info.architecture,
        "model_type": info.model_type,
        "num_blocks": info.num_blocks,
        "hidden_size": info.hidden_size,
        "max_positions": info.max_positions,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "chat_template": bool(getattr(tok, "chat_template", None)),
        "sample": None,
    }
    try:
        rendered = render_dialog(tok, dialog)
    except ChatTemplateError as e:
        report["sample_error"] = str(e)
        return report
    report["sample"] = {
        "messages": dialog,
        "num_tokens": len(rendered),
        "spans": token_spans(rendered, tok),
        "notes": rendered.notes,
    }
    return report
