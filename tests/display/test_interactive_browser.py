"""The interactive page of a multi-token result (captum_jscopes.display.interactive), in a
real headless browser: it renders, choosing an output token shows that token's
map, the summed view shows the sum, hostile tokens stay text, and the browser
console stays free of errors. Plus the page's source: self-contained, its JSON
block cannot be closed by a token.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``;
CI's ``.ci/run`` installs them) and selenium (the ``test`` extra). Without them
the browser tests FAIL, with the install command: they are not skipped."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from captum.attr import TextTokenInput
from helpers import assert_unchanged, make_model, snapshot

from captum_jscopes import LLMScopeAttribution, ScopeResult, SemanticScope
from captum_jscopes.display.interactive import DATA_ID, page_data, render_interactive_html, save_interactive_html
from captum_jscopes.core.text import CONTINUATION_MARK, token_labels

# drives a real headless Chromium: slow (pytest -m "not slow" leaves it out)
pytestmark = pytest.mark.slow

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
PROMPT = "Tom liked the food . he went to the"
TARGET = "big red house"

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</script>",
    "<script>window.__pwned = 1</script>",
    "\"quoted' <b>bold</b>",
    "&amp; &lt;",
    "<!--",
]


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by selenium, whose console log is readable."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed; run: .venv/bin/python -m pip install -e '.[test]'")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        missing = " and ".join(n for n, v in (("chromium", binary), ("chromedriver", driver_path)) if v is None)
        pytest.fail(f"{missing} not found: the browser test needs them. Install with: sudo sh -c '{INSTALL}'")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver path is given, so selenium-manager never goes to the network to find one
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, path):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.resolve().as_uri())
    return browser


def console_errors(browser) -> list:
    return [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def shown_scores(browser) -> torch.Tensor:
    spans = browser.find_elements("css selector", "#map .tok")
    return torch.tensor([float(s.get_attribute("data-score")) for s in spans], dtype=torch.float64)


def shown_colours(browser) -> list[str]:
    return [s.value_of_css_property("background-color") for s in browser.find_elements("css selector", "#map .tok")]


def output_buttons(browser) -> list:
    return browser.find_elements("css selector", "#outputs .out-token:not(.sum)")


# ----------------------------------------------------------------------------- results


@pytest.fixture(scope="module")
def result():
    """A real three-token Semantic Scope result of a tiny Llama."""
    from helpers import make_tokenizer

    tokenizer = make_tokenizer()
    model = make_model("llama")
    before = snapshot(model)
    found = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer), target=TARGET
    )
    assert_unchanged(model, before)
    assert found.token_attr.shape[0] == 3
    return found


def hostile_result() -> ScopeResult:
    n = len(HOSTILE) + 1
    token_attr = torch.arange(2 * n, dtype=torch.float32).reshape(2, n) + 1
    return ScopeResult(
        input_tokens=["Ġplain", *HOSTILE],
        output_tokens=["</script><img src=x onerror=alert(2)>", "\"'>"],
        seq_attr=token_attr.sum(0),
        token_attr=token_attr,
        output_probs=torch.tensor([0.5, 0.25]),
        metadata={"scope": "semantic<script>alert(3)</script>", "model": "</title><img src=x onerror=alert(4)>"},
    )


# ----------------------------------------------------------------------------- in the browser


def test_page_renders_every_token_and_the_first_output_tokens_map(browser, result, tmp_path):
    page = open_page(browser, save_interactive_html(result, tmp_path / "page.html"))
    spans = page.find_elements("css selector", "#map .tok")
    assert [s.get_attribute("textContent") for s in spans] == token_labels(result.input_display)
    assert [b.get_attribute("textContent") for b in output_buttons(page)] == result.output_display
    assert page.find_element("id", "view-sum").text.startswith("Σ all 3")
    # the first output token is shown first, with its own scores
    torch.testing.assert_close(shown_scores(page), result.token_attr[0].double(), rtol=1e-6, atol=1e-12)
    assert page.find_element("tag name", "body").get_attribute("data-view") == "0"
    # the scores show on hover: each token's title carries its score
    top = int(result.token_attr[0].argmax())
    assert f"{float(result.token_attr[0, top]):.4g}"[:4] in spans[top].get_attribute("title")
    assert page.title == page.find_element("id", "title").text != ""
    assert console_errors(page) == []


def test_choosing_an_output_token_shows_its_map(browser, result, tmp_path):
    page = open_page(browser, save_interactive_html(result, tmp_path / "page.html"))
    first = shown_colours(page)
    for k, button in enumerate(output_buttons(page)):
        button.click()
        torch.testing.assert_close(shown_scores(page), result.token_attr[k].double(), rtol=1e-6, atol=1e-12)
        assert page.find_element("tag name", "body").get_attribute("data-view") == str(k)
        assert button.get_attribute("aria-pressed") == "true"
        assert str(k + 1) in page.find_element("id", "shown").text
        if k == 1:
            assert shown_colours(page) != first  # another token's map, other colours
        # the strongest input token of this map is coloured the most intensely
        alphas = [float(re.findall(r"[\d.]+", c)[3]) if c.startswith("rgba") else 1.0 for c in shown_colours(page)]
        assert alphas.index(max(alphas)) == int(result.token_attr[k].argmax())
    assert console_errors(page) == []


def test_the_summed_view_shows_the_sum(browser, result, tmp_path):
    page = open_page(browser, save_interactive_html(result, tmp_path / "page.html"))
    page.find_element("id", "view-sum").click()
    torch.testing.assert_close(shown_scores(page), result.seq_attr.double(), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(shown_scores(page), result.token_attr.sum(0).double(), rtol=1e-6, atol=1e-12)
    assert page.find_element("tag name", "body").get_attribute("data-view") == "sum"
    assert "Sum over all 3" in page.find_element("id", "shown").text
    top_list = [li.text for li in page.find_elements("css selector", "#top li")]
    best = int(result.seq_attr.argmax())
    assert len(top_list) == 5 and f"(token {best})" in top_list[0]
    # the arrow keys go round: from the summed view to the first output token
    page.find_element("tag name", "body").send_keys("\ue014")  # ArrowRight
    assert page.find_element("tag name", "body").get_attribute("data-view") == "0"
    assert console_errors(page) == []


def test_hostile_tokens_stay_text(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException

    hostile = hostile_result()
    page = open_page(browser, save_interactive_html(hostile, tmp_path / "hostile.html"))
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert  # no onerror ran
    assert page.execute_script("return window.__pwned") is None
    # no element came out of a token: the only img / b are none, the only scripts are the page's two
    assert page.find_elements("tag name", "img") == [] and page.find_elements("tag name", "b") == []
    assert len(page.find_elements("tag name", "script")) == 2
    spans = page.find_elements("css selector", "#map .tok")
    shown = [s.get_attribute("textContent") for s in spans]
    assert shown == token_labels(hostile.input_display)
    assert all(token in shown for token in HOSTILE)  # each one verbatim, as text
    buttons = [b.get_attribute("textContent") for b in output_buttons(page)]
    assert buttons == hostile.output_display and "</script><img src=x onerror=alert(2)>" in buttons
    for k, button in enumerate(output_buttons(page)):
        button.click()
        torch.testing.assert_close(shown_scores(page), hostile.token_attr[k].double())
    assert "</title><img" in page.title and "alert(3)" in page.find_element("id", "title").text
    assert "onerror=alert(4)" in page.find_element("id", "metadata").get_attribute("textContent")
    assert console_errors(page) == []


def test_pieces_of_one_character_are_shown_once_and_named_in_their_tooltips(browser, tmp_path):
    # 'I love 🍣': the emoji is three byte-level pieces that only together decode
    tokens = ["I", "Ġlove", "ĠðŁ", "į", "£"]
    token_attr = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    grouped = ScopeResult(input_tokens=tokens, output_tokens=["ĠParis", "!"], seq_attr=token_attr.sum(0),
                          token_attr=token_attr)
    page = open_page(browser, save_interactive_html(grouped, tmp_path / "grouped.html"))
    spans = page.find_elements("css selector", "#map .tok")
    assert [s.get_attribute("textContent") for s in spans] == ["I", " love", " 🍣", CONTINUATION_MARK, CONTINUATION_MARK]
    assert "🍣 (2/3)" in spans[3].get_attribute("title") and spans[3].get_attribute("title").endswith(": 4.000")
    assert [b.get_attribute("textContent") for b in output_buttons(page)] == [" Paris", "!"]
    assert console_errors(page) == []


# ----------------------------------------------------------------------------- the page's source


def test_the_page_is_self_contained_and_its_data_cannot_close_the_script(result):
    plain = render_interactive_html(result)
    assert plain.startswith("<!DOCTYPE html>")
    # no address to load anything from: no URL, no src/href but the empty data: icon
    assert "http://" not in plain and "https://" not in plain and "src=" not in plain
    assert re.findall(r"href=\"[^\"]*\"", plain) == ['href="data:,"']
    hostile = hostile_result()
    text = render_interactive_html(hostile)
    assert text.count("<script") == 2 and text.count("</script>") == 2  # the page's own, nothing from the data
    assert "<img" not in text and "innerHTML" not in text
    block = re.search(rf'<script type="application/json" id="{DATA_ID}">(.*?)</script>', text, re.S).group(1)
    assert json.loads(block) == json.loads(json.dumps(page_data(hostile)))  # the escapes read back exactly


def test_page_data_holds_every_row_and_the_sum(result):
    data = page_data(result)
    torch.testing.assert_close(torch.tensor(data["scores"], dtype=torch.float64), result.token_attr.double())
    torch.testing.assert_close(torch.tensor(data["summed"], dtype=torch.float64), result.token_attr.double().sum(0))
    assert [o["prob"] for o in data["output"]] == pytest.approx(result.output_probs.double().tolist())
    assert data["metadata"]["target"] == TARGET


def test_page_data_rejects_what_it_cannot_show():
    with pytest.raises(TypeError, match="ScopeResult"):
        page_data(("tokens", [1.0]))
    bad = ScopeResult(input_tokens=["a"], output_tokens=["b"], seq_attr=[float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        page_data(bad)


# ----------------------------------------------------------------------------- the layer view


@pytest.fixture(scope="module")
def layered():
    """A three-token Semantic Scope result of a tiny Llama and its (3, L + 1, n)
    layer maps, from the same teacher-forced input (columns = the result's tokens)."""
    from helpers import make_tokenizer

    tokenizer = make_tokenizer()
    model = make_model("llama")
    scope = SemanticScope(model, tokenizer)
    wrapper = LLMScopeAttribution(scope, tokenizer)
    inp = TextTokenInput(PROMPT, tokenizer)
    found = wrapper.attribute(inp, target=TARGET)
    target_ids = torch.tensor(tokenizer.encode(TARGET, add_special_tokens=False))
    prompt, targets, ids, positions = wrapper.model_inputs(inp, target_ids)
    layers = scope.scope_output(ids, positions, targets[None], layers=True).scores[0, :, :, : prompt.shape[1]]
    torch.testing.assert_close(layers[:, 0], found.token_attr)  # row 0 is the result's map
    return found, layers


def grid_values(browser) -> torch.Tensor:
    """(L + 1, n) values of the layer grid, row 0 = the embeddings (the bottom row)."""
    rows = browser.find_elements("css selector", "#layer-grid tr[data-layer]")
    by_layer = {int(r.get_attribute("data-layer")): [float(td.get_attribute("data-value"))
                                                      for td in r.find_elements("css selector", "td.cell")]
                for r in rows}
    return torch.tensor([by_layer[l] for l in sorted(by_layer)], dtype=torch.float64)


def handoff_cells(browser) -> list[tuple[int, int]]:
    return sorted((int(td.find_element("xpath", "..").get_attribute("data-layer")), int(td.get_attribute("data-index")))
                  for td in browser.find_elements("css selector", "#layer-grid td.handoff"))


def test_the_layer_view_shows_the_chosen_output_tokens_grid(browser, layered, tmp_path):
    from captum_jscopes.analysis.layers import LayerMap
    from captum_jscopes.display.layers import HANDOFF_MIN

    found, layers = layered
    n_layers = layers.shape[1] - 1
    page = open_page(browser, save_interactive_html(found, tmp_path / "layers.html", layers=layers))
    rows = page.find_elements("css selector", "#layer-grid tr[data-layer]")
    # the deepest layer on top, the embeddings at the bottom, then the token labels
    assert [r.get_attribute("data-layer") for r in rows] == [str(l) for l in range(n_layers, -1, -1)]
    assert rows[-1].find_element("tag name", "th").text == "emb"
    heads = page.find_elements("css selector", "#layer-grid th.col-token")
    assert [h.get_attribute("textContent") for h in heads] == token_labels(found.input_display)
    assert "divided by its own maximum" in page.find_element("id", "layers").text

    def expected(grid):
        return grid.double() / grid.double().amax(-1, keepdim=True).clamp_min(1e-300)

    def expected_handoff(grid):
        lm = LayerMap(scores=grid[None], error=torch.zeros_like(grid[None]), input_ids=torch.zeros(1, grid.shape[1]),
                      attention_mask=torch.ones(1, grid.shape[1]), positions=torch.zeros(1, dtype=torch.long), scope="")
        peaks = expected(grid).amax(0)
        return sorted((int(h), t) for t, h in enumerate(lm.handoff()[0].tolist())
                      if 0 < h <= n_layers and peaks[t] >= HANDOFF_MIN)

    for k, button in enumerate(output_buttons(page)):
        button.click()
        torch.testing.assert_close(grid_values(page), expected(layers[k]), rtol=0, atol=1e-4)
        assert handoff_cells(page) == expected_handoff(layers[k])
        assert str(k + 1) in page.find_element("id", "layer-shown").text
    page.find_element("id", "view-sum").click()
    torch.testing.assert_close(grid_values(page), expected(layers.sum(0)), rtol=0, atol=1e-4)
    assert "sum" in page.find_element("id", "layer-shown").text
    # a cell's tooltip names the layer, the token and the raw score
    cell = page.find_elements("css selector", '#layer-grid tr[data-layer="1"] td.cell')[2]
    assert cell.get_attribute("title").startswith("after layer 1 · #2 ") and "score" in cell.get_attribute("title")
    assert console_errors(page) == []
    # without layers: no layer view, and the data are as before
    plain = open_page(browser, save_interactive_html(found, tmp_path / "plain.html"))
    assert plain.find_elements("id", "layer-grid") == [] and console_errors(plain) == []
    assert "layers" not in page_data(found)


def test_the_layer_view_keeps_hostile_tokens_text(browser, tmp_path):
    hostile = hostile_result()
    n = len(hostile.input_tokens)
    layers = torch.rand(2, 3, n, generator=torch.Generator().manual_seed(0))
    page = open_page(browser, save_interactive_html(hostile, tmp_path / "hostile_layers.html", layers=layers))
    assert page.execute_script("return window.__pwned") is None
    assert page.find_elements("tag name", "img") == [] and len(page.find_elements("tag name", "script")) == 2
    heads = [h.get_attribute("textContent") for h in page.find_elements("css selector", "#layer-grid th.col-token")]
    assert heads == token_labels(hostile.input_display) and all(token in heads for token in HOSTILE)
    assert console_errors(page) == []


def test_layer_data_rejects_what_it_cannot_show(result):
    n = len(result.input_tokens)
    with pytest.raises(ValueError, match=r"expected \(3, L \+ 1, "):
        page_data(result, layers=torch.ones(2, 3, n))
    with pytest.raises(ValueError, match="expected"):
        page_data(result, layers=torch.ones(3, 3, n + 1))
    with pytest.raises(ValueError, match="finite"):
        page_data(result, layers=torch.full((3, 3, n), float("nan")))
    data = page_data(result, layers=torch.ones(3, 4, n))
    assert data["layers"]["n_layers"] == 3 and len(data["layers"]["views"]) == 3
