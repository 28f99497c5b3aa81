"""Tests of captum_jscopes.runs.prompts (prompt loading, the shipped sets) and
captum_jscopes.runs.runner (sharded resumable runs, multi-process runs)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from captum_jscopes.runs import prompts as prompt_sets
from captum_jscopes.runs.prompts import Prompt, load_prompts
from captum_jscopes.runs.runner import PreviousRunError, read_records, run_sharded

# launches worker processes (torchrun-style shards): slow (pytest -m "not slow" leaves it out)
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "runner_worker.py"


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def make_prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=f"text number {i}") for i in range(n)]


class CountingFn:
    """fn for run_sharded that records which prompts it saw and can fail after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.seen: list[str] = []

    def __call__(self, prompt: Prompt) -> dict:
        if self.fail_after is not None and len(self.seen) == self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen.append(prompt.id)
        return {"length": len(prompt.text)}


def shard_lines(out_dir: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text(encoding="utf-8").splitlines() for p in sorted(out_dir.glob("shard-*.jsonl"))}


# --------------------------------------------------------------------------------------------------
# load_prompts
# --------------------------------------------------------------------------------------------------


def test_json_list_ids_are_indices(tmp_path):
    path = write_json(tmp_path / "p.json", [{"text": "a b"}, {"text": "c", "extra": 1}])
    assert load_prompts(path) == [Prompt("0", "a b"), Prompt("1", "c")]
    assert load_prompts(str(path)) == load_prompts(path)


def test_json_id_field_is_used(tmp_path):
    path = write_json(tmp_path / "p.json", [{"id": "x", "text": "a"}, {"id": 7, "text": "b"}])
    assert [p.id for p in load_prompts(path)] == ["x", "7"]


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "first"}\n\n{"text": "second", "id": "s"}\n', encoding="utf-8")
    assert load_prompts(path) == [Prompt("0", "first"), Prompt("s", "second")]


def test_default_source_is_the_lambada_set_inside_the_package():
    path = prompt_sets.DATASETS[prompt_sets.DEFAULT_DATASET]
    assert path.is_file() and path.is_relative_to(Path(prompt_sets.__file__).resolve().parent)
    prompts = load_prompts()
    assert len(prompts) == 1000 and load_prompts("lambada") == prompts
    assert [p.id for p in prompts[:3]] == ["0", "1", "2"]
    assert all(p.text.strip() for p in prompts)


def test_the_translation_set_is_shipped_with_german_and_english_sides():
    prompts = load_prompts("opus_de_en")
    assert len(prompts) == 500
    assert all(p.text.startswith("Deutsch: ") and " English: " in p.text for p in prompts)


def test_every_shipped_set_has_its_provenance_noted():
    readme = (prompt_sets.DATA_DIR / "README.md").read_text()
    for path in prompt_sets.DATASETS.values():
        assert f"`{path.name}`" in readme


def test_n_and_offset(tmp_path):
    path = write_json(tmp_path / "p.json", [{"text": f"t{i}"} for i in range(10)])
    assert [p.id for p in load_prompts(path, 3)] == ["0", "1", "2"]
    assert [p.id for p in load_prompts(path, 3, offset=4)] == ["4", "5", "6"]
    assert [p.id for p in load_prompts(path, offset=8)] == ["8", "9"]
    assert [p.id for p in load_prompts(path, 50, offset=7)] == ["7", "8", "9"]  # slicing semantics
    assert [p.id for p in load_prompts(None, 2, offset=10)] == ["10", "11"]


def test_offset_past_the_end_raises(tmp_path):
    path = write_json(tmp_path / "p.json", [{"text": "a"}])
    with pytest.raises(ValueError, match="offset=1"):
        load_prompts(path, offset=1)


