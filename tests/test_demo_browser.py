"""End to end in a real headless Chromium: the demo served on localhost, an upload, a query, the results.

Chromium is Debian's package (/usr/bin/chromium; `.ci/run` installs it), driven through Playwright's Python
API pointed at that executable: nothing is downloaded. Without Chromium or Playwright the tests skip and say
why. `COLLM_DEMO_SCREENSHOT=docs/demo.png` (with `COLLM_DEMO_MODEL`, optionally `COLLM_DEMO_SAMPLE`) also
writes the README's screenshot.
"""

import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000
K = 8
SAMPLE_TEXTS = ("add a red circle", "make the square blue", "remove the circle")

if not os.path.isfile(CHROMIUM) or not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
pytest.importorskip("gradio", reason="gradio is not installed (pip install collm-hf[demo])")


def _scene(seed: int) -> Image.Image:
    """A 48 px picture of a few coloured shapes (enough to tell results apart in the screenshot)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (48, 48), tuple(int(v) for v in rng.choice([25, 128, 240], 1).repeat(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(2, 34, 2))
        colour = tuple(int(v) for v in rng.integers(30, 250, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + 12, y + 12], fill=colour)
    return image


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo on localhost: the tiny random model over a 24-image gallery.

    For the README's screenshot ($COLLM_DEMO_SCREENSHOT): $COLLM_DEMO_MODEL (e.g. the quickstart's) over the
    default gallery (the synthetic world), queried with its sample number $COLLM_DEMO_SAMPLE (default 0).
    """
    import datasets

    from collm_hf.testing_utils import tiny_model_and_processor
    from collm_hf.apps.demo import build_demo, launch

    root = tmp_path_factory.mktemp("demo_browser")
    model_path = os.environ.get("COLLM_DEMO_MODEL")
    if not model_path:
        model, processor = tiny_model_and_processor()
        model_path = str(root / "model")
        model.save_pretrained(model_path)
        processor.save_pretrained(model_path)
    reference, text = root / "reference.png", "make the square red and add a yellow circle"
    if os.environ.get("COLLM_DEMO_SCREENSHOT"):
        demo = build_demo(model_path, k=K, device="cpu")
        sample = demo.samples[int(os.environ.get("COLLM_DEMO_SAMPLE", "0"))]
        sample[0].save(reference)
        text = sample[1]
    else:
        gallery = datasets.Dataset.from_dict(
            {"image_id": [f"scene-{i:02d}" for i in range(24)], "image": [_scene(i) for i in range(24)]},
            features=datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()}))
        samples = [(_scene(200 + i), text) for i, text in enumerate(SAMPLE_TEXTS)]
        demo = build_demo(model_path, gallery, samples=samples, k=K, device="cpu")
        _scene(100).resize((96, 96), Image.NEAREST).save(reference)
    not_an_image = root / "holiday.png"
    not_an_image.write_text("this file only pretends to be a PNG")
    _, url, _ = launch(demo, host="127.0.0.1", port=_free_port(), block=False)
    yield {"url": url, "reference": str(reference), "text": text, "not_an_image": str(not_an_image), "root": root}
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(served["url"])
    page.wait_for_selector("#search-button")
    yield page
    page.close()


def _upload(page, path: str) -> None:
    page.set_input_files("#reference-image input[type=file]", path)


def test_upload_type_search_shows_results_and_screenshot(page, served):
    _upload(page, served["reference"])
    page.wait_for_selector("#reference-image img")
    page.fill("#modification-text textarea", served["text"])
    page.click("#search-button")
    page.wait_for_function(f"document.querySelectorAll('#results img').length >= {K}")
    results = page.locator("#results img")
    assert results.count() == K
    captions = page.locator("#results .caption-label").all_inner_texts()
    assert captions[0].startswith("#1 · ") and len(captions) == K
    scores = [float(c.split(" · ")[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    page.wait_for_function(  # every result image really decoded in the browser
        "Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)")
    status = page.inner_text("#status")
    assert "Image + text" in status and f"top {K} of" in status
    shot = served["root"] / "demo.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("COLLM_DEMO_SCREENSHOT"):
        page.screenshot(path=os.environ["COLLM_DEMO_SCREENSHOT"])


def test_bad_upload_missing_text_and_picked_samples(page, served):
    _upload(page, served["not_an_image"])
    page.click("#search-button")
    page.wait_for_function("document.querySelector('#status').innerText.includes('not an image')")
    assert "holiday.png" in page.inner_text("#status")
    page.wait_for_selector(".toast-body", state="attached")  # gr.Warning's toast, not an error trace
    assert "Traceback" not in page.content()

    page.reload()
    page.wait_for_selector("#search-button")
    page.locator(f"text={SAMPLE_TEXTS[1]}").first.click()  # pick a sample query: it fills image and text
    page.wait_for_selector("#reference-image img")
    assert page.input_value("#modification-text textarea") == SAMPLE_TEXTS[1]
    page.fill("#modification-text textarea", "")
    page.click("#search-button")  # the default mode needs text
    page.wait_for_function("document.querySelector('#status').innerText.includes('Type a modification text')")
    assert page.locator("#results img").count() == 0
    page.locator("#query-mode label", has_text="Image only").click()
    page.click("#search-button")
    page.wait_for_function(f"document.querySelectorAll('#results img').length >= {K}")
    assert "Image only" in page.inner_text("#status")
