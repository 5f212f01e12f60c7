"""eval persona keeps its adapter-free conditions (text_only, untrained_decoder) between decoder
versions: reused for the same base model and inputs, recomputed when anything they depend on
changes, never when it cannot be read."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentqa.cli import main
from latentqa.decoder import ADAPTER_WEIGHTS
from latentqa.evaluation import persona
from latentqa.evaluation.cache import ResultCache, base_fingerprint

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")
ADAPTER_FREE = ["text_only", "untrained_decoder"]


@pytest.fixture(scope="module")
def second_decoder(tiny_decoder, tmp_path_factory):
    """Another version of the tiny decoder: the same target, other adapter weights."""
    out = tmp_path_factory.mktemp("second-decoder") / "decoder"
    shutil.copytree(tiny_decoder, out)
    weights = load_file(out / ADAPTER_WEIGHTS)
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in weights.items()},
              out / ADAPTER_WEIGHTS)
    return out


@pytest.fixture
def scored(monkeypatch):
    """Records, per run, whether each scored group had the adapter on."""
    calls: list[list[bool]] = []
    real = persona.PersonaEval.score_groups

    def spy(self, groups):
        calls.append([on for _, on in groups])
        return real(self, groups)

    monkeypatch.setattr(persona.PersonaEval, "score_groups", spy)
    return calls


def run(decoder, tmp_path, name, *extra) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["eval", "persona", "--data", FIXTURE, "--decoder", str(decoder), "--split",
                 "all", "--choices", "2", "--no-null", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def by_condition(result: dict, condition: str) -> list[list[float]]:
    return [row["scores"] for row in result["scores"] if row["condition"] == condition]


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def test_a_second_decoder_version_reuses_the_adapter_free_conditions(
        tiny_decoder, second_decoder, tmp_path, scored, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = run(tiny_decoder, tmp_path, "first", *cache)
    assert first["cache"]["reused"] == [] and first["cache"]["saved"] == ADAPTER_FREE
    assert sorted(p.name.split("-", 1)[1].rsplit("-", 1)[0]
                  for p in (tmp_path / "cache").glob("persona-*.json")) == ADAPTER_FREE
    n = first["n"]
    assert sorted(scored[0]) == [False] * 2 * n + [True] * 3 * n
    capsys.readouterr()

    second = run(second_decoder, tmp_path, "second", *cache)
    text = capsys.readouterr().out
    assert second["cache"]["reused"] == ADAPTER_FREE and second["cache"]["saved"] == []
    assert scored[1] == [True] * 3 * n  # only the adapter's conditions ran
    for c in ADAPTER_FREE:
        assert by_condition(second, c) == by_condition(first, c)
        assert second["conditions"][c] == first["conditions"][c]
        assert f"{c:<18}" in text and "(from the cache)" in text
    assert "reused text_only, untrained_decoder" in text
    # the records' activations (read with the adapter off) came from the cache too
    assert (first["cache"]["activations"], second["cache"]["activations"]) == ("saved",
                                                                              "reused")
    assert "activations reused" in text
    # the adapters do differ, and the cached numbers are what recomputing gives
    assert by_condition(second, "activations") != by_condition(first, "activations")
    fresh = run(second_decoder, tmp_path, "fresh", "--no-cache")
    assert fresh["cache"] == {"enabled": False}
    assert sorted(scored[2]) == [False] * 2 * n + [True] * 3 * n
    for c in ADAPTER_FREE:
        assert flat(by_condition(fresh, c)) == pytest.approx(flat(by_condition(first, c)),
                                                             abs=1e-5)
    for c in ("activations", "shuffled", "no_activations"):  # read from cached activations
        assert flat(by_condition(fresh, c)) == pytest.approx(flat(by_condition(second, c)),
                                                             abs=1e-5)


def test_no_cache_neither_reads_nor_writes(tiny_decoder, tmp_path, scored):
    cache = tmp_path / "cache"
    run(tiny_decoder, tmp_path, "fill", "--cache-dir", str(cache))
    files = {p: p.read_bytes() for p in cache.iterdir()}
    result = run(tiny_decoder, tmp_path, "again", "--cache-dir", str(cache), "--no-cache")
    assert result["cache"] == {"enabled": False}
    assert False in scored[1]  # the adapter-free conditions ran again
    assert {p: p.read_bytes() for p in cache.iterdir()} == files


@pytest.mark.parametrize("flags", [["--seed", "1"], ["--limit", "1"],
                                   ["--conditions", "text_only,untrained_decoder", "--choices",
                                    "3"]])
def test_a_changed_input_recomputes(tiny_decoder, tmp_path, scored, flags):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    run(tiny_decoder, tmp_path, "first", *cache)
    result = run(tiny_decoder, tmp_path, "second", *cache, *flags)
    assert result["cache"]["reused"] == []
    assert False in scored[1]


class _Reader:
    """What PersonaEval needs of a Reader, with a spec we can change."""

    def __init__(self, reader, **spec):
        import copy

        self.model, self.tokenizer, self.pad_id = reader.model, reader.tokenizer, reader.pad_id
        self.spec = copy.deepcopy(reader.spec)
        for k, v in spec.items():
            setattr(self.spec, k, v)
        self.inner = reader

    def probe(self, count, question, answer=None, layer=None):
        return self.inner.probe(count, question, answer, layer)


@pytest.fixture(scope="module")
def tiny_reader(tiny_decoder):
    from latentqa.reading import load

    return load(str(tiny_decoder))


@pytest.fixture(scope="module")
def fixture_data():
    from latentqa.data import latentqa_files, load_data

    return load_data(latentqa_files([FIXTURE]), system_recovery=False)


def keys(reader, data, items, **extra) -> dict[str, str]:
    ev = persona.PersonaEval(reader)
    return {c: ResultCache.key(ev.cache_key(c, data, items, extra)) for c in ADAPTER_FREE}


def test_the_key_follows_what_each_condition_depends_on(tiny_reader, fixture_data):
    items = persona.build_items(fixture_data, choices=2, seed=0)
    base = keys(_Reader(tiny_reader), fixture_data, items, seed=0)
    assert keys(_Reader(tiny_reader), fixture_data, items, seed=0) == base  # stable
    # the caller's fields (data hashes, seed, limit...) change both
    assert all(a != b for a, b in zip(base.values(), keys(_Reader(tiny_reader), fixture_data,
                                                          items, seed=1).values()))
    # other candidates, or fewer records, change both
    other = [dataclasses.replace(i, candidates=i.candidates[::-1],
                                 correct=len(i.candidates) - 1 - i.correct) for i in items]
    assert all(a != b for a, b in zip(base.values(), keys(_Reader(tiny_reader), fixture_data,
                                                          other, seed=0).values()))
    fewer = keys(_Reader(tiny_reader), fixture_data, items[1:], seed=0)
    assert all(a != b for a, b in zip(base.values(), fewer.values()))
    # where activations are read and written: only untrained_decoder's key
    for change in ({"read_layer": 1}, {"write_layer": 1}, {"injection": "norm_add"},
                   {"layout": "other"}, {"instruction_gain": 4.0},
                   {"read_norm": {"kind": "match", "mean": [[0.0]]}}):
        changed = keys(_Reader(tiny_reader, **change), fixture_data, items, seed=0)
        assert changed["text_only"] == base["text_only"], change
        assert changed["untrained_decoder"] != base["untrained_decoder"], change


def test_the_base_fingerprint_ignores_the_adapter_and_sees_the_target(tiny_reader):
    model = tiny_reader.model
    before = base_fingerprint(model)
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    weight = next(p for n, p in model.named_parameters() if n.endswith("base_layer.weight"))
    with torch.no_grad():
        lora.add_(1.0)
        assert base_fingerprint(model) == before  # another decoder version: same target
        lora.sub_(1.0)
        weight[0, 0] += 1e-3
        assert base_fingerprint(model) != before  # another target
        weight[0, 0] -= 1e-3


@pytest.mark.parametrize("content", ["{not json", json.dumps({"key": "x", "payload": []}),
                                     None])
def test_an_unusable_cache_file_is_ignored_with_a_warning(tiny_decoder, tmp_path, scored,
                                                          capsys, content):
    cache = tmp_path / "cache"
    first = run(tiny_decoder, tmp_path, "first", "--cache-dir", str(cache))
    path = Path(first["cache"]["files"]["text_only"])
    if content is None:  # the right key, scores of the wrong shape
        stored = json.loads(path.read_text())
        stored["payload"] = stored["payload"][:-1]
        content = json.dumps(stored)
    path.write_text(content)
    capsys.readouterr()
    again = run(tiny_decoder, tmp_path, "again", "--cache-dir", str(cache))
    err = capsys.readouterr().err
    assert "warning: ignoring the cache file" in err and str(path) in err
    assert again["cache"]["reused"] == ["untrained_decoder"]
    assert again["cache"]["saved"] == ["text_only"]
    assert flat(by_condition(again, "text_only")) == pytest.approx(
        flat(by_condition(first, "text_only")), abs=1e-5)
    assert json.loads(path.read_text())["payload"] == by_condition(again, "text_only")


def test_unusable_cached_activations_are_read_again_with_a_warning(tiny_decoder, tmp_path,
                                                                   capsys):
    cache = tmp_path / "cache"
    first = run(tiny_decoder, tmp_path, "first", "--cache-dir", str(cache))
    [path] = cache.glob("persona-activations-*.safetensors")
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    capsys.readouterr()
    again = run(tiny_decoder, tmp_path, "again", "--cache-dir", str(cache))
    err = capsys.readouterr().err
    assert "warning: ignoring the cache file" in err and path.name in err
    assert again["cache"]["activations"] == "saved"
    assert flat(by_condition(again, "activations")) == pytest.approx(
        flat(by_condition(first, "activations")), abs=1e-5)
    third = run(tiny_decoder, tmp_path, "third", "--cache-dir", str(cache))
    assert third["cache"]["activations"] == "reused"


def test_amplified_reads_are_not_the_plain_targets(tiny_reader, fixture_data, monkeypatch):
    # the records' activations are cached per target and layer; a decoder given an
    # instruction's effect amplified reads other vectors, so it must not reuse them
    seen = []
    monkeypatch.setattr(ResultCache, "load_tensors",
                        lambda self, name, fields, check=None: seen.append(fields))
    monkeypatch.setattr(ResultCache, "save_tensors", lambda self, *a, **k: None)
    cache = ResultCache(Path("/nonexistent-latentqa-cache"))
    records = sorted({i.record for i in persona.build_items(fixture_data, choices=2, seed=0)})
    for gain in (0.0, 4.0):
        ev = persona.PersonaEval(_Reader(tiny_reader, instruction_gain=gain))
        monkeypatch.setattr(ev, "activations", lambda data, recs: {r: None for r in recs})
        ev.cached_activations(fixture_data, records, cache)
    assert "instruction_gain" not in seen[0] and seen[1]["instruction_gain"] == 4.0
