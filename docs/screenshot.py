"""Take the README's picture of the `quantart serve` page (docs/images/web_page.png) with the demo model.

Usage (after `make demo`, which exports the demo model to outputs/demo/onnx; needs chromium + chromedriver,
`make browser` installs them):

    .venv/bin/python docs/screenshot.py [--model outputs/demo/onnx] [--out docs/images/web_page.png]

Starts the service on 127.0.0.1 with the sample styles, uploads a sample photo in headless chromium, picks a
sample style, waits for the result and saves the screenshot (atomically).
"""
from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@click.command()
@click.option("--model", type=click.Path(exists=True, file_okay=False), default="outputs/demo/onnx",
              show_default=True, help="Exported model directory.")
@click.option("--out", type=click.Path(dir_okay=False), default=str(ROOT / "docs" / "images" / "web_page.png"),
              show_default=True)
@click.option("--photo", type=click.Path(exists=True, dir_okay=False), default=str(ROOT / "assets/content/1.jpg"),
              show_default=True)
@click.option("--style-index", type=int, default=3, show_default=True, help="Which sample style tile to pick.")
def main(model, out, photo, style_index):
    """Serve MODEL, stylize PHOTO in the page with a sample style, save the screenshot to OUT."""
    import ray
    from ray import serve
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from quantart_runtime.cluster.serve import start_service
    from quantart_runtime.util import write_bytes

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        sys.exit("Error: no chromium + chromedriver (make browser installs them)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        url = start_service(model, host="127.0.0.1", port=_free_port(), cpus_per_replica=1, style_size=128,
                            backend="onnxruntime", sample_styles=ROOT / "assets" / "style")
        with tempfile.TemporaryDirectory() as tmp:
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for flag in FLAGS + [f"--user-data-dir={tmp}/profile"]:
                options.add_argument(flag)
            browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
            try:
                wait = WebDriverWait(browser, 180)
                browser.get(f"{url}/")
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".tile[data-style-id]")) > style_index)
                browser.find_element(By.ID, "content-file").send_keys(str(Path(photo).resolve()))
                browser.find_elements(By.CSS_SELECTOR, ".tile[data-style-id]")[style_index].click()
                wait.until(lambda d: "content_ratio" in d.find_element(By.ID, "result-info").text and not
                           d.execute_script("return document.body.classList.contains('busy')"))
                png = browser.get_screenshot_as_png()
            finally:
                browser.quit()
        write_bytes(out, png)
        click.echo(f"screenshot: {out}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
