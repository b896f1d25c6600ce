"""The chat page in a real browser (Debian's headless Chromium driven by Selenium) against real
gateways on the session's vLLM engine: what the page sends must arrive in the event log exactly
as the same request through the API would.

Skipped when ``chromium`` or ``/usr/bin/chromedriver`` is missing (``.ci/run`` installs them).
Selenium is given the installed driver, so Selenium Manager never downloads one. Screenshots
go to ``$HHH_SCREENSHOTS_DIR`` when set (``docs/screenshots`` for the README), else to pytest's
temporary folder.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from serving.adapters.config import AdapterSettings
from serving.engine import EngineProcess
from streams.codec import COMPLETIONS, FEEDBACK
from streams.events import RankingFeedback, ThumbsFeedback
from streams.sqlite_log import SqliteEventLog
from tests.fixtures.gateway import API_KEYS, RunningGateway, start_gateway
from tests.serving.test_gateway import logged

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        CHROMIUM is None or not CHROMEDRIVER.exists(),
        reason="no headless browser: apt-get install chromium chromium-driver (.ci/run does)",
    ),
]

WAIT_S = 90
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1100,780", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def open_site(
    vllm_engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    """A gateway with auth off and short answers."""
    running = start_gateway(vllm_engine.url, tmp_path_factory.mktemp("web-open"), max_tokens=24)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def auth_site(
    vllm_engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    """A gateway with auth on (keys: ``API_KEYS``) and short answers."""
    running = start_gateway(vllm_engine.url, tmp_path_factory.mktemp("web-auth"), max_tokens=24,
                            auth=True, api_keys=API_KEYS)
    yield running
    running.stop()


LABELER_KEYS = API_KEYS | {"sk-labeler-2": {"user": "max", "roles": ["labeler"]}}


@pytest.fixture(scope="module")
def labeling_site(
    vllm_engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    """A gateway with auth on, two labelers, and a labeler queue that reads its event log."""
    home = tmp_path_factory.mktemp("web-labeling")
    running = start_gateway(
        vllm_engine.url, home, max_tokens=16, auth=True, api_keys=LABELER_KEYS,
        adapter_log=lambda: SqliteEventLog(home / "events.db"),
        adapter_settings=AdapterSettings(store_root=home / "adapters"),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("HHH_SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait(browser: WebDriver, condition: Callable[[WebDriver], T], message: str) -> T:
    """Poll ``condition`` until it is truthy (``WAIT_S`` at most); its value."""
    return WebDriverWait(browser, WAIT_S).until(condition, message)


def visible(browser: WebDriver, selector: str) -> WebElement:
    return wait(browser, lambda b: next((e for e in b.find_elements(By.CSS_SELECTOR, selector)
                                         if e.is_displayed()), False), f"{selector} is not shown")


def open_page(browser: WebDriver, site: RunningGateway) -> None:
    """Load the chat page in a fresh tab session (no key or name kept from an earlier test)."""
    browser.get(f"{site.url}/healthz")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{site.url}/")
    visible(browser, "#login, #chat")


def sign_in_with_key(browser: WebDriver, site: RunningGateway, key: str) -> None:
    open_page(browser, site)
    visible(browser, "#api-key").send_keys(key + Keys.ENTER)
    visible(browser, "#message")


def queue_item(browser: WebDriver) -> str | None:
    """Ask the queue for the next item (as the button does); the id of the item shown."""
    queue = browser.find_element(By.ID, "queue")
    fetches = queue.get_attribute("data-fetches") or "0"
    browser.find_element(By.ID, "queue-open").click()
    wait(browser, lambda _: queue.get_attribute("data-fetches") not in (None, fetches),
         "the queue did not answer")
    shown = browser.find_elements(By.CSS_SELECTOR, "#queue-item .turn[data-item-id]")
    return shown[0].get_attribute("data-item-id") if shown else None


def sign_in_as(browser: WebDriver, site: RunningGateway, user: str) -> None:
    open_page(browser, site)
    visible(browser, "#user-name").send_keys(user + Keys.ENTER)
    visible(browser, "#message")


def ask(browser: WebDriver, question: str, compare: int = 0) -> list[WebElement]:
    """Send ``question`` (comparing ``compare`` answers if set); the answer cards once complete."""
    turns = len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant"))
    if compare:
        box = browser.find_element(By.ID, "compare")
        if not box.is_selected():
            box.click()
        browser.find_element(By.CSS_SELECTOR, f"#compare-n option[value='{compare}']").click()
    browser.find_element(By.ID, "message").send_keys(question + Keys.ENTER)
    selector = f".turn.assistant:nth-of-type({2 * turns + 2}) .answer"
    return wait(browser, lambda b: (cards := b.find_elements(By.CSS_SELECTOR, selector))
                and all(c.get_attribute("data-finished") for c in cards) and cards,
                "the answers did not finish streaming")


def text_of(card: WebElement) -> str:
    return card.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent")


def status_is(browser: WebDriver, card: WebElement, status: str) -> None:
    wait(browser, lambda _: card.find_element(By.CSS_SELECTOR, ".status").text == status,
         f"the answer's status did not become {status!r}")


def press(browser: WebDriver, *keys: str) -> None:
    ActionChains(browser).send_keys(*keys).perform()


def api_event_id(site: RunningGateway, path: str, body: dict, key: str | None = None) -> str:
    """The event id the API gives for ``body`` (equal content gives an equal id)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{site.url}{path}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def content(event: ThumbsFeedback) -> dict:
    """What an event says, without its identity (event id) and time."""
    return event.model_dump(exclude={"event_id", "created_at"})


