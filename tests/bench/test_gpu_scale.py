"""benchmarks/gpu_scale.py: the shapes are the published ones, and the tiny run
(what a GPU session runs at full size) produces a complete table on the CPU."""

import json

import pytest
import torch

from captum_jscopes.bench import gpu_scale


@pytest.mark.parametrize("shape, billions", [("llama-3.2-1b", 1.236), ("llama-3-8b", 8.030)])
def test_shapes_have_the_published_parameter_counts(shape, billions):
    # on the meta device: the shapes are checked without allocating 16 GB
    model = gpu_scale.build_model(shape, torch.bfloat16, "meta")
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=1e-3)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training


@pytest.mark.slow  # times every method, repeated
def test_tiny_run_times_every_method_against_the_floor(tmp_path):
    assert gpu_scale.main(["--tiny", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_scale.json").read_text())
    (shape,) = results["shapes"]
    assert shape["shape"] == "tiny" and list(shape["lengths"]) == ["32", "64"]
    for row in shape["lengths"].values():
        assert list(row) == list(gpu_scale.METHODS)
        assert row["floor"]["ratio"] == 1.0
        for entry in row.values():
            assert entry["seconds"] > 0 and entry["peak_mib"] >= 0
            assert entry["ratio"] == pytest.approx(entry["seconds"] / row["floor"]["seconds"])
    assert "--tiny" in results["environment"]["command"]
    table = (tmp_path / "gpu_scale.md").read_text()
    assert all(name in table for name in gpu_scale.METHODS) and "| 64 |" in table
    # the report is rebuilt from the JSON alone
    (tmp_path / "gpu_scale.md").unlink()
    assert gpu_scale.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "gpu_scale.md").read_text() == table


def test_bad_arguments_are_usage_errors(tmp_path):
    for argv in (["--shapes", "gpt-9"], ["--methods", "lime"], ["--lengths", "1"]):
        with pytest.raises(SystemExit) as error:
            gpu_scale.parse_args([*argv, "--device", "cpu", "--out", str(tmp_path)])
        assert error.value.code == 2
