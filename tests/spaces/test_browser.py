"""A real browser against the served app: headless Debian Chromium driven by Selenium through chromium-driver
uploads a scene image, asks about it, waits for the streamed answer, saves a screenshot and checks the page.

Chromium comes from Debian (`apt-get install chromium chromium-driver`, done here when missing); nothing is
downloaded by Selenium itself. Without apt-get (or root) the test is skipped, saying why."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.spaces.conftest import HAS_DEFAULTS, chat

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
APT_TIMEOUT_S, PAGE_TIMEOUT_S, ANSWER_TIMEOUT_S = 600, 30, 60


def ensure_chromium() -> None:
    if CHROMIUM.exists() and DRIVER.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("Debian chromium + chromium-driver are missing and apt-get is not available (or not root) to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
            if done.returncode:
                pytest.skip(f"apt-get could not install chromium: {done.stderr[-500:]}")
    except subprocess.TimeoutExpired:
        pytest.skip(f"apt-get install chromium took over {APT_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def bot_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]')).strip()


def wait_for_streamed_answer(driver) -> list[str]:
    """Every distinct answer text seen until it stops changing (three polls in a row); the last one is final."""
    seen = []

    def settled():
        text = bot_text(driver)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
            settled.still = 0
        elif text:
            settled.still += 1
        return settled.still >= 3

    settled.still = 0
    wait_for(settled, ANSWER_TIMEOUT_S, "the streamed answer", every=0.5)
    return seen


def test_upload_ask_and_read_the_streamed_answer(browser, server, examples, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    path, question, expected = examples[2]
    browser.get(server)
    upload = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chat-input input[type=file]"), PAGE_TIMEOUT_S,
                      "the chat input")
    upload[0].send_keys(path)  # the paperclip's file input
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chat-input img"), PAGE_TIMEOUT_S, "the upload preview")
    box = browser.find_element(By.CSS_SELECTOR, "#chat-input textarea")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)

    answers = wait_for_streamed_answer(browser)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    page = browser.find_element(By.TAG_NAME, "body").text
    answer = answers[-1]
    assert question in page and answer in page and not answer.startswith(chat.ERROR_MARK), answer
    assert browser.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="user"] img')  # the image is in the chat
    assert "visual tokens (current image)" in page and "llava" in page  # the info panel
    if HAS_DEFAULTS:
        assert expected in answer.lower(), (question, expected, answer)