def same_origin_only(browser: WebDriver, site: RunningGateway) -> None:
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)")
    fetched = [url for url in loaded if not url.startswith("data:")]
    assert fetched and all(url.startswith(site.url) for url in fetched), fetched


def test_a_streamed_answer_gets_a_vote_and_a_changed_vote_as_the_api_would_log_them(
    browser: WebDriver, open_site: RunningGateway, screenshots: Path,
) -> None:
    sign_in_as(browser, open_site, "ann")
    (card,) = ask(browser, "How do I make pancakes?")
    completion_id = card.get_attribute("data-completion-id")
    assert int(card.get_attribute("data-chunks")) > 1  # the answer arrived in pieces
    assert card.find_element(By.CSS_SELECTOR, ".adapter").text == "base"
    (completion,) = logged(open_site, COMPLETIONS, lambda e: e.completion_id == completion_id)
    assert completion.completion == text_of(card) and completion.user_id == "ann"

    card.find_element(By.CSS_SELECTOR, ".vote.up").click()
    status_is(browser, card, "saved")
    card.find_element(By.CSS_SELECTOR, ".comment-toggle").click()
    card.find_element(By.CSS_SELECTOR, ".comment-text").send_keys("too short")
    card.find_element(By.CSS_SELECTOR, ".vote.down").click()
    status_is(browser, card, "vote changed")
    assert card.find_element(By.CSS_SELECTOR, ".vote.down").get_attribute("aria-pressed") == "true"
    assert card.find_element(By.CSS_SELECTOR, ".vote.up").get_attribute("aria-pressed") == "false"
    browser.save_screenshot(str(screenshots / "chat.png"))

    events = logged(open_site, FEEDBACK,
                    lambda e: getattr(e, "completion_id", None) == completion_id, 2)
    assert all(isinstance(event, ThumbsFeedback) for event in events)
    by_vote = {event.vote: event for event in events}
    assert set(by_vote) == {"up", "down"}
    assert (by_vote["up"].comment, by_vote["down"].comment) == (None, "too short")
    assert {event.user_id for event in events} == {"ann"}
    # The API, sent the same changes of mind, logs the same content (each change is an event of
    # its own, with its own id and time).
    for body in ({"completion_id": completion_id, "vote": "up", "user": "ann"},
                 {"completion_id": completion_id, "vote": "down", "comment": "too short", "user": "ann"}):
        event_id = api_event_id(open_site, "/v1/feedback", body)
        (from_api,) = logged(open_site, FEEDBACK, lambda e, event_id=event_id: e.event_id == event_id)
        assert content(from_api) == content(by_vote[body["vote"]])
    same_origin_only(browser, open_site)


