"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for UI tests."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import ElementClickInterceptedException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# No background traffic: this machine has no network beyond loopback.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1600,1000",
)


def artifacts_dir(default: Path) -> Path:
    """Where screenshots go: $MLPLATFORM_TEST_ARTIFACTS if set (to keep them), else a temp dir."""
    folder = Path(os.environ.get("MLPLATFORM_TEST_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium(profile_dir: Path) -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise RuntimeError(
            "UI tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: webdriver.Chrome, *texts: str, timeout: float = 60) -> None:
    try:
        WebDriverWait(driver, timeout).until(
            lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts)
        )
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        missing = [t for t in texts if t not in body]
        raise AssertionError(
            f"{missing} not shown on {driver.current_url}; page text:\n{body[:3000]}"
        ) from None


def dismiss_dialogs(driver: webdriver.Chrome) -> None:
    """The UI greets a new instance with a newsletter dialog; skip it like a user would."""
    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        with suppress(WebDriverException):  # it may close by itself meanwhile
            button.click()


def click(driver: webdriver.Chrome, element: WebElement, timeout: float = 20) -> None:
    """Click like a user: a dialog the UI opens late (the newsletter's) is skipped first, then the click
    is tried again."""
    deadline = time.monotonic() + timeout
    while True:
        dismiss_dialogs(driver)
        try:
            element.click()
            return
        except ElementClickInterceptedException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
