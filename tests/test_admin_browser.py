"""The admin in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against pytest-django's live server.

Chromium missing is a failure, not a skip: ``.ci/run`` installs it, and locally
``apt-get install -y chromium chromium-driver`` does. ``MEMDB_TEST_BROWSER=skip`` skips
these tests on purpose. Screenshots go to ``tests/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.template.defaultfilters import filesizeformat

from memdb import api
from memdb.models import PersistentStorage
from tests.testapp.models import Legacy, Score, Tag

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).parent / "screenshots"
TABLES = "/admin/memdb/memorytable/"
STORAGE = "/admin/memdb/persistentstorage/"
WAIT = 20  # seconds


def size(n: int) -> str:
    return filesizeformat(n).replace("\xa0", " ")


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the module, with a throw-away profile."""
    if os.environ.get("MEMDB_TEST_BROWSER") == "skip":
        pytest.skip("MEMDB_TEST_BROWSER=skip")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"the admin browser tests need Chromium, and {', '.join(missing)} is missing: "
            "apt-get install -y chromium chromium-driver (as .ci/run does), or set "
            "MEMDB_TEST_BROWSER=skip to skip them on purpose",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'", pytrace=False)

    with tempfile.TemporaryDirectory(prefix="memdb-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            "--lang=en-US",
        ):
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            browser.set_page_load_timeout(WAIT)
            yield browser
        finally:
            browser.quit()


@pytest.fixture
def browser(driver: Any, live_server: Any) -> Iterator[Any]:
    """The module's browser, logged out, in light mode."""
    driver.delete_all_cookies()
    color_scheme(driver, "light")
    yield driver
    driver.delete_all_cookies()


def color_scheme(driver: Any, scheme: str) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
    )


def wait_for(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_until_stale(driver: Any, element: Any) -> None:
    """Wait until ``element`` left the document (the page navigated away).

    Asked mid-navigation, chromedriver may answer "Node with given id does not belong to
    the document" instead of a stale-element error: that means gone too.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, WAIT).until(gone)


def screenshot(driver: Any, name: str) -> Path:
    """The whole page, however tall, as ``tests/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(exist_ok=True)
    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path = SCREENSHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def user(username: str, *perms: str, staff: bool = True) -> User:
    account = User.objects.create_user(username, password="secret-pw", is_staff=staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        account.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return account


def log_in(driver: Any, live_server: Any, username: str, next_url: str = TABLES) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{live_server.url}/admin/login/?next={next_url}")
    form = wait_for(driver, "#login-form")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys("secret-pw")
    driver.find_element(By.CSS_SELECTOR, '#login-form input[type="submit"]').click()
    wait_until_stale(driver, form)


def row_cells(driver: Any, label: str) -> list[str]:
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-table="{label}"]')
    return [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]


def bar_width(driver: Any, label: str) -> float:
    """The bar's drawn width as a share of its track, in percent."""
    return float(
        driver.execute_script(
            "const s = document.querySelector(`tr[data-table='${arguments[0]}'] .memdb-bar span`);"
            "return 100 * s.getBoundingClientRect().width"
            " / s.parentElement.getBoundingClientRect().width;",
            label,
        )
    )


def test_staff_spools_a_table_from_the_memory_tables_page(browser: Any, live_server: Any) -> None:
    from selenium.webdriver.common.by import By

    Legacy.objects.bulk_create([Legacy(text=f"line {i} " * 8) for i in range(600)])
    Tag.objects.bulk_create([Tag(name=f"tag-{i}") for i in range(5)])
    api.spool("testapp.Legacy", "testapp.Tag")
    Score.objects.bulk_create([Score(player=f"player {i}", points=i) for i in range(4000)])
    user(
        "operator",
        "memdb.view_memorytable",
        "memdb.change_memorytable",
        "memdb.view_persistentstorage",
    )

    log_in(browser, live_server, "operator")

    table = wait_for(browser, "#memory-tables")
    assert browser.title == "Memory tables | Django site admin"
    breadcrumbs = browser.find_element(By.CSS_SELECTOR, ".breadcrumbs").text
    assert breadcrumbs.startswith("Home ›") and breadcrumbs.endswith("› Memory tables")
    before = row_cells(browser, "testapp.Score")
    assert before[3:5] == ["4000", "yes"], before
    assert before[7] == "—", "no snapshot yet"
    assert bar_width(browser, "testapp.Score") == 0
    assert bar_width(browser, "testapp.Legacy") == pytest.approx(100, abs=0.5)

    browser.find_element(
        By.CSS_SELECTOR, 'tr[data-table="testapp.Score"] input[value="Spool now"]'
    ).click()
    wait_until_stale(browser, table)
    wait_for(browser, "#memory-tables")

    snapshot = PersistentStorage.objects.get(app_label="testapp", model_name="Score")
    success = browser.find_element(By.CSS_SELECTOR, ".messagelist .success").text
    assert success.startswith(
        f"Spooled testapp.Score: 4000 rows, {size(snapshot.size)}, generation 1, in "
    ), success
    after = row_cells(browser, "testapp.Score")
    assert after[3:5] == ["4000", "no"], after
    assert after[7] == size(snapshot.size)
    largest = max(snapshot.size, PersistentStorage.objects.get(model_name="Legacy").size)
    assert bar_width(browser, "testapp.Score") == pytest.approx(
        100 * snapshot.size / largest, abs=0.5
    )
    assert bar_width(browser, "testapp.Tag") > 0

    screenshot(browser, "memory_tables")
    color_scheme(browser, "dark")
    dark = browser.execute_script(
        "return getComputedStyle(document.body).getPropertyValue('--body-bg').trim()"
    )
    assert dark and dark.lower() not in ("#fff", "#ffffff", "white"), dark
    screenshot(browser, "memory_tables-dark")
    color_scheme(browser, "light")

    browser.get(f"{live_server.url}{STORAGE}")
    wait_for(browser, "#result_list")
    listed = browser.find_element(By.CSS_SELECTOR, "#result_list").text
    assert "testapp.Score" in listed and size(snapshot.size) in listed
    screenshot(browser, "persistentstorage")


def test_non_staff_user_is_turned_away(browser: Any, live_server: Any) -> None:
    from selenium.webdriver.common.by import By

    user("visitor", "memdb.view_memorytable", "memdb.change_memorytable", staff=False)

    log_in(browser, live_server, "visitor")

    error = wait_for(browser, ".errornote").text
    assert "Please enter the correct username and password for a staff account" in error
    browser.get(f"{live_server.url}{TABLES}")
    wait_for(browser, "#login-form")
    assert "/admin/login/" in browser.current_url
    assert not browser.find_elements(By.CSS_SELECTOR, "#memory-tables")


def test_staff_without_the_view_permission_gets_403(browser: Any, live_server: Any) -> None:
    from selenium.webdriver.common.by import By

    user("clerk")

    log_in(browser, live_server, "clerk", next_url="/admin/")
    browser.get(f"{live_server.url}{TABLES}")

    assert "403 Forbidden" in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#memory-tables")


def test_swagger_ui_documents_the_memdb_endpoints(browser: Any, live_server: Any) -> None:
    """The control surface's Swagger UI renders in a real browser, offline (sidecar)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{live_server.url}/api/docs/")
    wait_for(browser, ".swagger-ui .opblock")
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {
        "/memdb/tables",
        "/memdb/tables/{label}",
        "/memdb/spool",
        "/memdb/restore",
        "/memdb/storage",
    } <= paths, paths
    screenshot(browser, "swagger_ui")
