"""The ``jscopes`` command line: files written and their content (checked against
the standalone scopes), multi-token targets, chat prompts, errors as one line,
benchmark dispatch, the installed entry points, and the default model's demo."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from helpers import assert_unchanged, make_model, snapshot
from matplotlib.image import imread

from captum_jscopes import FisherScope, ScopeResult, SemanticScope, TemperatureScope, chat_prompt, layer_map, load_model
from captum_jscopes.cli import attribute as attribute_command
from captum_jscopes.cli import bench as bench_command
from captum_jscopes.cli.main import main
from captum_jscopes.cli.demo_prompts import DEMO_EXAMPLES, DemoClaim
from captum_jscopes.runs.explain import PassTiming, explain, measure_pass, no_target_given
from captum_jscopes.display.interactive import DATA_ID, page_data
from captum_jscopes.scopes.registry import SCOPES
from captum_jscopes.models import EMBEDDED_MODELS, EmbeddedModel

PROMPT = "the cat sat on the"
WORDS = PROMPT.split()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCOPE_CLASSES = {"semantic": SemanticScope, "temperature": TemperatureScope, "fisher": FisherScope}


@pytest.fixture(scope="module")
def tiny(model_dir):
    """The saved tiny model and tokenizer, loaded the way the CLI loads them."""
    return load_model(str(model_dir))


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prompt_ids(tokenizer, text: str = PROMPT) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt")["input_ids"]


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), f"{path} is not a PNG"
    height, width, channels = imread(path).shape
    assert height > 50 and width > 100 and channels in (3, 4)


def assert_self_contained_html(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text and "src=" not in text  # no script, no external asset


# ----------------------------------------------------------------------------- attribute, end to end


def test_attribute_all_scopes_writes_what_the_scopes_compute(model_dir, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run(["attribute", PROMPT, "--model", model_dir, "--out", out, "--scope", "all"], capsys)
    assert code == 0, stderr
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1], -1)
    predicted = int(probs.argmax())
    predicted_text = tokenizer.decode([predicted])

    written = sorted(out.iterdir())
    # every scope's files, and the page and picture that compare their maps (tests/cli/test_compare.py)
    assert [p.name for p in written] == sorted([f"{s}.{ext}" for s in SCOPES for ext in ("png", "html", "json")]
                                               + ["compare.html", "compare.png"])
    for scope in SCOPES:
        assert_valid_png(out / f"{scope}.png")
        assert_self_contained_html(out / f"{scope}.html")
        saved = ScopeResult.load_json(out / f"{scope}.json")
        # BOS is left out: one score per prompt word.
        assert saved.input_tokens == WORDS and saved.seq_attr.shape == (len(WORDS),)
        assert saved.output_tokens == [predicted_text] and saved.token_attr.shape == (1, len(WORDS))
        torch.testing.assert_close(saved.seq_attr, saved.token_attr[0])
        # Same numbers as the standalone scope on the prompt (BOS column dropped).
        target = {"target": predicted} if scope == "semantic" else {}
        alone = SCOPE_CLASSES[scope](model, tokenizer).attribute(ids, **target)[0, 1:]
        torch.testing.assert_close(saved.token_attr[0], alone, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(saved.output_probs, probs[predicted : predicted + 1], rtol=1e-5, atol=1e-8)
        meta = saved.metadata
        assert meta["scope"] == scope and meta["model"] == model_dir.name
        assert meta["prediction"]["id"] == predicted and meta["prediction"]["token"] == predicted_text
        assert meta["prediction"]["prob"] == pytest.approx(float(probs[predicted]), rel=1e-5)
        assert meta["no_target_given"] is True
        assert set(meta["versions"]) == {"captum_jscopes", "torch", "transformers", "captum"}
        assert meta["settings"]["dtype"] == "float32" and meta["settings"]["device"] == "cpu"
        # The file holds exactly what explain() returns for the same call.
        before = snapshot(model)
        assert saved == explain(model, tokenizer, PROMPT, scope)
        assert_unchanged(model, before)
        # The terminal summary lists this scope's top token.
        top_index = int(saved.seq_attr.argmax())
        assert f"{scope}: top 5 tokens" in stdout and f"(token {top_index:>3})" in stdout
    assert f"prediction: {predicted_text!r}" in stdout
    assert all(str(out / f"{s}.{ext}") in stdout for s in SCOPES for ext in ("png", "html", "json"))
    # each scope's files are listed right after its summary, before the next scope runs
    for earlier, later in zip(list(SCOPES), list(SCOPES)[1:]):
        assert stdout.index(str(out / f"{earlier}.json")) < stdout.index(f"{later}: top 5 tokens")


def test_one_token_target_is_explained_instead_of_the_prediction(model_dir, tiny, tmp_path, capsys):
    code, stdout, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic", "--target", "Paris"],
        capsys,
    )
    assert code == 0, stderr
    model, tokenizer = tiny
    paris = tokenizer.convert_tokens_to_ids("Paris")
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.output_tokens == ["Paris"] and saved.metadata["target"] == "Paris"
    assert saved.metadata["no_target_given"] is False
    alone = SemanticScope(model, tokenizer).attribute(prompt_ids(tokenizer), target=paris)[0, 1:]
    torch.testing.assert_close(saved.seq_attr, alone, rtol=1e-5, atol=1e-7)
    assert "target:     'Paris'" in stdout


def test_multi_token_target_is_teacher_forced_one_row_per_token(model_dir, tiny, tmp_path, capsys):
    target = "big red house"
    code, stdout, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic", "--target", target],
        capsys,
    )
    assert code == 0, stderr
    model, tokenizer = tiny
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.output_tokens == target.split() and saved.token_attr.shape == (3, len(WORDS))
    torch.testing.assert_close(saved.seq_attr, saved.token_attr.sum(0))
    # Row k explains target token k after the prompt and the target tokens before it.
    target_ids = tokenizer.encode(target, add_special_tokens=False)
    for k, token in enumerate(target_ids):
        ids = torch.cat([prompt_ids(tokenizer), torch.tensor([target_ids[:k]], dtype=torch.long)], dim=1)
        alone = SemanticScope(model, tokenizer).attribute(ids, target=token)[0, 1 : 1 + len(WORDS)]
        torch.testing.assert_close(saved.token_attr[k], alone, rtol=1e-5, atol=1e-7)
    assert_valid_png(tmp_path / "semantic.png")
    assert "3 tokens, teacher-forced" in stdout
    # the interactive page: every target token's row and their sum, and the command says so
    page = tmp_path / "semantic_interactive.html"
    assert str(page) in stdout and "choose a target token" in stdout
    text = page.read_text(encoding="utf-8")
    block = text.split(f'<script type="application/json" id="{DATA_ID}">')[1].split("</script>")[0]
    data = json.loads(block)
    assert data == json.loads(json.dumps(page_data(saved, data["title"])))  # the result, as the JSON file holds it
    assert data["scores"] == saved.token_attr.double().tolist() and len(data["output"]) == 3
    assert data["title"] == f"Semantic Scope · {model_dir.name}"
    assert "summed over the 3 target tokens" in stdout
    # the progress bar over the target tokens goes to stderr
    assert "semantic: target tokens" in stderr and "/3" in stderr


def test_one_token_target_writes_no_interactive_page(model_dir, tmp_path, capsys):
    code, stdout, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "temperature"], capsys
    )
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["temperature.html", "temperature.json", "temperature.png"]
    assert "interactive" not in stdout


def test_layers_writes_the_layer_heatmap_of_each_scope(model_dir, tiny, tmp_path, capsys):
    code, stdout, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "all", "--layers",
         "--fisher-estimator", "eig"], capsys,
    )  # fmt: skip
    assert code == 0, stderr
    for scope in SCOPES:
        assert_valid_png(tmp_path / f"{scope}_layers.png")
        assert str(tmp_path / f"{scope}_layers.png") in stdout
    assert not list(tmp_path.glob("*_interactive.html"))  # one target token: no interactive page
    # the layer maps the command draws: row 0 is the result's map, the columns its input tokens
    model, tokenizer = tiny
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    target = saved.metadata["prediction"]["id"]
    grid = attribute_command.result_layer_maps(
        model, tokenizer, explain(model, tokenizer, PROMPT, "semantic"), "semantic", [target], {})
    assert grid.shape == (1, model.config.num_hidden_layers + 1, len(WORDS))  # BOS left out, as in the result
    torch.testing.assert_close(grid[0, 0], saved.token_attr[0], rtol=1e-5, atol=1e-7)
    alone = layer_map(SemanticScope(model, tokenizer), prompt_ids(tokenizer), target=target)
    torch.testing.assert_close(grid[0], alone.scores[0, :, 1:], rtol=1e-5, atol=1e-7)


def test_without_layers_no_layer_files_are_written(model_dir, tmp_path, capsys):
    code, _, stderr = run(["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic",
                           "--target", "big red house"], capsys)
    assert code == 0, stderr
    assert not list(tmp_path.glob("*_layers.png"))
    text = (tmp_path / "semantic_interactive.html").read_text(encoding="utf-8")
    block = text.split(f'<script type="application/json" id="{DATA_ID}">')[1].split("</script>")[0]
    assert "layers" not in json.loads(block)


def test_layers_gives_a_multi_token_targets_interactive_page_its_layer_view(model_dir, tiny, tmp_path, capsys):
    target = "big red house"
    code, stdout, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic", "--target", target,
         "--layers"], capsys,
    )  # fmt: skip
    assert code == 0, stderr
    model, tokenizer = tiny
    assert_valid_png(tmp_path / "semantic_layers.png")
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    text = (tmp_path / "semantic_interactive.html").read_text(encoding="utf-8")
    block = text.split(f'<script type="application/json" id="{DATA_ID}">')[1].split("</script>")[0]
    data = json.loads(block)
    layers = data["layers"]
    n_layers = model.config.num_hidden_layers
    assert layers["n_layers"] == n_layers and len(layers["views"]) == 3
    # per target token k, row 0 is the result's row k, each row divided by its maximum;
    # row l matches the layer map of the same teacher-forced prompt
    target_ids = tokenizer.encode(target, add_special_tokens=False)
    for k, view in enumerate(layers["views"]):
        rows = torch.tensor(view["rows"], dtype=torch.float64)
        assert rows.shape == (n_layers + 1, len(WORDS))
        row0 = saved.token_attr[k].double()
        torch.testing.assert_close(rows[0], row0 / row0.max(), rtol=0, atol=1e-4)
        ids = torch.cat([prompt_ids(tokenizer), torch.tensor([target_ids[:k]], dtype=torch.long)], dim=1)
        alone = layer_map(SemanticScope(model, tokenizer), ids, target=target_ids[k]).scores[0, :, 1: 1 + len(WORDS)]
        peak = alone.amax(-1, keepdim=True).clamp_min(1e-30)  # the last row is 0 on the prompt for k > 0
        torch.testing.assert_close(rows, (alone / peak).double(), rtol=0, atol=1e-4)
        peaks = torch.tensor(view["peaks"], dtype=torch.float64)
        torch.testing.assert_close(peaks, alone.amax(-1).double(), rtol=1e-5, atol=1e-9)
    # the rest of the page's data is as without --layers
    del data["layers"]
    assert data == json.loads(json.dumps(page_data(saved, data["title"])))


def test_layers_with_chat_keeps_the_users_tokens_only(model_dir, tiny, tmp_path, capsys):
    code, _, stderr = run(["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "temperature",
                           "--chat", "--layers"], capsys)
    assert code == 0, stderr
    assert_valid_png(tmp_path / "temperature_layers.png")
    model, tokenizer = tiny
    saved = ScopeResult.load_json(tmp_path / "temperature.json")
    result = explain(model, tokenizer, PROMPT, "temperature", chat=True)
    grid = attribute_command.result_layer_maps(model, tokenizer, result, "temperature",
                                               [saved.metadata["prediction"]["id"]], {})
    assert grid.shape[-1] == len(WORDS)  # the template's markers are left out, as in the result
    torch.testing.assert_close(grid[0, 0], saved.token_attr[0], rtol=1e-5, atol=1e-7)


def test_fisher_prints_its_cost_estimate_before_it_runs(model_dir, tmp_path, capsys):
    code, stdout, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "fisher", "--target", "big red"],
        capsys,
    )
    assert code == 0, stderr
    # the default estimator (krylov) on d = 16: its two blocks of 8 directions are all of F's, so it
    # runs 8 + 16 + 8 = 32 passes and no probe; 7 tokens = <bos>, five words and the first target
    # token (teacher-forced)
    line = next(line for line in stdout.splitlines() if line.startswith("Fisher: "))
    assert line.startswith("Fisher: 32 backward passes x 2 target tokens over 7 tokens, about ")
    assert line.endswith(" s")  # a second or so: no hint to the quick estimator
    assert stdout.index(line) < stdout.index("fisher: top 5 tokens")
    assert "Fisher passes (krylov)" in stderr  # the Fisher Scope's own bar


@pytest.mark.parametrize(
    "timing, method, expected",
    [
        (PassTiming(3400, 1, 576, 10.0, 18.0), "hutchinson",
         "Fisher: 40 backward passes over 3,400 tokens, about 29 min; --fisher-estimator eig for a quick look"),
        (PassTiming(3400, 1, 576, 10.0, 18.0), "eig", "Fisher: 1 backward pass over 3,400 tokens, about 28 s"),
        (PassTiming(300, 5, 576, 1.0, 2.0), "exact",
         "Fisher: 576 backward passes x 5 target tokens over 300 tokens, about 1.6 h; --fisher-estimator eig for a quick look"),
        (PassTiming(12, 1, 576, 0.1, 0.1), "deflated", "Fisher: 40 backward passes over 12 tokens, about 4 s"),
    ],
)
def test_estimate_line(timing, method, expected):
    assert attribute_command.estimate_line(timing, "fisher", {"estimator": method}) == expected


def test_measured_pass_leaves_the_model_unchanged(tiny):
    model, tokenizer = tiny
    before = snapshot(model)
    timing = measure_pass(model, tokenizer, PROMPT, "big red house")
    assert_unchanged(model, before)
    assert (timing.n_tokens, timing.n_targets, timing.hidden_size) == (1 + len(WORDS) + 2, 3, 16)
    assert timing.forward_seconds > 0 and timing.backward_seconds > 0


def test_chat_scores_only_the_users_tokens(model_dir, tiny, tmp_path, capsys):
    code, _, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "temperature", "--chat"], capsys
    )
    assert code == 0, stderr
    model, tokenizer = tiny
    saved = ScopeResult.load_json(tmp_path / "temperature.json")
    assert saved.input_tokens == WORDS  # no <|user|> / <|assistant|> markers
    ids, user_mask = chat_prompt(tokenizer, PROMPT)
    with torch.no_grad():
        predicted = int(model(ids).logits[0, -1].argmax())  # after the assistant marker
    assert saved.metadata["prediction"]["id"] == predicted and saved.metadata["settings"]["chat"] is True
    alone = TemperatureScope(model, tokenizer).attribute(ids, token_mask=user_mask)[0][user_mask[0]]
    torch.testing.assert_close(saved.seq_attr, alone, rtol=1e-5, atol=1e-7)


def test_keep_special_shows_and_scores_the_bos_token(model_dir, tiny, tmp_path, capsys):
    code, _, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic", "--keep-special"], capsys
    )
    assert code == 0, stderr
    model, tokenizer = tiny
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.input_tokens == ["<bos>"] + WORDS
    target = saved.metadata["prediction"]["id"]
    alone = SemanticScope(model, tokenizer, exclude_special_tokens=False).attribute(prompt_ids(tokenizer), target=target)
    torch.testing.assert_close(saved.seq_attr, alone[0], rtol=1e-5, atol=1e-7)
    assert float(saved.seq_attr[0]) > 0


def test_keep_special_with_chat_shows_and_scores_the_template_too(model_dir, tiny, tmp_path, capsys):
    code, _, stderr = run(
        ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "temperature", "--chat",
         "--keep-special"], capsys
    )
    assert code == 0, stderr
    model, tokenizer = tiny
    saved = ScopeResult.load_json(tmp_path / "temperature.json")
    ids, user_mask = chat_prompt(tokenizer, PROMPT)
    assert len(saved.input_tokens) == ids.shape[1] > len(WORDS)  # the markers are there
    assert saved.metadata["settings"]["keep_special"] is True
    alone = TemperatureScope(model, tokenizer, exclude_special_tokens=False).attribute(ids)[0]
    torch.testing.assert_close(saved.seq_attr, alone, rtol=1e-5, atol=1e-7)
    assert float(saved.seq_attr[~user_mask[0]].sum()) > 0  # template tokens get scores


@pytest.fixture(scope="module")
def spaced_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer, like SmolLM2's, has 'Paris' and ' Paris' as two
    tokens (a Metaspace word-level vocabulary), and whose head makes ' Paris' the
    clear prediction after PROMPT (its row of the unembedding points along the
    final hidden state there)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["the", "cat", "sat", "on", "Paris", "France"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *words, *("▁" + w for w in words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    model = make_model("llama")
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
        model.lm_head.weight[vocab["▁Paris"]] = 20 * hidden / hidden.norm() ** 2
    folder = tmp_path_factory.mktemp("tiny-spaced")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_target_without_its_leading_space_gets_a_one_line_hint(spaced_model_dir, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", spaced_model_dir, "--scope", "semantic", "--out", tmp_path]
    code, stdout, stderr = run(argv + ["--target", "Paris"], capsys)
    assert code == 0, stderr
    assert "prediction: ' Paris'" in stdout
    hints = [line for line in stderr.splitlines() if line.startswith("hint: ")]
    assert len(hints) == 1 and "did you mean ' Paris'" in hints[0], stderr
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.output_tokens == ["Paris"] and "did you mean" in saved.metadata["target_hint"]
    # with the space, or a target that is not the prediction either way: no hint
    for target in (" Paris", "France"):
        code, _, stderr = run(argv + ["--target", target], capsys)
        assert code == 0 and "hint:" not in stderr, stderr
        assert ScopeResult.load_json(tmp_path / "semantic.json").metadata["target_hint"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_device_without_cuda_is_one_line_before_the_model_loads(model_dir, tmp_path, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr("captum_jscopes.models._from_pretrained", lambda *a, **k: loaded.append(a))
    code, _, stderr = run(["attribute", PROMPT, "--model", model_dir, "--device", "cuda", "--out", tmp_path], capsys)
    assert code == 1 and stderr.count("\n") == 1 and "no CUDA" in stderr and "use --device cpu" in stderr, stderr
    assert not loaded


def test_explain_rejects_bad_arguments(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="unknown scope"):
        explain(model, tokenizer, PROMPT, "integrated")
    with pytest.raises(ValueError, match="fisher_estimator"):
        explain(model, tokenizer, PROMPT, "fisher", fisher_estimator="fast")
    with pytest.raises(ValueError, match="prompt is empty"):
        explain(model, tokenizer, " \n", "semantic")


def test_explain_takes_the_former_fisher_method_keyword_with_a_warning(tiny):
    model, tokenizer = tiny
    with pytest.warns(DeprecationWarning, match="fisher_estimator"):
        old = explain(model, tokenizer, PROMPT, "fisher", fisher_method="eig")
    assert old == explain(model, tokenizer, PROMPT, "fisher", fisher_estimator="eig")
    with pytest.raises(TypeError, match="not both"):
        explain(model, tokenizer, PROMPT, "fisher", fisher_estimator="exact", fisher_method="eig")  # before any warning


def test_fisher_method_flag_still_works_with_a_note(model_dir, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "fisher"]
    code, _, stderr = run(argv + ["--fisher-method", "eig"], capsys)
    assert code == 0, stderr
    assert "jscopes: note: --fisher-method is deprecated; use --fisher-estimator" in stderr
    old = ScopeResult.load_json(tmp_path / "fisher.json")
    code, _, stderr = run(argv + ["--fisher-estimator", "eig"], capsys)
    assert code == 0 and "deprecated" not in stderr, stderr
    new = ScopeResult.load_json(tmp_path / "fisher.json")
    torch.testing.assert_close(old.seq_attr, new.seq_attr)
    assert old.metadata["settings"] == new.metadata["settings"]
    code, _, stderr = run(argv + ["--fisher-method", "fast"], capsys)
    assert code == 2 and "invalid choice: 'fast'" in stderr and stderr.count("\n") == 1, stderr


def test_threads_sets_torchs_thread_count(model_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    argv = ["attribute", PROMPT, "--model", model_dir, "--out", tmp_path, "--scope", "semantic"]
    code, _, stderr = run(argv + ["--threads", "1"], capsys)
    assert code == 0 and calls == [1], stderr
    code, _, stderr = run(argv, capsys)  # left to torch
    assert code == 0 and calls == [1], stderr
    code, _, stderr = run(argv + ["--threads", "0"], capsys)
    assert code == 2 and "argument --threads: expected a whole number >= 1" in stderr, stderr
    # the help says when one thread is faster
    code, stdout, _ = run(["attribute-dataset", "--help"], capsys)
    assert code == 0 and "--threads N" in stdout and "1 thread is" in " ".join(stdout.split())


def test_old_results_still_say_whether_a_target_was_given(tmp_path):
    result = ScopeResult(input_tokens=["a", "b"], output_tokens=["c"], seq_attr=[1.0, 2.0],
                         metadata={"target_is_prediction": False})  # fmt: skip
    result.save_json(tmp_path / "old.json")
    assert no_target_given(ScopeResult.load_json(tmp_path / "old.json").metadata) is False
    assert no_target_given({"target_is_prediction": True}) is True
    assert no_target_given({"no_target_given": False}) is False and no_target_given({}) is None


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["attribute", PROMPT, "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["attribute", PROMPT, "--scope", "nope"], 2, "invalid choice: 'nope'"),
        ([], 2, "missing command"),
        (["bench", "nope"], 2, "invalid choice: 'nope'"),
        # bad values and input are usage errors (2), also those only the model's tokenizer can tell
        (["attribute", ""], 2, "the prompt is empty"),
        (["attribute", "  \n"], 2, "the prompt is empty"),
        (["attribute", PROMPT, "--target", ""], 2, "--target is empty"),
        (["attribute", PROMPT, "--model", "{model}", "--target", "zebra"], 2, "'zebra' is not in the model's vocabulary"),
        (["attribute", PROMPT, "--model", "{missing}"], 2, "does not exist"),
        (["attribute", "<bos>", "--model", "{model}"], 2, "only special tokens"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, status, message, model_dir, tmp_path, capsys):
    fill = {"{model}": str(model_dir), "{missing}": str(tmp_path / "no-such-model")}
    argv = [fill.get(a, a) for a in argv] + (["--out", tmp_path / "out"] if argv and argv[0] == "attribute" else [])
    code, stdout, stderr = run(argv, capsys)
    assert code == status
    assert stderr.startswith("jscopes: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_model_package_prints_the_install_command(monkeypatch, tmp_path, capsys):
    spec = EmbeddedModel(
        key="tiny-missing",
        title="Tiny Missing",
        gguf_name="tiny.gguf",
        parts=(("captum_jscopes_no_such_package", "tiny.gguf"),),
        install="pip install captum-jscopes-no-such-package",
    )
    monkeypatch.setitem(EMBEDDED_MODELS, spec.key, spec)
    monkeypatch.setenv("CAPTUM_JSCOPES_CACHE", str(tmp_path / "cache"))
    code, _, stderr = run(["attribute", PROMPT, "--model", "tiny-missing", "--out", tmp_path / "out"], capsys)
    assert code == 1
    assert stderr.startswith("jscopes: error: Tiny Missing is not available")
    assert "pip install captum-jscopes-no-such-package" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("how", ["flag", "flag-first", "env"])
def test_debug_shows_the_traceback(how, monkeypatch, tmp_path, capsys):
    argv = ["attribute", PROMPT, "--model", tmp_path / "no-such-model"]
    if how == "flag":
        argv.append("--debug")
    elif how == "flag-first":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("JSCOPES_DEBUG", "1")
    code, _, stderr = run(argv, capsys)
    assert code == 2  # a model folder that does not exist: a usage error
    assert "Traceback (most recent call last)" in stderr
    assert stderr.strip().splitlines()[-1].startswith("jscopes: error: model folder")


# ----------------------------------------------------------------------------- bench dispatch


def test_bench_forwards_the_remaining_arguments(monkeypatch, capsys):
    calls = []
    stub = types.ModuleType("captum_jscopes.bench.faithfulness")
    stub.main = lambda argv: calls.append(argv) or 3
    monkeypatch.setitem(sys.modules, "captum_jscopes.bench.faithfulness", stub)
    code, _, _ = run(["--debug", "bench", "faithfulness", "--n", "5", "extra", "--help"], capsys)
    assert (code, calls) == (3, [["--n", "5", "extra", "--help"]])

    def exits(argv):
        raise SystemExit(4)

    stub.main = exits
    assert run(["bench", "faithfulness"], capsys)[0] == 4


def test_bench_without_its_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(bench_command.BENCHMARKS, "speed", "captum_jscopes.no_such_benchmark")
    code, _, stderr = run(["bench", "speed", "--n", "1"], capsys)
    assert code == 1 and "Traceback" not in stderr
    assert stderr == "jscopes: error: the speed benchmark is not available: module captum_jscopes.no_such_benchmark is not installed\n"


def test_bench_alone_lists_the_benchmarks(capsys):
    code, stdout, stderr = run(["bench"], capsys)
    assert code == 2 and stdout == ""
    assert all(f"\n  {name} " in stderr for name in bench_command.BENCHMARKS), stderr
    assert "jscopes bench NAME --help" in stderr
    code, stdout, _ = run(["bench", "--help"], capsys)
    assert code == 0 and all(f"\n  {name} " in stdout for name in bench_command.BENCHMARKS)


def test_bench_names_the_program_for_a_benchmark_that_takes_it(monkeypatch, capsys):
    calls = []
    stub = types.ModuleType("captum_jscopes.bench.trust")
    stub.main = lambda argv, *, prog=None: calls.append((argv, prog)) or 0
    monkeypatch.setitem(sys.modules, "captum_jscopes.bench.trust", stub)
    assert run(["bench", "trust", "--n", "2"], capsys)[0] == 0
    assert calls == [(["--n", "2"], "jscopes bench trust")]


@pytest.mark.parametrize("benchmark", sorted(bench_command.BENCHMARKS))
def test_bench_help_reaches_the_real_benchmark(benchmark, capsys):
    code, stdout, stderr = run(["bench", benchmark, "--help"], capsys)
    assert code == 0, stderr
    assert stdout.startswith(f"usage: jscopes bench {benchmark} ")  # the benchmark's help, named as it is run
    assert "which benchmark" not in stdout


# ----------------------------------------------------------------------------- installed entry points


@pytest.mark.slow  # starts the installed console script and python -m
def test_console_script_and_python_dash_m():
    script = Path(sys.executable).parent / "jscopes"
    assert script.is_file(), "the jscopes console script is not installed (pip install -e .)"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "attribute" in done.stdout and "demo" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "captum_jscopes", "attribute", ""], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2  # an empty prompt: a usage error
    assert done.stderr == "jscopes: error: the prompt is empty: give the text whose continuation to explain\n"


# ----------------------------------------------------------------------------- the demo's claims


def test_every_demo_title_comes_with_checkable_claims():
    for example in DEMO_EXAMPLES:
        stems = {run.file_stem for run in example.runs}
        assert example.claims and example.note, example.name
        for claim in example.claims:
            assert claim.stem in stems, (example.name, claim)
            assert claim.token.strip() in example.prompt and claim.token.strip() in example.about
            assert claim.within >= 1
        # a note that names a function word ranked first says why
        assert "attention sink" in example.note or "'The'" not in example.note


def test_demo_claim_ranks_the_displayed_token():
    result = ScopeResult(
        input_tokens=["The", "Ġlargest", "ĠFrance", "Ġis"], output_tokens=["ĠParis"], seq_attr=[3.0, 2.0, 1.0, 0.5]
    )
    assert DemoClaim("fisher", " France", 3).rank(result) == 3
    assert DemoClaim("fisher", " France", 3).describe(result) == "holds: ' France' is 3rd"
    assert DemoClaim("fisher", " France").describe(result) == "does not hold (claimed: top 1): ' France' is 3rd"
    assert DemoClaim("fisher", " Rome").describe(result).endswith("' Rome' not in the prompt")


def test_demo_runs_on_the_tiny_model_and_checks_each_claim(model_dir, tmp_path, capsys, monkeypatch):
    """The demo's code path on a model that cannot know the answers: every claim is
    checked and its verdict printed (the word-level tokenizer knows only some words)."""
    from captum_jscopes.cli import demo_prompts

    # the same runs (without targets: the tiny vocabulary has no ' Paris') and claims, on PROMPT
    tiny_examples = tuple(
        demo_prompts.DemoExample(
            name=e.name,
            prompt=PROMPT,
            runs=tuple(demo_prompts.DemoRun(r.scope, None, r.stem) for r in e.runs),
            about=e.about,
            claims=tuple(DemoClaim(c.stem, " cat", c.within) for c in e.claims),
            note=e.note,
        )
        for e in DEMO_EXAMPLES
    )
    monkeypatch.setattr(demo_prompts, "DEMO_EXAMPLES", tiny_examples)
    code, stdout, stderr = run(["demo", "--out", tmp_path, "--model", model_dir], capsys)
    assert code == 0, stderr
    n_claims = sum(len(e.claims) for e in DEMO_EXAMPLES)
    verdicts = [line.strip() for line in stdout.splitlines() if line.strip().startswith("claim ")]
    assert len(verdicts) == n_claims
    pattern = r"claim (holds|does not hold \(claimed: top \d\)): ' cat' is \d+(st|nd|rd|th)"
    assert all(re.fullmatch(pattern, v) for v in verdicts), verdicts
    assert stdout.count("  note: ") == len(DEMO_EXAMPLES)


# ----------------------------------------------------------------------------- the default model


@pytest.mark.slow
def test_attribute_on_the_default_model(tmp_path, capsys):
    argv = ["attribute", "The capital of France is", "--target", " Paris", "--scope", "semantic", "--out", tmp_path]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["semantic.html", "semantic.json", "semantic.png"]
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert saved.metadata["model"] == "smollm2-135m-instruct"
    assert saved.metadata["prediction"]["token"] == " Paris"  # SmolLM2 gets it right (p ~ 0.77)
    assert saved.input_tokens == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    assert "prediction: ' Paris'" in stdout
    assert_valid_png(tmp_path / "semantic.png")
    assert saved.metadata["target_hint"] is None and "hint:" not in stderr


@pytest.mark.slow
def test_a_target_without_its_leading_space_gets_a_hint(tmp_path, capsys):
    argv = ["attribute", "The capital of France is", "--target", "Paris", "--scope", "semantic", "--out", tmp_path]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    assert "hint: " in stderr and "did you mean ' Paris'" in stderr, stderr
    assert "did you mean" in ScopeResult.load_json(tmp_path / "semantic.json").metadata["target_hint"]


@pytest.mark.slow
def test_a_prediction_that_is_part_of_a_character_is_explained(tmp_path, capsys):
    """SmolLM2 predicts the first byte of a Chinese character here (Captum 0.9 crashed on it)."""
    prompt = "我最喜欢的食物是寿司 🍣 和拉面 🍜，因为它们很"
    code, stdout, stderr = run(["attribute", prompt, "--scope", "semantic", "--out", tmp_path], capsys)
    assert code == 0, stderr
    saved = ScopeResult.load_json(tmp_path / "semantic.json")
    assert len(saved.output_tokens) == 1 and saved.metadata["no_target_given"] is True
    assert "semantic: top 5 tokens" in stdout


@pytest.mark.slow
def test_demo_writes_every_file_it_lists(tmp_path, capsys):
    code, stdout, stderr = run(["demo", "--out", tmp_path], capsys)
    assert code == 0, stderr
    listed = [Path(line.strip()) for line in stdout.split("files written:")[1].splitlines() if line.strip().startswith(str(tmp_path))]
    assert len(listed) == 3 * 10  # capital 3 runs, bias 4, lambada 3
    assert all(path.is_file() and path.stat().st_size > 0 for path in listed)
    assert {path.parent.name for path in listed} == {"capital", "bias", "lambada"}
    for target in ("liberal", "conservative"):
        saved = ScopeResult.load_json(tmp_path / "bias" / f"semantic-{target}.json")
        assert saved.metadata["target"] == f" {target}" and saved.output_tokens == [f"\u0120{target}"]  # raw piece
        assert saved.output_display == [f" {target}"]
    lambada = ScopeResult.load_json(tmp_path / "lambada" / "fisher.json")
    assert lambada.metadata["prediction"]["token"] == " helmet"
    # every title's claim holds on the default model, as the notes say
    for example in DEMO_EXAMPLES:
        for claim in example.claims:
            saved = ScopeResult.load_json(tmp_path / example.name / f"{claim.stem}.json")
            assert claim.holds(saved), (example.name, claim.describe(saved))
    assert stdout.count("claim holds") == sum(len(e.claims) for e in DEMO_EXAMPLES)


def test_attribute_dataset_shows_the_bars_inside_each_prompt(model_dir, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"text": PROMPT, "target": "big red house"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["attribute-dataset", source, "--model", model_dir, "--out", out, "--scope", "semantic", "--target-field", "target"]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    assert "semantic: target tokens" in stderr and "/3" in stderr
    assert (out / "records.jsonl").is_file()


def test_stdout_is_line_buffered_also_into_a_file_or_a_pipe(monkeypatch, capsys):
    # A file or pipe is block-buffered by default: the summaries printed as each
    # scope finishes would only appear when the process ends.
    import io

    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    assert not stream.line_buffering
    monkeypatch.setattr(sys, "stdout", stream)
    assert main(["--version"]) == 0
    assert stream.line_buffering
    stream.seek(0)
    assert stream.buffer.getvalue()  # the version line reached the buffer without an explicit flush
