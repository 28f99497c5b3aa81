"""The speed benchmark end to end on a tiny model (timings are not asserted:
speed is measured by the benchmark itself, never in unit tests)."""

from __future__ import annotations

import json

import pytest
from helpers import make_model, make_tokenizer

from captum_jscopes.bench import speed as bench_speed
from captum_jscopes.bench.fisher_study import FISHER_DIR


@pytest.fixture
def tiny_model_dir(tmp_path):
    folder = tmp_path / "tiny"
    model = make_model("llama")
    model.config.max_position_embeddings = 512
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def prompts_file(tmp_path):
    texts = ["the cat sat on the mat and the dog ran to the red house", "Tom liked the food . he went home to Paris"]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"text": t} for t in texts]))
    return path


def test_speed_benchmark_writes_every_table(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    code = bench_speed.main(
        ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "2", "--n-slow", "1",
         "--repeats", "1", "--lengths", "16,32", "--multi-token", "3", "--fisher-n", "2", "--skip-memory",
         "--out", str(out)]
    )
    assert code == 0
    results = json.loads((out / "speed.json").read_text())
    assert set(results["single_token"]) == set(bench_speed.SINGLE_TOKEN_METHODS)
    for row in results["single_token"].values():
        assert row["seconds"] > 0 and row["peak_extra_mib"] is None
    assert set(results["lengths"]["semantic"]) == {"16", "32"}
    assert results["multi_token"]["ours_semantic"] > 0
    accuracy = results["fisher_accuracy"]
    # the tiny model's hidden size (16) is <= the default's k: the default is exact there
    assert accuracy["fisher"]["median_rel_l2"] < 1e-5
    assert accuracy["fisher_eig1"]["median_rel_l2"] > accuracy["fisher_eig4"]["median_rel_l2"]
    table = (out / "speed.md").read_text()
    assert "| semantic |" in table and "x floor" in table
    assert (out / "speed.png").stat().st_size > 0 and (out / "fisher_accuracy.png").stat().st_size > 0


@pytest.mark.slow  # one process per method
def test_peak_memory_is_measured_in_a_fresh_process_per_method(tiny_model_dir, prompts_file, tmp_path):
    # one fresh interpreter per method is what makes the CPU numbers honest, and what makes it slow: two methods
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "1", "--n-slow", "1", "--repeats", "1",
            "--methods", "floor,semantic", "--lengths", "", "--multi-token", "0", "--out", str(out)]
    assert bench_speed.main(argv) == 0
    rows = json.loads((out / "speed.json").read_text())["single_token"]
    assert all(row["peak_extra_mib"] is not None and row["peak_extra_mib"] >= 0 for row in rows.values())
    semantic_row = next(line for line in (out / "speed.md").read_text().splitlines() if line.startswith("| semantic |"))
    assert semantic_row.split("|")[5].strip() != ""  # the peak-memory column is filled


def test_bad_arguments_exit_with_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_speed.parse_args(["--methods", "semantic,nope"])
    assert exc.value.code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_speed.parse_args(["--fisher-methods", "fisher,semantic"])  # not a Fisher entry
    assert "unknown Fisher method 'semantic'" in capsys.readouterr().err


def test_report_only_rebuilds_the_tables_also_from_earlier_method_names(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "1", "--n-slow", "1", "--repeats", "1",
            "--methods", "floor,semantic,ig50", "--lengths", "", "--multi-token", "0", "--skip-memory", "--out", str(out)]
    assert bench_speed.main(argv) == 0
    table = (out / "speed.md").read_text()
    results = json.loads((out / "speed.json").read_text())
    results["single_token"]["captum_ig50"] = results["single_token"].pop("ig50")  # as an earlier version wrote it
    (out / "speed.json").write_text(json.dumps(results))
    (out / "speed.md").unlink()
    assert bench_speed.main(["--report-only", "--out", str(out)]) == 0
    assert (out / "speed.md").read_text() == table
    assert bench_speed.main(["--report-only", "--out", str(tmp_path / "none")]) == 2


