"""The page in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser)
opens the page from uvicorn on 127.0.0.1, uploads a street scene and checks what a user sees.

The screenshot is kept as an artifact: in `tmp_path`, in $URBANSEG_ARTIFACTS if set, and at
/tmp/urbanseg-serve-screenshot.png.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from urbanseg.data.synth import write_dataset
from urbanseg.inference import load
from urbanseg.serve import create_app, running

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STABLE_SCREENSHOT = Path("/tmp/urbanseg-serve-screenshot.png")


def chromium_path() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def save_artifacts(screenshot: Path) -> None:
    targets = [STABLE_SCREENSHOT]
    if os.environ.get("URBANSEG_ARTIFACTS"):
        targets.append(Path(os.environ["URBANSEG_ARTIFACTS"]) / screenshot.name)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)


def test_upload_an_image_and_see_overlay_legend_and_downloads(tiny_checkpoint, tmp_path):
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    # imported here: Playwright is an optional test dependency, only needed once a browser exists
    from playwright.sync_api import expect, sync_playwright

    write_dataset(tmp_path / "scene", {"val": 1}, size=(256, 512), seed=3)  # larger than the model's 64x128
    image = next((tmp_path / "scene" / "leftImg8bit" / "val").rglob("*.png"))
    predictor = load(tiny_checkpoint, device="cpu")
    class_names = list(predictor.labels.class_names)
    screenshot = tmp_path / "urbanseg-serve-screenshot.png"

    with running(create_app(predictor, model_name=tiny_checkpoint.name)) as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            requests, problems = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(base_url + "/")

            # before any upload the legend lists every class of the model, read from /v1/model
            expect(page.locator("#legend li")).to_have_count(len(class_names))
            assert page.locator("#legend .name").all_inner_texts() == class_names
            expect(page.locator("#model-info")).to_contain_text("pytorch")

            page.set_input_files("#file", str(image))
            page.wait_for_selector("#frame:not([hidden])")
            page.wait_for_function("document.getElementById('mask').naturalWidth === 512")
            legend = page.locator("#legend .name").all_inner_texts()
            assert legend and set(legend) <= set(class_names)
            shares = [float(t.rstrip("%").lstrip("<")) for t in page.locator("#legend .share").all_inner_texts()]
            assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares) + 0.1)
            expect(page.locator("#stats")).to_contain_text("512 × 256")
            assert page.locator("#dl-label").get_attribute("download").endswith("_labelIds.png")
            assert page.locator("#dl-label").get_attribute("href").startswith("data:image/png;base64,")

            page.fill("#opacity", "70")
            assert page.evaluate("getComputedStyle(document.getElementById('mask')).opacity") == "0.7"
            page.click("button[data-view='entropy']")
            expect(page.locator("#entropy")).to_be_visible()
            page.click("button[data-view='overlay']")
            with page.expect_download() as download:
                page.click("#dl-overlay")
            assert download.value.suggested_filename.endswith("_overlay.png")

            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert not problems, problems
    offsite = [url for url in requests if not url.startswith((base_url, "data:", "blob:"))]
    assert not offsite, f"the page fetched from elsewhere (it must work offline): {offsite}"
    assert screenshot.stat().st_size > 10_000
    save_artifacts(screenshot)


def test_a_server_with_a_token_asks_for_it_once(tiny_checkpoint):
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    # imported here: Playwright is an optional test dependency, only needed once a browser exists
    from playwright.sync_api import expect, sync_playwright

    predictor = load(tiny_checkpoint, device="cpu")
    with running(create_app(predictor, token="s3cret")) as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            expect(page.locator("#token-form")).to_be_visible()
            expect(page.locator("#legend li")).to_have_count(0)
            page.fill("#token", "s3cret")
            page.click("#token-form button")
            expect(page.locator("#legend li")).to_have_count(predictor.labels.num_classes)
            expect(page.locator("#token-form")).to_be_hidden()
        finally:
            browser.close()
