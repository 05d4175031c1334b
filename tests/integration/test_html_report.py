"""The HTML report in a real browser (Debian's chromium, driven by Selenium through Debian's
chromium-driver, headless): every failing deviation visible, the summary's links landing on
them, the filters hiding what they should, and a screenshot of the page."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Run as root in a machine with no network: no sandbox, nothing fetched in the background.
_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "needs Debian's chromium and chromium-driver (tools/run-tests.sh installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only where the browser exists
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in _CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def _visible(elements: list[WebElement]) -> list[WebElement]:
    return [element for element in elements if element.is_displayed()]


def _failing(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "li.cause.failing")


@pytest.mark.needs_kvm
@pytest.mark.needs_ptrace
def test_check_report_shows_every_failure_and_filters_hide_the_rest(
    browser: WebDriver, tmp_path: Path
) -> None:
    expected = tmp_path / "expected"
    shutil.copytree(REPO / "expected", expected)
    hello = expected / "hello.yaml"
    hello.write_text(
        hello.read_text().replace("rip: 0x1000, rflags: 0x2}", "rip: 0x1000, rflags: 0x202}")
    )
    references = tmp_path / "qemu"
    shutil.copytree(REPO / "traces" / "qemu", references)
    (references / "tiny-bios.allowances.yaml").unlink()  # every deviation from QEMU fails
    report = tmp_path / "report.html"
    result = _cli(
        "check", "--expected", str(expected), "--references", str(references),
        "--scenario", "memory-setup", "--scenario", "hello", "--scenario", "tiny-bios",
        "--html", str(report),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    browser.get(report.as_uri())

    # Summary first: one row per scenario, a cell per judgment.
    rows = browser.find_elements(By.CSS_SELECTOR, "table.summary tr")[1:]
    assert [row.find_elements(By.TAG_NAME, "td")[0].text for row in rows] == [
        "memory-setup", "hello", "tiny-bios",
    ]  # fmt: skip
    assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows] == [
        "pass",
        "FAIL",
        "FAIL",
    ]
    failing = _failing(browser)
    assert len(failing) >= 2 and _visible(failing) == failing
    assert any("in.rflags: expected 0x202, got 0x2" in item.text for item in failing)
    assert any("KVM_SET_REGS: in.rdx: QEMU" in item.text for item in failing)
    # Every failure listed in the summary links to one of them.
    links = browser.find_elements(By.CSS_SELECTOR, "#failing a")
    [hello_failures, bios_failures] = browser.find_elements(By.CSS_SELECTOR, "#failing > li")
    assert hello_failures.text.startswith("hello\n") and bios_failures.text.startswith("tiny-bios")
    assert len(links) == len(failing)
    targets = {link.get_attribute("href").rsplit("#", 1)[1] for link in links}  # type: ignore[union-attr]
    assert targets == {item.get_attribute("id") for item in failing}
    # A group expands: its members are there once its <details> is opened.
    groups = browser.find_elements(By.CSS_SELECTOR, "li.cause.failing details:not([open])")
    if groups:
        groups[0].find_element(By.TAG_NAME, "summary").click()
        assert _visible(groups[0].find_elements(By.CSS_SELECTOR, "ul.members li"))
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "check-report.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    allowed = browser.find_elements(By.CSS_SELECTOR, "li.cause.allowed")
    assert _visible(allowed)  # memory-setup's deviations on purpose, shown
    browser.find_element(By.ID, "filter-failing").click()
    assert not _visible(allowed) and _visible(failing) == failing
    passing = browser.find_element(By.CSS_SELECTOR, "section.scenario[data-failed='0']")
    assert not passing.is_displayed()
    browser.find_element(By.ID, "filter-failing").click()

    Select(browser.find_element(By.ID, "filter-call")).select_by_value("KVM_SET_REGS")
    shown = _visible(_failing(browser))
    assert shown and all(item.get_attribute("data-call") == "KVM_SET_REGS" for item in shown)
    rows_shown = _visible(browser.find_elements(By.CSS_SELECTOR, "table.calls tr[data-call]"))
    assert rows_shown and {row.get_attribute("data-call") for row in rows_shown} == {"KVM_SET_REGS"}
    marked = browser.find_elements(By.CSS_SELECTOR, "tr.differs mark.fail")
    assert any("rflags" in mark.text for mark in _visible(marked))  # the field, highlighted
    summary_links = _visible(browser.find_elements(By.CSS_SELECTOR, "#failing a"))
    assert summary_links and all("KVM_SET_REGS" in link.text for link in summary_links)
    browser.save_screenshot(str(tmp_path / "check-report-filtered.png"))


def test_diff_report_thread_filter_hides_the_other_threads(
    browser: WebDriver, tmp_path: Path
) -> None:
    """QEMU's own tiny-bios trace with one input changed on each of its two threads, against
    the unchanged reference: one failing deviation per thread."""
    reference = REPO / "traces" / "qemu" / "tiny-bios.yaml"
    text = reference.read_text()
    vcpu_part = text.index("\n  vcpu0:\n")
    main, vcpu0 = text[:vcpu_part], text[vcpu_part:]
    main = main.replace(
        "req: KVM_SET_TSS_ADDR, arg: 0xfeffd000", "req: KVM_SET_TSS_ADDR, arg: 0xfeffe000"
    )
    vcpu0 = vcpu0.replace("rip: 0xfff0,", "rip: 0xfff4,", 1)
    subject = tmp_path / "subject.yaml"
    subject.write_text(main + vcpu0)
    report = tmp_path / "diff.html"
    result = _cli(
        "diff", str(subject), str(reference), "--allowances", "/dev/null", "--html", str(report)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    browser.get(report.as_uri())
    failing = _failing(browser)
    threads = {item.get_attribute("data-thread") for item in failing}
    assert threads == {"main", "vcpu0"} and _visible(failing) == failing
    Select(browser.find_element(By.ID, "filter-thread")).select_by_value("vcpu0")
    assert {item.get_attribute("data-thread") for item in _visible(_failing(browser))} == {"vcpu0"}
    tables = browser.find_elements(By.CSS_SELECTOR, "div.thread")
    assert {t.get_attribute("data-thread") for t in _visible(tables)} == {"vcpu0"}
    browser.save_screenshot(str(tmp_path / "diff-report-vcpu0.png"))
