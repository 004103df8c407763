"""Shared test fixtures: the read-only ../shared/data folder, and torch thread settings.

On a developer machine other jobs often share the cores; several torch processes each spinning
up a full OpenMP thread pool slow each other down by an order of magnitude. Outside CI the tests
therefore use one thread (override with LLMLAB_TEST_THREADS); CI has the machine to itself. Under
pytest-xdist (`make test` runs two workers, one per core) every worker uses one thread, and so do
the processes the tests start (OMP_NUM_THREADS, inherited): two workers already fill two cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("LLMLAB_TEST_THREADS", "1"))
if not os.environ.get("CI") or os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(int(os.environ.get("LLMLAB_TEST_THREADS", "1")))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present (shared test data lives beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def varied_model():
    """varied_model(config) -> a random Transformer whose weights are large enough that greedy text
    does not repeat one token: what engine and batching tests need to tell outputs apart."""
    import torch

    from llmlab.model.transformer import Transformer

    def make(config, seed: int = 0):
        torch.manual_seed(seed)
        model = Transformer(config)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.3)
        return model.eval()

    return make


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def driver():
    """Headless Debian Chromium through its own chromedriver, for the page tests (the chat page,
    the assistant page). An explicit driver path makes Selenium skip Selenium Manager, which would
    try to download a browser; `make test` installs both packages (`make browser`)."""
    if not Path(CHROMIUM).is_file() or not Path(CHROMEDRIVER).is_file():
        pytest.skip(f"needs Debian's chromium and chromedriver at {CHROMIUM} and {CHROMEDRIVER} "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1300,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield browser
    browser.quit()
