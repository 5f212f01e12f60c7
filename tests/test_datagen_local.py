"""`latentqa data generate` with the embedded SmolLM2-135M: 5 behaviours, end to end.

Sampling is seeded per field, so the run is deterministic on one machine. A 135M model still
fails some fields within the retry budget; the documented remedy is to run again with another
--seed (finished units are kept), which the test does, a bounded number of times.
"""

from __future__ import annotations

import json

import pytest
import torch

from latentqa.cli import main


@pytest.fixture
def one_thread():
    # The CI box has 2 cores shared with other jobs; one thread avoids oversubscription, which
    # made generation several times slower in measurements.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.heavy
def test_local_backend_writes_a_loadable_dataset(tmp_path, one_thread):
    out = tmp_path / "out"
    args = ["data", "generate", "--out", str(out), "--backend", "local", "--num-behaviours",
            "5", "--qa-pairs", "1", "--max-tokens", "10", "--max-retries", "3", "--no-progress"]
    for seed in range(4):
        rc = main(args + ["--seed", str(seed)])
        if rc == 0:
            break
        assert rc == 1  # some units had no valid output: the rerun retries only those
    assert rc == 0

    behaviours = [json.loads(ln) for ln in (out / "work/behaviours.jsonl").read_text().splitlines()]
    assert len(behaviours) == 5
    assert {b["kind"] for b in behaviours} == {"goal", "persona", "sqa"}
    qa = json.loads((out / "qa.json").read_text())
    assert set(qa) == {b["label"] for b in behaviours}
    non_sqa = [b["label"] for b in behaviours if b["kind"] != "sqa"]
    for name in ("stimulus.json", "stimulus_completion.json", "system.json"):
        assert [r["label"] for r in json.loads((out / name).read_text())] == non_sqa

    from latentqa.data import load_data

    data = load_data(out)  # the data package's own checks
    assert sorted(data.labels) == sorted(qa)