@pytest.mark.parametrize("n, offset", [(0, 0), (-1, 0), (2.0, 0), (True, 0), (None, -1), (None, 1.5)])
def test_bad_n_or_offset_raises(tmp_path, n, offset):
    path = write_json(tmp_path / "p.json", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match="n must|offset must"):
        load_prompts(path, n, offset=offset)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("dict.json", '{"text": "a"}', "JSON list"),
        ("empty.json", "[]", "empty list"),
        ("str.json", '["just a string"]', "entry 0: expected an object"),
        ("notext.json", '[{"text": "ok"}, {"body": "x"}]', "entry 1: missing a string 'text'"),
        ("numtext.json", '[{"text": 3}]', "entry 0: missing a string 'text'"),
        ("emptytext.json", '[{"text": ""}]', "entry 0: empty text"),
        ("blanktext.json", '[{"text": "  \\n"}]', "entry 0: empty text"),
        ("dupid.json", '[{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]', "duplicate id 'a'"),
        ("badid.json", '[{"id": null, "text": "x"}]', "'id' must be"),
        ("bad.jsonl", '{"text": "a"}\n{"text": \n', "line 2: not valid JSON"),
        ("notext.jsonl", '{"text": "a"}\n\n{"txt": "b"}\n', "line 3: missing a string 'text'"),
        ("emptytext.jsonl", '{"text": "a"}\n{"text": ""}\n', "line 2: empty text"),
        ("empty.jsonl", "\n\n", "empty list"),
    ],
)
def test_bad_file_raises_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_prompts(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["missing.json", "missing.jsonl"])
def test_missing_file_raises(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(ValueError, match="not found") as info:
        load_prompts(str(path))
    assert str(path) in str(info.value)


def test_directory_is_not_a_prompts_file(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_prompts(tmp_path)


def test_wrong_source_type_raises():
    with pytest.raises(TypeError, match="source"):
        load_prompts(42)


@pytest.mark.parametrize("source", ["hf:some/dataset", "hf:some/dataset:test:sentence", "some/dataset"])
def test_hub_source_without_datasets_package_raises_import_error(monkeypatch, source):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(ImportError, match="pip install datasets"):
        load_prompts(source)


@pytest.mark.parametrize("source", ["hf:", "hf::test", "hf:a:b:c:d"])
def test_malformed_hub_spec_raises(source):
    with pytest.raises(ValueError, match="hf:NAME"):
        load_prompts(source)


def test_unreachable_hub_dataset_raises_value_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load hub dataset"):
        load_prompts("hf:no-such-owner-jscopes/no-such-dataset")


# --------------------------------------------------------------------------------------------------
# run_sharded, single process
# --------------------------------------------------------------------------------------------------


def test_single_process_writes_every_record_once_in_prompt_order(tmp_path):
    prompts = [Prompt("b", "bb"), Prompt("a", "a"), Prompt("c", "ccc")]  # prompt order is not id order
    fn = CountingFn()
    path = run_sharded(prompts, fn, tmp_path / "out", meta={"model": "tiny", "n": 3})

    assert path == tmp_path / "out" / "records.jsonl"
    assert fn.seen == ["b", "a", "c"]
    assert read_records(path) == [{"id": "b", "length": 2}, {"id": "a", "length": 1}, {"id": "c", "length": 3}]
    assert read_records(tmp_path / "out") == read_records(path)
    assert list(shard_lines(tmp_path / "out")) == ["shard-000-of-001.jsonl"]
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == {"model": "tiny", "n": 3}


@pytest.mark.parametrize("progress, shown", [(True, True), (False, False), (None, True)])
def test_progress_over_the_prompts_follows_the_argument(tmp_path, capsys, progress, shown):
    # pytest's captured stderr is not a terminal: progress comes as lines (a log), on unless False.
    run_sharded(make_prompts(3), CountingFn(), tmp_path, desc="my-run", progress=progress)
    err = capsys.readouterr().err
    assert ("my-run" in err and "3/3" in err) == shown, err
    assert "\r" not in err  # no bar redrawn in a log


def test_rerun_of_a_finished_run_computes_nothing(tmp_path):
    prompts = make_prompts(4)
    first = read_records(run_sharded(prompts, CountingFn(), tmp_path))
    fn = CountingFn()
    assert read_records(run_sharded(prompts, fn, tmp_path)) == first
    assert fn.seen == []


def test_resume_after_interruption_computes_only_the_rest(tmp_path):
    prompts = make_prompts(10)
    interrupted = CountingFn(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_sharded(prompts, interrupted, tmp_path)
    assert interrupted.seen == ["p0", "p1", "p2", "p3"]
    assert not (tmp_path / "records.jsonl").exists()

    rest = CountingFn()
    records = read_records(run_sharded(prompts, rest, tmp_path))
    assert rest.seen == [f"p{i}" for i in range(4, 10)]
    assert [r["id"] for r in records] == [p.id for p in prompts]


def test_truncated_last_line_is_dropped_and_recomputed(tmp_path):
    prompts = make_prompts(6)
    with pytest.raises(KeyboardInterrupt):
        run_sharded(prompts, CountingFn(fail_after=3), tmp_path)
    shard = tmp_path / "shard-000-of-001.jsonl"
    with shard.open("a", encoding="utf-8") as f:
        f.write('{"id": "p3", "len')  # a crash in the middle of writing p3's record

    rest = CountingFn()
    records = read_records(run_sharded(prompts, rest, tmp_path))
    assert rest.seen == ["p3", "p4", "p5"]
    assert records == [{"id": p.id, "length": len(p.text)} for p in prompts]
    assert [json.loads(line)["id"] for line in shard_lines(tmp_path)["shard-000-of-001.jsonl"]] == [
        p.id for p in prompts
    ]


def test_longer_prompt_list_reuses_the_records_of_a_shorter_run(tmp_path):
    run_sharded(make_prompts(3), CountingFn(), tmp_path)
    fn = CountingFn()
    records = read_records(run_sharded(make_prompts(5), fn, tmp_path))
    assert fn.seen == ["p3", "p4"]
    assert len(records) == 5


def test_interrupted_rerun_leaves_no_stale_merged_file(tmp_path):
    run_sharded(make_prompts(3), CountingFn(), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_sharded(make_prompts(5), CountingFn(fail_after=1), tmp_path)
    with pytest.raises(ValueError, match="not found"):
        read_records(tmp_path)  # the 3-record file must not pass for the result of the 5-prompt run


def test_settings_mismatch_raises_and_overwrite_starts_afresh(tmp_path):
    prompts = make_prompts(3)
    run_sharded(prompts, CountingFn(), tmp_path, meta={"model": "a"})
    with pytest.raises(PreviousRunError, match="run.json") as info:
        run_sharded(prompts, CountingFn(), tmp_path, meta={"model": "b"})
    assert isinstance(info.value, ValueError)
    assert str(info.value).endswith("use another out_dir, or pass overwrite=True to discard the previous results")
    # a command line names its own flags
    assert info.value.describe(elsewhere="another --out", overwrite="--overwrite").endswith(
        "use another --out, or pass --overwrite to discard the previous results"
    )
    with pytest.raises(ValueError, match="run.json"):
        run_sharded(prompts, CountingFn(), tmp_path)  # no meta is {} and differs too

    fn = CountingFn()
    run_sharded(prompts, fn, tmp_path, meta={"model": "b"}, overwrite=True)
    assert fn.seen == ["p0", "p1", "p2"]
    assert json.loads((tmp_path / "run.json").read_text()) == {"model": "b"}


def test_a_run_json_of_an_earlier_version_resumes_once_upgraded(tmp_path):
    prompts = make_prompts(2)
    run_sharded(prompts, CountingFn(), tmp_path, meta={"old_name": 1})

    def upgrade(meta):
        return {"new_name": meta["old_name"]} if "old_name" in meta else meta

    fn = CountingFn()
    run_sharded(prompts, fn, tmp_path, meta={"new_name": 1}, upgrade_meta=upgrade)
    assert fn.seen == []
    assert json.loads((tmp_path / "run.json").read_text()) == {"new_name": 1}  # rewritten in today's form
    with pytest.raises(PreviousRunError, match="other settings"):
        run_sharded(prompts, fn, tmp_path, meta={"new_name": 2}, upgrade_meta=upgrade)


def test_same_settings_in_another_python_type_resume(tmp_path):
    prompts = make_prompts(2)
    run_sharded(prompts, CountingFn(), tmp_path, meta={"layers": (1, 2)})
    fn = CountingFn()
    run_sharded(prompts, fn, tmp_path, meta={"layers": [1, 2]})  # what run.json reads back
    assert fn.seen == []


def test_overwrite_keeps_unrelated_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    run_sharded(make_prompts(2), CountingFn(), tmp_path, meta={"v": 1})
    run_sharded(make_prompts(2), CountingFn(), tmp_path, meta={"v": 2}, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "fn, error, message",
    [
        (lambda p: [1, 2], TypeError, "must return a dict"),
        (lambda p: {"value": object()}, TypeError, "not JSON-serialisable"),
        (lambda p: {"id": "other"}, ValueError, "leave 'id' to the runner"),
    ],
)
def test_bad_records_raise(tmp_path, fn, error, message):
    with pytest.raises(error, match=message):
        run_sharded(make_prompts(2), fn, tmp_path)
    assert (tmp_path / "shard-000-of-001.jsonl").read_text() == ""  # nothing half-written


@pytest.mark.parametrize(
    "prompts, error, message",
    [
        ([], ValueError, "empty"),
        (["a text"], TypeError, "Prompt objects"),
        ([Prompt("a", "x"), Prompt("a", "y")], ValueError, "unique"),
    ],
)
def test_bad_prompts_raise(tmp_path, prompts, error, message):
    with pytest.raises(error, match=message):
        run_sharded(prompts, CountingFn(), tmp_path)


def test_bad_meta_raises(tmp_path):
    with pytest.raises(TypeError, match="meta"):
        run_sharded(make_prompts(1), CountingFn(), tmp_path, meta=["not", "a", "dict"])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        run_sharded(make_prompts(1), CountingFn(), tmp_path, meta={"x": object()})


def test_read_records_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_records(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n[1]\n')
    with pytest.raises(ValueError, match="line 2"):
        read_records(bad)


# --------------------------------------------------------------------------------------------------
# run_sharded, two real processes
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_workers(tmp_path: Path, *worker_args: str) -> subprocess.CompletedProcess:
    """Run tests/bench/runner_worker.py as two CPU processes with accelerate launch (torchrun underneath).

    `--multi_gpu` is what makes accelerate start several processes; `--cpu --num_processes 2` would start
    only one. CUDA is hidden so the processes use gloo on the CPU even on a GPU machine, and HF_HOME points to
    an empty folder so that no user accelerate config changes the launch.
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(WORKER), *worker_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # lets a hung launch be killed with its workers
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the two-process launch hung:\n{output}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


def write_prompts_file(tmp_path: Path, n: int) -> tuple[Path, list[Prompt]]:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": "word " * (i + 1)}) + "\n" for i in range(n)), encoding="utf-8")
    return path, load_prompts(path)


def records_by_shard(out_dir: Path) -> dict[str, list[dict]]:
    return {name: [json.loads(line) for line in lines] for name, lines in shard_lines(out_dir).items()}


def test_two_processes_share_the_prompts(tmp_path):
    prompts_file, prompts = write_prompts_file(tmp_path, 12)
    out = tmp_path / "out"
    result = launch_two_workers(tmp_path, "--prompts", str(prompts_file), "--out", str(out), "--tag", "two")
    assert result.returncode == 0, result.stdout

    shards = records_by_shard(out)
    assert sorted(shards) == ["shard-000-of-002.jsonl", "shard-001-of-002.jsonl"]
    ids = {name: [r["id"] for r in records] for name, records in shards.items()}
    assert len(ids["shard-000-of-002.jsonl"]) == len(ids["shard-001-of-002.jsonl"]) == 6
    assert set(ids["shard-000-of-002.jsonl"]).isdisjoint(ids["shard-001-of-002.jsonl"])
    for rank, name in enumerate(sorted(shards)):
        assert all(r["rank"] == rank and r["num"] == 2 for r in shards[name])

    merged = read_records(out)
    assert [r["id"] for r in merged] == [p.id for p in prompts]
    assert all(r["chars"] == len(p.text) for r, p in zip(merged, prompts))


def test_one_interrupted_process_then_two_processes_finish(tmp_path):
    prompts_file, prompts = write_prompts_file(tmp_path, 12)
    out = tmp_path / "out"

    def first_run(prompt):
        return {"tag": "first", "rank": 0, "num": 1, "chars": len(prompt.text)}

    calls = []

    def interrupted(prompt):
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(prompt.id)
        return first_run(prompt)

    with pytest.raises(KeyboardInterrupt):
        run_sharded(prompts, interrupted, out)
    with (out / "shard-000-of-001.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"id": "5", "tag": "fir')  # died while writing prompt 5

    result = launch_two_workers(tmp_path, "--prompts", str(prompts_file), "--out", str(out), "--tag", "second")
    assert result.returncode == 0, result.stdout

    merged = read_records(out)
    assert [r["id"] for r in merged] == [p.id for p in prompts]
    assert [r["id"] for r in merged if r["tag"] == "first"] == ["0", "1", "2", "3", "4"]
    second = [r for r in merged if r["tag"] == "second"]
    assert [r["id"] for r in second] == [str(i) for i in range(5, 12)]
    # the 7 remaining prompts were dealt to both processes
    assert sorted(r["rank"] for r in second) == [0, 0, 0, 0, 1, 1, 1]
    shards = records_by_shard(out)
    assert [len(shards[f"shard-00{i}-of-002.jsonl"]) for i in (0, 1)] == [4, 3]
    # the shard of the first run lost its half-written line and kept its 5 records
    assert [r["id"] for r in shards["shard-000-of-001.jsonl"]] == ["0", "1", "2", "3", "4"]
    assert (out / "shard-000-of-001.jsonl").read_text().endswith("}\n")


def test_two_processes_refuse_other_settings_without_hanging(tmp_path):
    prompts_file, _ = write_prompts_file(tmp_path, 4)
    out = tmp_path / "out"
    run_sharded(load_prompts(prompts_file), CountingFn(), out, meta={"model": "a"})
    result = launch_two_workers(
        tmp_path, "--prompts", str(prompts_file), "--out", str(out), "--tag", "x", "--meta", '{"model": "b"}'
    )
    assert result.returncode != 0
    assert "run.json holds other settings" in result.stdout


# --------------------------------------------------------------------------------------------------
# Long runs: the estimate after the first prompt, progress lines in a log
# --------------------------------------------------------------------------------------------------


class FakeClock:
    """time.perf_counter for the runner: each prompt takes ``seconds``."""

    def __init__(self, seconds: float):
        self.now, self.seconds = 1000.0, seconds

    def __call__(self) -> float:
        return self.now

    def fn(self, prompt: Prompt) -> dict:
        self.now += self.seconds
        return {"n": len(prompt.text)}


def test_a_long_run_estimates_its_time_after_the_first_prompt_and_suggests_a_look(tmp_path, capsys, monkeypatch):
    from captum_jscopes.runs import progress

    clock = FakeClock(75.0)
    monkeypatch.setattr(progress.time, "perf_counter", clock)  # the progress report's clock
    run_sharded(make_prompts(1000), clock.fn, tmp_path, desc="faithfulness", size_flag="--n")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "faithfulness: 1000 prompts, about 20 h 50 min on this machine at 75 s per prompt; --n 20 for a look"
    # then a line every max(1, 1000 // 100) = 10 prompts (75 s each: past the 60 s), and the last one
    assert lines[1] == "faithfulness: 11/1000 prompts, 75 s per prompt, about 20 h 36 min left"
    assert lines[2].startswith("faithfulness: 21/1000 prompts")
    assert lines[-1] == "faithfulness: 1000/1000 prompts, 75 s per prompt, done in 20 h 50 min"
    assert len(lines) == 2 + 99


def test_a_resumed_run_estimates_what_is_left_and_a_short_one_suggests_nothing(tmp_path, capsys, monkeypatch):
    from captum_jscopes.runs import progress

    run_sharded(make_prompts(3), CountingFn(), tmp_path, progress=False)
    assert capsys.readouterr().err == ""  # progress=False: nothing at all
    clock = FakeClock(2.0)
    monkeypatch.setattr(progress.time, "perf_counter", clock)  # the progress report's clock
    run_sharded(make_prompts(10), clock.fn, tmp_path, desc="trust")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "trust: 10 prompts (3 done before), about 14 s more on this machine at 2.0 s per prompt",
        "trust: 10/10 prompts, 2.0 s per prompt, done in 14 s",
    ]


def test_progress_lines_wait_for_the_interval(tmp_path, capsys, monkeypatch):
    from captum_jscopes.runs import progress

    clock = FakeClock(7.0)
    monkeypatch.setattr(progress.time, "perf_counter", clock)  # the progress report's clock
    run_sharded(make_prompts(30), clock.fn, tmp_path, desc="x")  # a line every 60 s: every 9th prompt
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["10/30", "19/30", "28/30", "30/30"]
    monkeypatch.setenv("JSCOPES_PROGRESS_SECONDS", "0")  # the variable shortens it
    run_sharded(make_prompts(3), clock.fn, tmp_path / "again", desc="x")
    assert [line.split()[1] for line in capsys.readouterr().err.splitlines()[1:]] == ["2/3", "3/3"]


# --------------------------------------------------------------------------------------------------
# The benchmark commands as long jobs: a log, the default folder, the refusal
# --------------------------------------------------------------------------------------------------

TINY_TEXTS = [
    "the cat sat on the mat and the dog ran to the house",
    "Tom went home to the South and he liked the red food",
]


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny Llama folder, prompts file of two passages in its words)."""
    from helpers import make_model, make_tokenizer

    folder = tmp_path_factory.mktemp("bench") / "tiny-llama"
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    data = folder.parent / "prompts.json"
    write_json(data, [{"text": t} for t in TINY_TEXTS])
    return folder, data


def test_faithfulness_with_output_to_a_log_leaves_the_estimate_and_progress_there(tiny_bench, tmp_path):
    model, data = tiny_bench
    log = tmp_path / "log"
    cmd = [sys.executable, "-m", "captum_jscopes", "bench", "faithfulness", "--n", "2", "--model", str(model),
           "--data", str(data), "--methods", "semantic,random", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("JSCOPES_PROGRESS_SECONDS", None)
    with log.open("w") as f:  # jscopes bench faithfulness --n 2 > log 2>&1
        done = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    assert re.search(r"^faithfulness: 2 prompts, about .+ on this machine at .+ per prompt$", text, re.M), text
    assert re.search(r"^faithfulness: 2/2 prompts, .+ per prompt, done in ", text, re.M), text
    # the default output folder: under the current one, named after the benchmark and the model
    out = tmp_path / "jscopes-bench" / "faithfulness-tiny-llama"
    assert (out / "records.jsonl").is_file() and (out / "report.md").is_file()


def test_default_output_folders_are_under_the_current_folder_not_the_committed_results(monkeypatch, tmp_path):
    from captum_jscopes.bench.common import RESULTS_ROOT, results_dir

    monkeypatch.chdir(tmp_path)
    for benchmark in ("faithfulness", "trust", "layers"):
        folder = results_dir(benchmark, None)
        assert folder == Path("jscopes-bench") / f"{benchmark}-smollm2-135m-instruct"
        assert not folder.resolve().is_relative_to(RESULTS_ROOT)
        assert not (REPO_ROOT / folder).exists()  # no committed result under that name
    assert results_dir("faithfulness", "meta-llama/Llama-3.2-1B") == Path("jscopes-bench/faithfulness-Llama-3.2-1B")


def _bench_main(name: str):
    import importlib

    return importlib.import_module(f"captum_jscopes.bench.{name}").main


# each benchmark: the arguments of a quick run, and a change of one setting
BENCH_RUNS = {
    "faithfulness": (["--methods", "semantic,random", "--curve-fractions", "0,0.5"], ["--seed", "1"]),
    "trust": (["--radius-tokens", "0", "--fisher-radius-n", "0"], ["--k", "2"]),
    "layers": (["--max-tokens", "8", "--stride", "4"], ["--stride", "2"]),
}


@pytest.mark.parametrize("name", sorted(BENCH_RUNS))
def test_a_benchmark_refuses_a_folder_holding_other_settings_and_names_overwrite(name, tiny_bench, tmp_path,
                                                                                  monkeypatch, capsys):
    model, data = tiny_bench
    monkeypatch.chdir(tmp_path)
    main = _bench_main(name)
    quick, other = BENCH_RUNS[name]
    argv = ["--model", str(model), "--data", str(data), "--n", "1", "--threads", "1", *quick]
    assert main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "jscopes-bench" / f"{name}-tiny-llama"
    assert (out / "run.json").is_file()  # the default folder, under the current one
    records = (out / "records.jsonl").read_text()
    capsys.readouterr()

    assert main([*argv, *other]) == 2
    err = capsys.readouterr().err
    assert "holds other settings" in err and err.count("\n") == 1, err
    assert "--overwrite" in err and "overwrite=True" not in err, err
    assert (out / "records.jsonl").read_text() == records  # untouched
    assert main([*argv, *other, "--overwrite"]) == 0