def test_fisher_accuracy_study_resumes(tiny_model_dir, prompts_file, tmp_path, capsys):
    """Each prompt of the (slow) Fisher study is saved as it finishes (the shared
    runner); a rerun recomputes only what is missing, including a line cut off by
    a kill, and refuses other settings unless --overwrite."""
    out = tmp_path / "fisher"
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "2", "--skip-speed",
            "--fisher-n", "2", "--fisher-methods", "fisher,fisher_eig1", "--out", str(out)]
    assert bench_speed.main(argv) == 0
    study = out / FISHER_DIR
    (shard,) = study.glob("shard-*.jsonl")
    first = shard.read_text().splitlines()
    assert [json.loads(line)["id"] for line in first] == ["0", "1"]
    summary = json.loads((out / "speed.json").read_text())["fisher_accuracy"]

    assert bench_speed.main(argv) == 0  # nothing to do
    assert shard.read_text().splitlines() == first
    assert json.loads((out / "speed.json").read_text())["fisher_accuracy"] == summary

    shard.write_text(first[0] + "\n" + first[1][: len(first[1]) // 2])  # killed while writing prompt 1
    assert bench_speed.main(argv) == 0
    lines = shard.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first[0] and json.loads(lines[1])["id"] == "1"

    other = argv[:-3] + ["fisher_eig1", "--out", str(out)]  # other settings: refused, then redone
    assert bench_speed.main(other) == 2
    assert "other settings" in capsys.readouterr().err
    assert shard.read_text().splitlines() == lines
    assert bench_speed.main(other + ["--overwrite"]) == 0
    records = [json.loads(line) for line in (study / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["0", "1"] and all("fisher" not in r for r in records)


def test_fisher_accuracy_study_reads_cached_exact_scores_and_runs_every_seed(tiny_model_dir, prompts_file, tmp_path):
    """--fisher-exact: the study runs on the cached prompts only and scores against the cached
    exact values (not recomputed); --fisher-seeds: one value per seed for the randomised estimators."""
    from captum_jscopes import FisherScope, load_model

    model, tokenizer = load_model(str(tiny_model_dir), progress=False)
    ids = bench_speed.encode(tokenizer, json.loads(prompts_file.read_text())[1]["text"], 0, "cpu")
    exact = FisherScope(model, tokenizer).attribute(ids[None], estimator="exact")[0]
    cache = tmp_path / "exact.jsonl"
    # prompt "1" only, with its exact scores doubled: an estimator equal to exact is then 50% off
    cache.write_text(json.dumps({"id": "1", "seconds": 2.0, "exact": (2 * exact).tolist()}) + "\n")
    out = tmp_path / "cached"
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "1", "--skip-speed", "--fisher-n", "5",
            "--fisher-exact", str(cache), "--fisher-seeds", "2", "--fisher-methods", "fisher_hutchinson,fisher_eig1",
            "--out", str(out)]
    assert bench_speed.main(argv) == 0
    (record,) = [json.loads(line) for line in (out / FISHER_DIR / "records.jsonl").read_text().splitlines()]
    assert record["id"] == "1" and record["exact_seconds"] == 2.0
    # 40 passes on a 16-wide model: hutchinson is exact there, for every seed
    assert record["fisher_hutchinson"]["rel_l2"] == pytest.approx([0.5, 0.5], abs=1e-5)
    assert isinstance(record["fisher_eig1"]["rel_l2"], float)  # deterministic: one run
    summary = json.loads((out / "speed.json").read_text())["fisher_accuracy"]
    assert summary["fisher_hutchinson"]["n_values"] == 2 and summary["fisher_eig1"]["n_values"] == 1
    assert "2 seeds each" in (out / "speed.md").read_text()


def test_exact_cache_feeds_the_study_which_records_passes_and_coverage(tiny_model_dir, prompts_file, tmp_path):
    """--fisher-cache-exact writes exact scores of the prompts after --fisher-offset (resumable);
    --fisher-exact DIR reads them; each record holds the passes run and how many of the five
    largest exact scores lie inside the 95% interval."""
    from captum_jscopes import FisherScope, load_model

    cache = tmp_path / "exact"
    common = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "1", "--max-tokens", "0"]
    assert bench_speed.main([*common, "--fisher-cache-exact", str(cache), "--fisher-n", "5", "--fisher-offset", "1"]) == 0
    cached = [json.loads(line) for line in (cache / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in cached] == ["1"]  # the offset skipped prompt "0"; the file has two
    model, tokenizer = load_model(str(tiny_model_dir), progress=False)
    ids = bench_speed.encode(tokenizer, json.loads(prompts_file.read_text())[1]["text"], 0, "cpu")
    exact = FisherScope(model, tokenizer).attribute(ids[None], estimator="exact")[0]
    assert cached[0]["exact"] == pytest.approx(exact.tolist(), rel=1e-6, abs=1e-9)
    out = tmp_path / "study"
    assert bench_speed.main([*common, "--skip-speed", "--fisher-n", "5", "--fisher-exact", str(cache),
                             "--fisher-methods", "fisher_krylov,fisher_eig1", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / FISHER_DIR / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["1"]
    # krylov at full rank on a 16-wide model: exact (error 0), 32 passes; its error bars are 0, so only
    # the scores that equal exact to rounding count as covered
    assert all(r["fisher_krylov"]["passes"] == 32 and r["fisher_krylov"]["rel_l2"] < 1e-5 for r in records)
    assert all(r["fisher_eig1"]["top5_covered"] == 0 for r in records)  # NaN error bars cover nothing
    summary = json.loads((out / "speed.json").read_text())["fisher_accuracy"]
    assert summary["fisher_krylov"]["median_passes"] == 32 and summary["fisher_eig1"]["top5_coverage"] == 0.0
    assert "top-5 in 95% interval" in (out / "speed.md").read_text()

    # a second study on another prompt (its own cache) pools with the first into one table
    cache0, out0, pooled = tmp_path / "exact0", tmp_path / "study0", tmp_path / "pooled"
    assert bench_speed.main([*common, "--fisher-cache-exact", str(cache0), "--fisher-n", "1"]) == 0
    assert bench_speed.main([*common, "--skip-speed", "--fisher-n", "1", "--fisher-exact", str(cache0),
                             "--fisher-methods", "fisher_krylov", "--out", str(out0)]) == 0
    assert bench_speed.main(["--fisher-pool", f"{out},{out0}", "--out", str(pooled)]) == 0
    table = json.loads((pooled / "speed.json").read_text())["fisher_accuracy"]
    assert set(table) == {"fisher_krylov", "fisher_exact"}  # the estimators both studies ran
    assert table["fisher_krylov"]["n_values"] == 2 and table["fisher_krylov"]["median_passes"] == 32
    assert "fisher_krylov" in (pooled / "speed.md").read_text()
    assert bench_speed.main(["--fisher-pool", f"{out},{out}", "--out", str(pooled)]) == 2  # a prompt twice


@pytest.mark.slow  # one process per length
def test_length_memory_records_time_and_memory_per_length_and_skips_after_a_slow_call(
        tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    # --length-max-seconds 1e-9: every first call is "too slow", so only the first length is run
    argv = ["--model", str(tiny_model_dir), "--data", str(prompts_file), "--n", "1", "--methods", "",
            "--multi-token", "0", "--lengths", "16,32", "--length-methods", "floor,semantic", "--length-memory",
            "--length-max-seconds", "1e-9", "--out", str(out)]
    assert bench_speed.main(argv) == 0
    results = json.loads((out / "speed.json").read_text())
    assert set(results["lengths"]) == {"floor", "semantic"}
    for name in ("floor", "semantic"):
        assert set(results["lengths"][name]) == {"16"}  # 32 skipped after the slow call
        assert results["lengths"][name]["16"] > 0
        assert results["lengths_peak_extra_mib"][name]["16"] >= 0
    table = (out / "speed.md").read_text()
    assert "Peak extra memory by prompt length" in table
    assert next(line for line in table.splitlines() if line.startswith("| semantic |") and "MiB" not in line)
