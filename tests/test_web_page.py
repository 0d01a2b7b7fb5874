"""The page of ``quantart serve`` in a real browser (Debian's chromium + chromedriver, driven by
selenium): the service on 127.0.0.1 with the tiny model and the sample styles; upload a photo and a
style, move a slider, check the result image; upload a text file and see the service's 400 reason.
Skipped, with the reason, only where no chromium/chromedriver is installed (``make test`` installs
them with apt-get where it can)."""
from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from cluster_helpers import free_port

ray = pytest.importorskip("ray")
pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(600)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# a mark, not a fixture's skip: it is decided before the (module-scoped) service starts
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="no chromium + chromedriver here (`make test` installs Debian's "
    "chromium and chromium-driver with apt-get where apt-get is available)")

STYLE_SIZE = 64
WAIT_S = 180
# Headless as root; without the background-networking flags chromium's own connections are refused here.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,860"]
READ_RESULT_JS = """
const done = arguments[arguments.length - 1];
fetch(document.getElementById("result-img").src).then((r) => r.arrayBuffer()).then((buf) => {
  let s = ""; for (const byte of new Uint8Array(buf)) s += String.fromCharCode(byte); done(btoa(s));
});"""


@pytest.fixture(scope="module")
def service(model_dir, assets_dir):
    """The service with the repository's sample styles (what ``quantart serve --sample-styles`` does)."""
    from ray import serve

    from quantart_runtime.cluster.serve import start_service

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield start_service(model_dir, host="127.0.0.1", port=free_port(), cpus_per_replica=0.5,
                            style_size=STYLE_SIZE, backend="onnxruntime", sample_styles=assets_dir / "style")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def browser(tmp_path):
    """Headless chromium through chromedriver, with a fresh profile in the test's tmp dir."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_page_files_styles_listing_and_health(service, assets_dir):
    """Without a browser: the page and its files are served (nothing else by name), the listing holds
    the sample styles with the ids POST /v1/styles gives their bytes, and those ids stylize."""
    from quantart_runtime.cluster.http_io import style_id_for
    from quantart_runtime.cluster.web import PAGE_FILES

    page = httpx.get(f"{service}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(f"web/{name}" in page.text for name in PAGE_FILES if name != "index.html")
    for name, media_type in PAGE_FILES.items():
        response = httpx.get(f"{service}/web/{name}", timeout=30)
        assert response.status_code == 200 and response.headers["content-type"] == media_type
    assert httpx.get(f"{service}/web/serve.py", timeout=30).status_code == 404
    assert httpx.get(f"{service}/web/..%2Fserve.py", timeout=30).status_code == 404

    styles = httpx.get(f"{service}/v1/styles", timeout=30).json()["styles"]
    paths = sorted((assets_dir / "style").glob("*.jpg"))
    assert [s["style_id"] for s in styles] == [style_id_for(p.read_bytes(), STYLE_SIZE) for p in paths]
    assert all(s["name"] and s["thumbnail"].startswith("data:image/jpeg;base64,") for s in styles)
    photo = (assets_dir / "content" / "1.jpg").read_bytes()
    response = httpx.post(f"{service}/v1/stylize", params={"style_id": styles[-1]["style_id"]}, content=photo,
                          timeout=120)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    health = httpx.get(f"{service}/v1/health", timeout=30).json()
    assert health["backend"] == "onnxruntime" and health["precision"] == "fp32"


@needs_browser
def test_page_stylizes_and_shows_the_service_reasons(browser, service, model_dir, assets_dir, tmp_path):
    from quantart_runtime import Stylizer, load_image
    from quantart_runtime.cluster.http_io import style_id_for
    from quantart_runtime.util import psnr_uint8

    photo = Image.open(assets_dir / "content" / "2.jpg").convert("RGB").crop((10, 30, 210, 182))  # 200x152
    photo.save(tmp_path / "photo.png")
    art = Image.open(assets_dir / "style" / "3.jpg").convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)
    art.save(tmp_path / "my style.png")  # not one of the samples
    (tmp_path / "notes.txt").write_text("this is not a picture\n")
    wait = WebDriverWait(browser, WAIT_S)

    browser.get(f"{service}/")
    health = httpx.get(f"{service}/v1/health", timeout=30).json()
    wait.until(lambda d: f"{health['backend']} · {health['precision']}" in _text(d, "health"))
    samples = httpx.get(f"{service}/v1/styles", timeout=30).json()["styles"]
    assert len(samples) == len(list((assets_dir / "style").glob("*.jpg")))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile[data-style-id]")) == len(samples))

    # a photo, then an uploaded style: registered through POST /v1/styles and selected
    browser.find_element(By.ID, "content-file").send_keys(str(tmp_path / "photo.png"))
    browser.find_element(By.ID, "style-file").send_keys(str(tmp_path / "my style.png"))
    style_id = style_id_for((tmp_path / "my style.png").read_bytes(), STYLE_SIZE)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'.tile[data-style-id="{style_id}"]')
               .get_attribute("aria-pressed") == "true")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tile[data-style-id]")) == len(samples) + 1
    wait.until(lambda d: "content_ratio 1.00" in _text(d, "result-info"))

    # move the content_ratio slider to its minimum: the page asks again with content_ratio=0
    slider = browser.find_element(By.ID, "content-ratio")
    slider.send_keys(Keys.HOME)
    wait.until(lambda d: "content_ratio 0.00" in _text(d, "result-info") and not d.execute_script(
        "return document.body.classList.contains('busy')"))
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(browser.execute_async_script(READ_RESULT_JS)))))
    content = load_image((tmp_path / "photo.png").read_bytes())
    assert result.shape == content.shape == (152, 200, 3)
    assert np.abs(result.astype(int) - content.astype(int)).mean() > 5  # stylized, not the photo back
    with Stylizer.load(model_dir, backend="onnxruntime", intra_op_threads=1) as reference:
        code = reference.encode_style(load_image(tmp_path / "my style.png"), size=STYLE_SIZE)
        want = reference.stylize(content, code, content_ratio=0.0, output_ratio=1.0)
    assert psnr_uint8(result, want) > 40  # what the runtime gives for the page's settings
    browser.save_screenshot(str(tmp_path / "web_page.png"))
    assert Image.open(tmp_path / "web_page.png").size[0] > 0

    # a text file as the photo: the service's own 400 reason is on the page
    said = httpx.post(f"{service}/v1/stylize", params={"style_id": style_id}, timeout=60,
                      content=(tmp_path / "notes.txt").read_bytes())
    assert said.status_code == 400
    browser.find_element(By.ID, "content-file").send_keys(str(tmp_path / "notes.txt"))
    wait.until(lambda d: "400" in _text(d, "message") and said.json()["error"] in _text(d, "message"))
    browser.save_screenshot(str(tmp_path / "web_page_error.png"))


def test_serve_cli_refuses_a_bad_sample_styles_folder(model_dir, tmp_path):
    from click.testing import CliRunner

    from quantart_runtime.cluster.cli import serve

    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--sample-styles", str(tmp_path / "none")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--sample-styles", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no images" in result.output
