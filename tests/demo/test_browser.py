"""The demo in a real browser (headless Chromium driven by Playwright) against a real server."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.support import ROOT, read_metrics, wait_for
from tools.demo_screenshot import CHROMIUM, wait_until_chat_finished

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Headless, and quiet on a closed network: no background updates, sync or QUIC probes.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / ".artifacts"


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is needed (Debian's chromium package): install it with "
            "`scripts/test-deps` as root, which `make test` runs",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tiny_server):
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.goto(f"{tiny_server.url}/ui/")
    page.locator("#instruction textarea").wait_for()
    yield page
    context.close()


def totals(client) -> dict:
    summary = client.get("/feedback/summary").json()
    up = sum(model["up"] for model in summary["models"].values())
    votes = sum(
        row["wins_a"] + row["wins_b"] + row["ties"] + row["both_bad"] for row in summary["pairwise"]
    )
    return {"up": up, "votes": votes}


# Records, in the page itself, the length of the last answer after every change of the chat's
# DOM: each streamed update Gradio renders is seen, however fast the engine produced it (polling
# from the test could miss them all when the whole answer arrives within one poll).
BOT_MESSAGE = '#chatbot [aria-label^="bot\'s message"]'
WATCH_ANSWER_LENGTHS = """BOT_MESSAGE => {
    window.answerLengths = [];
    const chat = document.querySelector('#chatbot');
    const record = () => {
        const answers = chat.querySelectorAll(BOT_MESSAGE);
        if (answers.length) window.answerLengths.push(answers[answers.length - 1].innerText.length);
    };
    new MutationObserver(record).observe(chat, {childList: true, subtree: true,
                                               characterData: true});
}"""


def finished_text(page, locator, timeout_s: float = 20) -> str:
    """The locator's text once the chat's event has finished (its last update rendered)."""
    wait_until_chat_finished(page, timeout_s)
    return locator.inner_text() if locator.count() else ""


def test_a_chat_answer_streams_in_and_a_like_reaches_the_server(page, tiny_server):
    client = tiny_server.client
    before_feedback = totals(client)
    before = read_metrics(client)["alpaca_requests_total{outcome=success}"]

    page.evaluate(WATCH_ANSWER_LENGTHS, BOT_MESSAGE)
    page.locator("#instruction textarea").fill("Name three colours.")
    page.locator("#send").click()
    assert wait_for(
        lambda: read_metrics(client)["alpaca_requests_total{outcome=success}"] > before, 60
    ), "the server did not finish an answer"
    answer = page.locator(BOT_MESSAGE).last
    final_text = finished_text(page, answer)
    assert final_text.strip(), "no answer appeared"
    lengths = page.evaluate("window.answerLengths")
    growing = sorted({length for length in lengths if 0 < length < len(final_text)})
    assert growing, f"the answer appeared all at once (lengths rendered: {lengths})"

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)

    page.locator('#chatbot [aria-label="Like"]').last.click()
    status = page.locator("#feedback-status")
    status.filter(has_text="saved").wait_for(timeout=20_000)
    assert wait_for(lambda: totals(client)["up"] == before_feedback["up"] + 1, 10)


def test_a_blind_vote_in_the_compare_tab_reaches_the_server(page, tiny_server):
    client = tiny_server.client
    before = totals(client)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-instruction textarea").fill("Write a short poem.")
    page.locator("#compare-go").click()
    reveal = page.locator("#compare-reveal")
    reveal.filter(has_text="Which answer is better").wait_for(timeout=90_000)
    assert page.locator("#answer-a textarea").input_value().strip()
    assert page.locator("#answer-b textarea").input_value().strip()
    page.locator("#vote-a").click()
    reveal.filter(has_text="Vote saved").wait_for(timeout=20_000)
    text = reveal.inner_text()
    assert "greedy decoding" in text and "sampling" in text  # the sources are revealed
    assert wait_for(lambda: totals(client)["votes"] == before["votes"] + 1, 10)


def test_a_pair_from_an_evaluation_comparison_is_voted_on_blind(browser, tiny_server, tmp_path):
    """The Compare tab offers the pairs of an `alpaca-eval compare` file; votes reach the store."""
    from alpaca_serve.client.api import AlpacaClient
    from alpaca_serve.demo.app import build_demo
    from alpaca_serve.demo.settings import DemoSettings
    from alpaca_serve.evaluation.comparison import attach_generation_ids, save_comparison
    from tests.support import free_port

    comparison = {
        "labels": ["ours", "text-davinci-003"],
        "seed": 0,
        "pairs": [
            {
                "pair_id": "pair-000",
                "instruction": "Say hello.",
                "input": "",
                "motivation_app": "Gmail",
                "left_is": "b",
                "left": {"output": "Hello there, friend!", "generation_id": None},
                "right": {"output": "Hi.", "generation_id": None},
            }
        ],
    }
    with AlpacaClient(tiny_server.url) as store:
        assert attach_generation_ids(comparison, store) == 2
    path = tmp_path / "comparison.json"
    save_comparison(path, comparison)
    left_id = comparison["pairs"][0]["left"]["generation_id"]
    right_id = comparison["pairs"][0]["right"]["generation_id"]
    blocks = build_demo(DemoSettings(server_url=tiny_server.url, comparison_file=path))
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-next").click()
        reveal = page.locator("#compare-reveal")
        reveal.filter(has_text="Which answer is better").wait_for(timeout=20_000)
        assert page.locator("#answer-a textarea").input_value() == "Hello there, friend!"
        assert page.locator("#answer-b textarea").input_value() == "Hi."
        assert "davinci" not in reveal.inner_text()  # the sources stay hidden until the vote
        page.locator("#vote-a").click()
        reveal.filter(has_text="Vote saved").wait_for(timeout=20_000)
        assert "A was text-davinci-003" in reveal.inner_text()
        assert "B was ours" in reveal.inner_text()
        page_of_votes = tiny_server.client.get("/feedback/comparisons").json()["comparisons"]
        [vote] = [v for v in page_of_votes if v["generation_ids"] == sorted([left_id, right_id])]
        assert (vote["winner"], vote["voter"]) == (left_id, "human")
        assert vote["session_id"].startswith("ui-")
    finally:
        context.close()
        blocks.close()


def test_the_compare_tab_pits_the_base_against_a_trained_adapter_blind(
    browser, tiny_adapter_server
):
    """Without configured arms, the Compare tab of a server with adapters asks the base and the
    newest adapter (here one copied in just now, so it is the newest): the answers differ, the
    reveal names both, and the stored vote is between one generation of each model."""
    from alpaca_serve.feedback import open_store
    from alpaca_serve.feedback.store import default_database_url

    server = tiny_adapter_server
    client = server.client
    base = client.get("/info").json()["model"]
    shutil.copytree(server.adapters_dir / "alpaca-lora", server.adapters_dir / "browser-lora")
    assert client.post("/admin/adapters/reload").status_code == 200
    last_vote = max(
        (row["id"] for row in client.get("/feedback/comparisons").json()["comparisons"]), default=0
    )
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    try:
        page = context.new_page()
        page.goto(f"{server.url}/ui/")
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-instruction textarea").fill("Give one tip for staying healthy.")
        page.locator("#compare-go").click()
        reveal = page.locator("#compare-reveal")
        reveal.filter(has_text="Which answer is better").wait_for(timeout=90_000)
        shown = {
            side: page.locator(f"#answer-{side} textarea").input_value() for side in ("a", "b")
        }
        assert "adapter" not in reveal.inner_text()  # blind until the vote
        page.locator("#vote-a").click()
        reveal.filter(has_text="Vote saved").wait_for(timeout=20_000)
        sources = re.search(r"A was (.+); B was (.+)\.$", reveal.inner_text().strip())
    finally:
        context.close()
        shutil.rmtree(server.adapters_dir / "browser-lora")
        client.post("/admin/adapters/reload")

    assert shown["a"].strip() and shown["b"].strip() and shown["a"] != shown["b"]
    assert sources, reveal
    labels = {"a": sources[1], "b": sources[2]}
    assert sorted(labels.values()) == [
        "the LoRA adapter browser-lora",
        f"the base model {base}",
    ]
    [vote] = [
        row
        for row in client.get("/feedback/comparisons").json()["comparisons"]
        if row["id"] > last_vote
    ]
    with open_store(default_database_url(server.data_dir)) as store:
        generations = store.generations_by_id(vote["generation_ids"])
    models = {g["model"]: g for g in generations.values()}
    assert set(models) == {base, "browser-lora"}  # the stored vote names both models
    model_of = {"the LoRA adapter browser-lora": "browser-lora", f"the base model {base}": base}
    for side in ("a", "b"):  # each side's answer is the one its revealed model gave
        assert models[model_of[labels[side]]]["response"].strip() == shown[side].strip()
    assert vote["winner"] == models[model_of[labels["a"]]]["id"]


# The Leaderboard table's rows as the page shows them: one list of cell texts per model (the
# header row, and rows not filled yet, left out). Gradio draws the cells as a table's or, once
# the table is laid out for scrolling, as grid cells.
LEADERBOARD_ROWS = """() => [...document.querySelectorAll('#leaderboard-table [role=row]')]
    .filter(row => Number(row.getAttribute('aria-rowindex')) > 1)
    .map(row => [...row.querySelectorAll('[role=gridcell], td')].map(cell => cell.innerText.trim()))
    .filter(cells => cells.length === 5 && cells[1])"""


def test_the_leaderboard_tab_ranks_models_from_peoples_votes_and_refreshes(browser, tiny_server):
    """Votes between two imported models' answers reach the Leaderboard tab when the page opens:
    the better model first, the interval around each score, the vote count under the table; an
    automatic judge's votes (for the other model) are not counted; Refresh shows new votes."""
    import uuid

    from alpaca_serve.client.api import AlpacaClient

    suffix = uuid.uuid4().hex[:6]
    leader, challenger = f"alpaca-lora-{suffix}", f"davinci-{suffix}"
    answers = [{"instruction": f"Leaderboard question {n}?", "output": f"A{n}."} for n in range(9)]
    api = AlpacaClient(tiny_server.url)  # a connection per call
    ids = {model: api.import_generations(model, answers) for model in (leader, challenger)}

    def vote(winner: str, loser: str, questions, voter: str = "human") -> None:
        for n in questions:
            pair = [ids[winner][n], ids[loser][n]]
            api.send_comparison(pair, pair[0], f"board-{voter}-{suffix}-{n}", voter)

    vote(leader, challenger, range(3))
    vote(challenger, leader, [3])
    vote(challenger, leader, range(9), voter="machine")
    votes = tiny_server.client.get("/feedback/leaderboard", params={"rounds": 0}).json()["votes"]

    def shown() -> dict[str, list[str]]:
        """The rows by model, once the table shows both of this test's models."""
        page.wait_for_function(
            f"names => names.every(name => ({LEADERBOARD_ROWS})().some(row => row[1] === name))",
            arg=[leader, challenger],
            timeout=30_000,
        )
        return {row[1]: row for row in page.evaluate(LEADERBOARD_ROWS)}

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{tiny_server.url}/ui/")
        page.get_by_role("tab", name="Leaderboard").click()
        status = page.locator("#leaderboard-status")
        status.filter(has_text=f"Made from {votes} votes by people").wait_for(timeout=30_000)
        before = shown()
        assert list(before).index(leader) < list(before).index(challenger)
        for model in (leader, challenger):
            rank, _, score, interval, count = before[model]
            assert int(rank) >= 1
            low, high = map(float, interval.split(" to "))
            assert low <= float(score) <= high and count == "4"
        assert float(before[leader][2]) > float(before[challenger][2])

        vote(challenger, leader, range(4, 9))  # five more wins of the challenger, from people
        page.locator("#leaderboard-refresh").click()
        status.filter(has_text=f"Made from {votes + 5} votes by people").wait_for(timeout=30_000)
        after = shown()
        assert list(after).index(challenger) < list(after).index(leader)
        assert (after[challenger][4], after[leader][4]) == ("9", "9")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "leaderboard-tab.png"), full_page=True)
    finally:
        context.close()