def test_compared_answers_ranked_with_a_tie_are_logged_as_the_api_would_log_them(
    browser: WebDriver, open_site: RunningGateway, screenshots: Path,
) -> None:
    sign_in_as(browser, open_site, "ann")
    cards = ask(browser, "What should I pack for a picnic?", compare=3)
    ids = [card.get_attribute("data-completion-id") for card in cards]  # in the order shown
    completions = logged(open_site, COMPLETIONS, lambda e: e.completion_id in ids, 3)
    assert len({c.request_id for c in completions}) == 1 and len(set(ids)) == 3
    assert {c.completion for c in completions} == {text_of(card) for card in cards}

    press(browser, Keys.ENTER)  # nothing ranked yet: a warning, nothing sent
    warning = visible(browser, ".turn.assistant:last-of-type .rank-bar .warning")
    assert "not ranked" in warning.text
    press(browser, "2", "t", "3")  # 2 and 3 tie for best; 1, left out, comes last
    assert [card.get_attribute("data-place") for card in cards] == ["", "=1", "=1"]
    assert not warning.is_displayed()
    browser.save_screenshot(str(screenshots / "compare.png"))
    press(browser, Keys.ENTER)

    turn = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[-1]
    event_id = wait(browser, lambda _: turn.get_attribute("data-event-id"), "no ranking sent")
    assert "Ranking sent: 2 = 3 > 1" in turn.find_element(By.CSS_SELECTOR, ".preview").text
    (event,) = logged(open_site, FEEDBACK, lambda e: e.event_id == event_id)
    assert isinstance(event, RankingFeedback)
    assert event.ranking == [[ids[1], ids[2]], [ids[0]]] and event.unusable == []
    assert (event.user_id, event.labeler_id, event.criterion) == ("ann", "ann", "helpfulness")
    body = {"ranking": [[ids[1], ids[2]], ids[0]], "unusable": [], "criterion": "helpfulness",
            "user": "ann"}
    assert api_event_id(open_site, "/v1/rankings", body) == event_id


