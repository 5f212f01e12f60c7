"""How much of a *held-out* hidden instruction a linear readout finds in the target's activations.

For records of one kind (default ``system``: the user turn under a hidden system prompt), a
ridge regression maps the mean of the read activations (the shipped decoder's read layer, the
instruction masked as for the decoder) to an embedding of the label's first answer (the
target's mean activation over the answer text, same layer). On the held-out labels it picks,
among the same five candidates ``eval persona`` uses, the one closest (cosine) to its
prediction. Controls: another record's activations (shuffled), and a readout trained and
tested on the read turns alone with the instruction removed from the dialog (what the text
gives). The ridge strength is chosen on a fifth of the training labels.

This is a baseline for the decoder's ``eval persona`` accuracy on the same records: does the
decoder say less than a linear map reads? (A probe that names *seen* prompts is easy; a new
prompt's description is what the decoder is asked for.)

Usage: python scripts/linear_readout.py [--kind system] [--layer L] [--data ../shared/data/latentqa]
Prints JSON; about 3 min for ``system`` on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random

import torch

from latentqa.data import load_data
from latentqa.data.records import Record
from latentqa.data.splits import split_by_label, split_labels
from latentqa.evaluation.persona import PersonaEval, build_items
from latentqa.reading import load

FILES = ("system.json", "control.json", "stimulus.json", "stimulus_completion.json", "qa.json")
LAMBDAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def without_instruction(record: Record) -> Record:
    """The read turns alone: the instruction is not in the dialog at all."""
    return Record.from_dialog([record.messages[i] for i in record.read], label=record.label)


class Readout:
    def __init__(self, reader, data):
        self.scorer = PersonaEval(reader, batch_size=16)
        self.data = data  # any LatentQAData: its with_records carries the records to score
        self.embeddings: dict[str, torch.Tensor] = {}

    def pooled(self, records) -> torch.Tensor:
        acts = self.scorer.activations(self.data.with_records(records, {}),
                                       list(range(len(records))))
        return torch.stack([acts[i].float().mean(0) for i in range(len(records))])

    def embed(self, texts) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.embeddings]
        if new:
            records = [Record.from_dialog([{"role": "user", "content": t}], read=[0],
                                          generation_prompt=False) for t in new]
            self.embeddings.update(zip(new, self.pooled(records)))
        return torch.stack([self.embeddings[t] for t in texts])

    def accuracy(self, model, features, items) -> float:
        predict, centre = model
        hits = 0
        for p, item in zip(predict(features), items):
            candidates = self.embed(item.candidates) - centre
            sims = torch.nn.functional.cosine_similarity(candidates, p[None], dim=1)
            hits += int(sims.argmax()) == item.correct
        return hits / len(items)


def fit_ridge(x, y, lam):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    centre = y.mean(0)
    w = torch.linalg.solve(xs.T @ xs + lam * torch.eye(x.shape[1]), xs.T @ (y - centre))
    return (lambda z: (z - mu) / sd @ w), centre


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="system")
    ap.add_argument("--data", default="../shared/data/latentqa")
    ap.add_argument("--decoder", help="whose read layer to use (default: the shipped decoder)")
    ap.add_argument("--layer", type=int, help="read after this block instead")
    args = ap.parse_args()

    data = load_data([f"{args.data}/{f}" for f in FILES], system_recovery=False)
    readout = Readout(load(args.decoder, batch_size=16), data)
    if args.layer is not None:
        readout.scorer.spec = dataclasses.replace(readout.scorer.spec, read_layer=args.layer)
    train, test = split_by_label(data, 0.1, 0)  # the shipped decoder's held-out labels
    first = {label: pairs[0][1] for label, pairs in data.qa.items() if pairs}

    def items_of(subset):
        return [i for i in build_items(subset, choices=5, seed=0) if i.kind == args.kind]

    # fit on four fifths of the training labels, choose the ridge strength on the rest
    records = [r for r in train.records if r.kind == args.kind and r.label in first]
    fit_labels, val_labels = map(set, split_labels({r.label for r in records}, 0.2, 1))
    val = train.subset(val_labels)
    val_items, test_items = items_of(val), items_of(test)
    fit_rows = [k for k, r in enumerate(records) if r.label in fit_labels]
    row_of = {id(r): k for k, r in enumerate(records)}  # val records are training records
    val_rows = [row_of[id(val.records[i.record])] for i in val_items]
    rng = random.Random(7)
    donors = []
    for item in test_items:
        d = rng.randrange(len(test_items))
        while test_items[d].label == item.label:
            d = rng.randrange(len(test_items))
        donors.append(d)

    out = {"kind": args.kind, "layer": readout.scorer.spec.read_layer,
           "train_records": len(records), "test_records": len(test_items)}
    y = readout.embed([first[r.label] for r in records])
    for name, view in (("activations", lambda r: r), ("without_instruction", without_instruction)):
        x = readout.pooled([view(r) for r in records])
        scores = {lam: readout.accuracy(fit_ridge(x[fit_rows], y[fit_rows], lam), x[val_rows],
                                        val_items)
                  for lam in LAMBDAS}
        lam = max(LAMBDAS, key=scores.__getitem__)
        model = fit_ridge(x, y, lam)
        x_test = readout.pooled([view(test.records[i.record]) for i in test_items])
        out[name] = {"lambda": lam, "validation_accuracy": scores[lam],
                     "test_accuracy": readout.accuracy(model, x_test, test_items)}
        if name == "activations":
            out["shuffled"] = {"test_accuracy": readout.accuracy(model, x_test[donors],
                                                                  test_items)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
