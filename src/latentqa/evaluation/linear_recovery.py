"""A linear reference for recovery: what a linear map of the same read vectors recovers.

The critique of activation decoders (Li et al. 2025) asks for a linear-probe reference beside
every reading result: if a linear map of the activations recovers what the decoder does not,
the information is there and the decoder fails to read it. For system-prompt recovery the
reference is a ridge regression (scikit-learn's ``RidgeCV`` on standardised features) from a
dialog's read vectors (the mean and the last, the prompt masked: the decoder's read span) to the
prompt's own representation (the mean read vector of the prompt given to the target as a user
turn). It is fitted on prompts with user turns that the evaluation does not use, and each item's
candidate prompts are ranked by cosine (about the fitted representations' mean) to the map's
prediction, on the same items and shuffled donors as the decoder's ranking. Conditions:

  activations  the record's own read vectors
  shuffled     the donor record's read vectors, through the same map
  text_only    a map fitted and applied on the user turn alone (no system prompt): what the
               visible text tells
  filler       the record with its prompt replaced by neutral text of as many tokens, through
               the real map: what the prompt's length alone tells

Everything is read through the ``Reader``'s public ``activations``, at the decoder's read layer
(several read together: their vectors side by side).
"""

from __future__ import annotations

import numpy as np

from ..decoding import split_layers
from ..stats import mcnemar_exact, summarize

CONDITIONS = ("activations", "shuffled", "text_only", "filler")
ALPHAS = tuple(float(a) for a in np.logspace(0, 5, 11))
RANKED_BY = ("cosine to a ridge map of the read vectors (mean and last) into the prompt's own "
             "representation (its mean read vector as a user turn)")
FILLER = ("The train left the station a little after nine and moved slowly past the fields, "
          "the river and the low grey houses at the edge of the town. ") * 20


def filler(tokenizer, text: str) -> str:
    """Neutral text with as many tokens as ``text``."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return tokenizer.decode(tokenizer(FILLER, add_special_tokens=False)["input_ids"][:n])


def read_features(reader, dialogs) -> np.ndarray:
    """[n, 2 x layers x H]: per dialog, the mean and the last read vector of each layer read."""
    rows = []
    for v in reader.activations(dialogs):
        parts = split_layers(v.float(), reader.groups)
        rows.append(np.concatenate([np.concatenate([p.mean(0).numpy(), p[-1].numpy()])
                                    for p in parts]))
    return np.stack(rows)


def representations(reader, texts) -> np.ndarray:
    """[n, layers x H]: each text's mean read vector, given to the target as a user turn."""
    feats = read_features(reader, [[{"role": "user", "content": t}] for t in texts])
    h = feats.shape[1] // (2 * reader.groups)
    return np.concatenate([feats[:, 2 * h * g: 2 * h * g + h] for g in range(reader.groups)],
                          axis=1)


def fit_map(x: np.ndarray, y: np.ndarray):
    """The ridge map from read features to representations (ridge strength by leave-one-out)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x, y)


def ranked_first(predicted: np.ndarray, candidates: list[np.ndarray], correct: list[int],
                 centre: np.ndarray) -> list[bool]:
    """Per item, whether the true candidate is the nearest (cosine about ``centre``) to the
    predicted representation."""
    hits = []
    for p, cands, c in zip(predicted, candidates, correct):
        p, cands = p - centre, cands - centre
        cos = cands @ p / (np.linalg.norm(cands, axis=1) * np.linalg.norm(p) + 1e-12)
        hits.append(int(np.argmax(cos)) == c)
    return hits


def visible(record) -> list[dict]:
    """A record's dialog without its system prompt."""
    return [m for m in record.messages if m["role"] != "system"]


def linear_reference(reader, data, items, donor: list[int], prompts) -> dict:
    """The reference on recovery ``items`` of ``data`` (``recovery.build_items``), with the
    decoder ranking's ``donor`` records, the map fitted on ``prompts`` (records with a hidden
    system prompt, ``data.system_prompts.read_prompts``; those whose prompt is one of the
    items' candidates are left out)."""
    used = {c for i in items for c in i.candidates}
    fit = [r for r in prompts if r.hidden_system_prompt not in used]
    if len(fit) < 10:
        raise ValueError(f"the linear reference needs at least 10 prompts outside the evaluated "
                         f"ones to fit its map, got {len(fit)}")
    y = representations(reader, [r.hidden_system_prompt for r in fit])
    real = fit_map(read_features(reader, [list(r.messages) for r in fit]), y)
    text = fit_map(read_features(reader, [visible(r) for r in fit]), y)
    records = [data.records[i.record] for i in items]
    tok = reader.tokenizer
    reads = {
        "activations": read_features(reader, [list(r.messages) for r in records]),
        "shuffled": read_features(reader, [list(data.records[d].messages) for d in donor]),
        "text_only": read_features(reader, [visible(r) for r in records]),
        "filler": read_features(reader, [[{**m, "content": filler(tok, m["content"])}
                                          if m["role"] == "system" else m for m in r.messages]
                                         for r in records])}
    texts = sorted(used)
    where = {t: k for k, t in enumerate(texts)}
    reps = representations(reader, texts)
    candidates = [reps[[where[c] for c in i.candidates]] for i in items]
    correct = [i.correct for i in items]
    centre = y.mean(0)
    hits = {c: ranked_first((text if c == "text_only" else real).predict(reads[c]),
                            candidates, correct, centre) for c in CONDITIONS}
    return {"ranked_by": RANKED_BY, "fitted_on": len(fit), "left_out": len(prompts) - len(fit),
            "conditions": {c: summarize(h) for c, h in hits.items()},
            "mcnemar_p_vs_activations": {c: mcnemar_exact(hits["activations"], h)
                                         for c, h in hits.items() if c != "activations"},
            "top1": [{c: hits[c][k] for c in CONDITIONS} for k in range(len(items))]}