def test_the_order_of_compared_answers_is_random(
    browser: WebDriver, open_site: RunningGateway,
) -> None:
    open_page(browser, open_site)
    orders = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import("/web/ranking.js").then(({ shuffledOrder }) =>
          done(Array.from({ length: 600 }, () => shuffledOrder(3).join(""))));
    """)
    # Each of the 6 orders is missed by 600 uniform draws with probability 6·(5/6)^600 ≈ 1e-47.
    assert set(orders) == {"".join(p) for p in itertools.permutations("012")}


def test_a_ranking_with_one_usable_answer_shows_the_api_detail(
    browser: WebDriver, open_site: RunningGateway,
) -> None:
    sign_in_as(browser, open_site, "ann")
    first, _ = ask(browser, "Tell me about tea.", compare=2)
    first.find_element(By.CSS_SELECTOR, ".rank-unusable").click()
    assert first.get_attribute("data-place") == "unusable"
    press(browser, Keys.ENTER)
    error = visible(browser, "#error")
    refusal = "400 too_few_completions: a ranking needs at least two usable completions, got 1"
    assert refusal in error.text
    warning = browser.find_elements(By.CSS_SELECTOR, ".rank-bar .warning")[-1]
    assert "Not sent: a ranking needs at least two usable completions" in warning.text


def test_with_auth_on_a_page_without_a_key_shows_a_login_form_and_a_wrong_key_its_detail(
    browser: WebDriver, auth_site: RunningGateway, screenshots: Path,
) -> None:
    open_page(browser, auth_site)
    key_field = visible(browser, "#api-key")
    assert not browser.find_element(By.ID, "user-name").is_displayed()
    key_field.send_keys("sk-forged" + Keys.ENTER)
    detail = visible(browser, "#login-detail")
    wait(browser, lambda _: detail.text == "the API key is not valid", "no detail for a wrong key")
    browser.save_screenshot(str(screenshots / "login.png"))

    key_field.clear()
    key_field.send_keys("sk-alice" + Keys.ENTER)
    visible(browser, "#message")
    assert "sk-alice" not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('hhh.apiKey')") == "sk-alice"
    (card,) = ask(browser, "Hello!")
    card.find_element(By.CSS_SELECTOR, ".vote.up").click()
    status_is(browser, card, "saved")
    completion_id = card.get_attribute("data-completion-id")
    (event,) = logged(auth_site, FEEDBACK,
                      lambda e: getattr(e, "completion_id", None) == completion_id)
    assert (event.user_id, event.vote) == ("alice", "up")
    body = {"completion_id": completion_id, "vote": "up"}
    assert api_event_id(auth_site, "/v1/feedback", body, key="sk-alice") == event.event_id

    browser.execute_script("sessionStorage.setItem('hhh.apiKey', 'sk-revoked')")  # revoked since
    browser.refresh()
    detail = visible(browser, "#login-detail")
    assert detail.text == "the API key is not valid"
    assert not browser.find_element(By.ID, "chat").is_displayed()


def test_the_api_docs_render_from_the_gateway_alone(
    browser: WebDriver, open_site: RunningGateway, screenshots: Path,
) -> None:
    browser.get(f"{open_site.url}/docs")
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 5,
         "Swagger UI did not render the API's operations")
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/chat/completions", "/v1/feedback", "/v1/rankings", "/v1/hhh/config"} <= paths
    browser.save_screenshot(str(screenshots / "docs.png"))
    same_origin_only(browser, open_site)


def test_two_labelers_work_the_queue_at_once_without_getting_the_same_item(
    browser: WebDriver, labeling_site: RunningGateway, screenshots: Path,
) -> None:
    sets = [post_chat(labeling_site, f"Question {i} for the labelers?") for i in range(2)]
    ids = {completion_id for completion_ids in sets for completion_id in completion_ids}

    lena = browser.current_window_handle
    sign_in_with_key(browser, labeling_site, "sk-labeler")
    first = wait(browser, lambda b: queue_item(b), "the queue never offered an item to lena")
    browser.switch_to.new_window("tab")  # its own session storage: another labeler
    sign_in_with_key(browser, labeling_site, "sk-labeler-2")
    second = wait(browser, lambda b: queue_item(b), "the queue never offered an item to max")
    assert first != second  # lena holds the first one

    cards = browser.find_elements(By.CSS_SELECTOR, "#queue-item .answer")
    shown = [card.get_attribute("data-completion-id") for card in cards]
    assert len(shown) == 2 and set(shown) <= ids
    press(browser, "2", Keys.ENTER)  # max: the second answer shown is better
    visible(browser, "#queue-empty")  # lena still holds the other item
    browser.close()
    browser.switch_to.window(lena)

    browser.save_screenshot(str(screenshots / "queue.png"))
    press(browser, "1", Keys.ENTER)  # lena ranks hers, then gets the one max ranked
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f"[data-item-id='{second}']"),
         "lena was not offered the item max ranked")
    max_best = browser.find_element(By.CSS_SELECTOR, f".answer[data-completion-id='{shown[1]}']")
    press(browser, max_best.get_attribute("data-position"), Keys.ENTER)  # she agrees with max
    visible(browser, "#queue-empty")

    rankings = logged(labeling_site, FEEDBACK, lambda e: isinstance(e, RankingFeedback), 3)
    assert sorted((e.labeler_id, e.user_id) for e in rankings) == [
        ("lena", "lena"), ("lena", "lena"), ("max", "max")]
    assert all({cid for group in e.ranking for cid in group} <= ids for e in rankings)
    by_max = next(e for e in rankings if e.labeler_id == "max")
    assert by_max.ranking == [[shown[1]], [shown[0]]]
    body = {"ranking": [shown[1], shown[0]], "unusable": [], "criterion": "helpfulness"}
    assert api_event_id(labeling_site, "/v1/rankings", body, key="sk-labeler-2") == by_max.event_id

    progress = ("done today: 2 · remaining: 0 · "
                "agreement with the other labelers: 100 % of 1 pairs")
    wait(browser, lambda b: queue_item(b) is None
         and b.find_element(By.ID, "queue-progress").text == progress,
         "lena's progress did not reach the log")

    sign_in_with_key(browser, labeling_site, "sk-alice")  # not a labeler
    browser.find_element(By.ID, "queue-open").click()
    assert "403 not_a_labeler: the labeler queue is for API keys with the labeler role" in (
        visible(browser, "#error").text)
    assert not browser.find_element(By.ID, "queue").is_displayed()


def post_chat(site: RunningGateway, question: str, n: int = 2) -> list[str]:
    """Alice's chat with ``n`` answers, through the API; their completion ids."""
    body = {"model": "hhh", "n": n, "messages": [{"role": "user", "content": question}]}
    response = httpx.post(f"{site.url}/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": "Bearer sk-alice"})
    assert response.status_code == 200, response.text
    return [choice["completion_id"] for choice in response.json()["choices"]]
