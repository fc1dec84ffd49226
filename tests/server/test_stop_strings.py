"""Stop strings: the matcher (server/stop_strings.py) on its own, then through every route on the
scripted engine, streamed and not, then through vLLM on the tiny model.

What a client must notice: text that only looks like the start of a stop string comes at once
and whole; a stop string, even split across pieces, never reaches it, nor any part of it; the
generation ends there (the engine's request is aborted) with the finish reason "stop"."""

from __future__ import annotations

import json
import random

import pytest

from alpaca_serve.core.prompts import SECTION_HEADERS
from alpaca_serve.server.stop_strings import StopMatcher
from tests.support import read_metrics, start_server, wait_for

HEADERS = list(SECTION_HEADERS)


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    """What each piece released, then the tail at the end; and whether a stop string matched."""
    released = []
    for piece in pieces:
        text, matched = matcher.feed(piece)
        released.append(text)
        if matched:
            return released, True
    return [*released, matcher.finish()], False


# ---------------------------------------------------------------------------------------------
# The matcher


def test_text_that_cannot_begin_a_stop_string_is_released_at_once():
    matcher = StopMatcher(HEADERS)
    assert matcher.feed("The sky is blue") == ("The sky is blue", False)
    assert matcher.held == ""


@pytest.mark.parametrize(
    ("pieces", "released"),
    [
        (["Use C#", " daily"], ["Use C", "# daily", ""]),
        (["a ##", " b"], ["a ", "## b", ""]),
        (["a ### Inp", "ortant"], ["a ", "### Inportant", ""]),
        (["### Respons", "ibly"], ["", "### Responsibly", ""]),
        (["ends in ###"], ["ends in ", "###"]),
    ],
)
def test_a_tail_that_only_begins_a_header_is_held_then_released_whole(pieces, released):
    assert feed_all(StopMatcher(HEADERS), pieces) == (released, False)


def test_a_header_split_across_pieces_is_cut_and_nothing_of_it_is_released():
    matcher = StopMatcher(HEADERS)
    assert feed_all(matcher, ["Done.", "\n\n", "###", " Inst", "ruction:"]) == (
        ["Done.", "\n\n", "", "", ""],
        True,
    )
    assert matcher.matched == "### Instruction:"


def test_a_stop_string_inside_a_piece_releases_what_came_before_it():
    assert StopMatcher(["END"]).feed("all ENDED") == ("all ", True)
    assert StopMatcher(HEADERS).feed("### Response: hi") == ("", True)


def test_the_stop_string_that_completes_first_wins_and_a_tie_goes_to_the_first_listed():
    assert StopMatcher(["abcde", "bcd"]).feed("xabcdef") == ("xa", True)
    first = StopMatcher(["cd", "bcd"])
    assert first.feed("abcd") == ("ab", True)
    assert first.matched == "cd"


def test_a_match_that_starts_inside_the_held_tail_is_found():
    matcher = StopMatcher(["aab"])
    assert matcher.feed("xaa") == ("x", False)
    assert matcher.feed("ab") == ("a", True)


def test_characters_of_several_bytes_next_to_a_stop_string_stay_whole():
    assert feed_all(StopMatcher(HEADERS), ["日本語#", "## Input:"]) == (["日本語", ""], True)
    assert feed_all(StopMatcher(HEADERS), ["🎉###", " 🎉"]) == (["🎉", "### 🎉", ""], False)
    assert feed_all(StopMatcher(["🎉!"]), ["ok 🎉", "!"]) == (["ok ", ""], True)


def test_a_match_must_end_in_matchable_text():
    """vLLM ignores stop strings until min_tokens tokens are out, then counts only a match that
    ends after them (one may begin before)."""
    matcher = StopMatcher(["END"])
    assert matcher.feed("an END", matchable=False) == ("an END", False)
    assert matcher.feed(" E", matchable=False) == (" ", False)
    assert matcher.feed("ND") == ("", True)


def reference_cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """The whole text cut before the stop string that completes first (vLLM's rule)."""
    ends = [(text.find(stop) + len(stop), i, stop) for i, stop in enumerate(stops) if stop in text]
    if not ends:
        return text, False
    end, _, stop = min(ends)
    return text[: end - len(stop)], True


def random_texts(rng: random.Random, alphabet: str, count: int, min_size: int, max_size: int):
    return ["".join(rng.choices(alphabet, k=rng.randint(min_size, max_size))) for _ in range(count)]


def split_cases(count: int, seed: int = 0):
    """Texts in pieces and stop lists over small alphabets (so stops occur, overlap and repeat),
    multi-byte characters included, and the edge cases: no pieces, empty pieces."""
    rng = random.Random(seed)
    yield [], ["#"]
    yield ["", "#", "", "a"], ["#a"]
    for _ in range(count):
        pieces = random_texts(rng, "ab#c 語", rng.randint(0, 12), 0, 6)
        stops = random_texts(rng, "ab#語", rng.randint(1, 3), 1, 4)
        yield pieces, stops


def test_any_split_of_any_text_gives_what_cutting_the_whole_text_gives():
    for pieces, stops in split_cases(2000):
        check_split(pieces, stops)


def check_split(pieces: list[str], stops: list[str]):
    matcher = StopMatcher(stops)
    released, matched, fed = [], False, ""
    for piece in pieces:
        text, matched = matcher.feed(piece)
        released.append(text)
        fed += piece
        if matched:
            break
        # Held back: only the tail, and only when it begins a stop string.
        assert "".join(released) + matcher.held == fed, (pieces, stops)
        assert not matcher.held or any(stop.startswith(matcher.held) for stop in stops), (
            pieces,
            stops,
        )
    else:
        released.append(matcher.finish())
    assert ("".join(released), matched) == reference_cut("".join(pieces), stops), (pieces, stops)


# ---------------------------------------------------------------------------------------------
# Through the routes, on the scripted engine

SPLIT_HEADER = ["The answer.", "\n\n", "###", " Inst", "ruction:", " Now", " more."]


@pytest.fixture
def scripted(scripted_server):
    """The shared scripted server, its engine's script restored afterwards."""
    reply = scripted_server.engine.reply
    try:
        yield scripted_server
    finally:
        scripted_server.engine.reply = reply


def sse_data(response) -> list:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def ask(server, route: str, stream: bool, **fields) -> dict:
    """One request on `route`: the answer's text, its pieces as streamed, the finish reason,
    the completion tokens and the request id, whatever the route's shape."""
    model = server.settings.served_model_name
    if route == "generate":
        path, body = "/generate", {"instruction": "Say it.", **fields}
    elif route == "completions":
        fields["max_tokens"] = fields.pop("max_new_tokens", 64)
        path, body = "/v1/completions", {"model": model, "prompt": "Say it.", **fields}
    else:
        fields["max_tokens"] = fields.pop("max_new_tokens", 64)
        messages = [{"role": "user", "content": "Say it."}]
        path, body = "/v1/chat/completions", {"model": model, "messages": messages, **fields}
    if not stream:
        response = server.client.post(path, json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        request_id = response.headers["X-Request-Id"]
        if route == "generate":
            return {
                "text": answer["text"],
                "pieces": [answer["text"]],
                "finish": answer["finish_reason"],
                "tokens": answer["usage"]["completion_tokens"],
                "id": request_id,
            }
        choice = answer["choices"][0]
        text = choice["text"] if route == "completions" else choice["message"]["content"]
        return {
            "text": text,
            "pieces": [text],
            "finish": choice["finish_reason"],
            "tokens": answer["usage"]["completion_tokens"],
            "id": request_id,
        }
    if route != "generate":
        body["stream_options"] = {"include_usage": True}
    with server.client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = sse_data(response)
        request_id = response.headers["X-Request-Id"]
    assert events[-1] == "[DONE]"
    if route == "generate":
        pieces = [event["text"] for event in events[:-2]]
        finish, tokens = events[-2]["finish_reason"], events[-2]["usage"]["completion_tokens"]
    else:
        choices = [event["choices"][0] for event in events[:-2]]
        key = "text" if route == "completions" else "content"
        delta = (lambda c: c) if route == "completions" else (lambda c: c["delta"])
        pieces = [delta(c).get(key) for c in choices if delta(c).get(key)]
        finish = choices[-1]["finish_reason"]
        tokens = events[-2]["usage"]["completion_tokens"]
    return {
        "text": "".join(pieces),
        "pieces": pieces,
        "finish": finish,
        "tokens": tokens,
        "id": request_id,
    }


ROUTES = ["generate", "completions", "chat"]
BOTH = [pytest.param(False, id="whole"), pytest.param(True, id="streamed")]


@pytest.mark.parametrize("stream", BOTH)
@pytest.mark.parametrize("route", ROUTES)
def test_a_header_split_across_pieces_never_reaches_the_client_and_stops_the_engine(
    scripted, route, stream
):
    scripted.engine.reply = lambda prompt: SPLIT_HEADER
    answer = ask(scripted, route, stream)
    assert answer["text"] == "The answer."
    assert not any("#" in piece for piece in answer["pieces"])
    assert answer["finish"] == "stop"
    assert answer["tokens"] == 5  # up to the token that completed the header, as vLLM counts
    assert answer["id"] in scripted.engine.aborted  # the engine was told to stop
    assert scripted.engine.requests[-1].options.stop == ()  # the server matched it


@pytest.mark.parametrize("stream", BOTH)
@pytest.mark.parametrize("route", ROUTES)
def test_text_that_only_looks_like_a_header_comes_whole_and_at_once(scripted, route, stream):
    pieces = ["Use", " C#", " or", " ##", " notes", " ### Inp", "ortant", " end", " #"]
    scripted.engine.reply = lambda prompt: pieces
    answer = ask(scripted, route, stream)
    assert answer["text"] == "Use C# or ## notes ### Inportant end #"
    assert answer["finish"] == ("eos" if route == "generate" else "stop")  # OpenAI: "stop"
    assert answer["tokens"] == len(pieces)
    if stream:  # each piece as soon as it is sure not to begin a header; `#` with the next
        expected = ["Use", " C", "# or", " ## notes", " ### Inportant", " end", " #"]
        assert answer["pieces"] == expected


@pytest.mark.parametrize("stream", BOTH)
@pytest.mark.parametrize("route", ROUTES)
def test_a_requests_own_stop_list_is_cut_the_same_way(scripted, route, stream):
    scripted.engine.reply = lambda prompt: ["Done", " E", "N", " END", "ING", " more"]
    answer = ask(scripted, route, stream, stop=["ENDING", "zzz"])
    assert answer["text"] == "Done EN"
    assert answer["finish"] == "stop"
    assert answer["tokens"] == 5
    assert not any("END" in piece for piece in answer["pieces"])


@pytest.mark.parametrize("stream", BOTH)
@pytest.mark.parametrize("route", ROUTES)
def test_characters_of_several_bytes_next_to_a_stop_string_arrive_whole(scripted, route, stream):
    scripted.engine.reply = lambda prompt: ["日本", "語🎉#", "##", " Response:", "🎉"]
    answer = ask(scripted, route, stream)
    assert (answer["text"], answer["finish"], answer["tokens"]) == ("日本語🎉", "stop", 4)

    scripted.engine.reply = lambda prompt: ["日本", "語🎉#", "🎉##"]
    answer = ask(scripted, route, stream)
    assert answer["text"] == "日本語🎉#🎉##"


@pytest.mark.parametrize("stream", BOTH)
@pytest.mark.parametrize("route", ROUTES)
def test_a_stop_string_at_the_very_start_leaves_an_empty_answer(scripted, route, stream):
    scripted.engine.reply = lambda prompt: ["###", " Response:", " Hi", " there."]
    answer = ask(scripted, route, stream)
    assert (answer["text"], answer["finish"], answer["tokens"]) == ("", "stop", 2)
    if stream:
        assert answer["pieces"] == []


def test_stop_strings_count_only_after_min_tokens(scripted):
    scripted.engine.reply = lambda prompt: ["a", " END", " b", " END", " c"]
    answer = ask(scripted, "generate", False, stop=["END"], min_tokens=3)
    assert (answer["text"], answer["finish"], answer["tokens"]) == ("a END b", "stop", 4)


@pytest.mark.parametrize("route", ROUTES)
def test_an_answer_that_cannot_end_before_max_tokens_streams_header_text_at_once(scripted, route):
    """Stop strings count only after min_tokens tokens: with min_tokens = max_new_tokens none
    can end the answer, so text that begins one waits for nothing (only trailing white space
    waits, for the text after it)."""
    scripted.engine.reply = lambda prompt: SPLIT_HEADER
    tokens = len(SPLIT_HEADER)
    answer = ask(scripted, route, True, min_tokens=tokens, max_new_tokens=tokens)
    assert answer["text"] == "The answer.\n\n### Instruction: Now more."
    assert answer["pieces"] == ["The answer.", "\n\n###", " Inst", "ruction:", " Now", " more."]
    assert answer["tokens"] == tokens

    # The header ends in the 5th token: past min_tokens 4, it still ends the answer.
    cut = ask(scripted, route, True, min_tokens=4, max_new_tokens=tokens)
    assert (cut["pieces"], cut["finish"], cut["tokens"]) == (["The answer."], "stop", 5)


def test_every_choice_is_cut_at_its_stop_string_and_counted_to_it(scripted):
    scripted.engine.reply = lambda prompt: SPLIT_HEADER
    model = scripted.settings.served_model_name
    body = {"model": model, "prompt": "Say it.", "n": 2, "max_tokens": 64}
    answer = scripted.client.post("/v1/completions", json=body).json()
    assert [(c["text"], c["finish_reason"]) for c in answer["choices"]] == [
        ("The answer.", "stop")
    ] * 2
    assert answer["usage"]["completion_tokens"] == 2 * 5


@pytest.mark.parametrize("stream", BOTH)
def test_the_tokens_of_a_cut_stop_string_keep_their_logprobs_as_vllm_gives_them(scripted, stream):
    """vLLM reports every token up to the one completing the stop string, whose text is cut;
    streamed, the held-back tokens come with the final event."""
    scripted.engine.reply = lambda prompt: SPLIT_HEADER
    body = {"instruction": "Say it.", "logprobs": 0}
    if not stream:
        answer = scripted.client.post("/generate", json=body).json()
        tokens = [entry["token"] for entry in answer["logprobs"]]
    else:
        with scripted.client.stream("POST", "/generate", json={**body, "stream": True}) as r:
            events = sse_data(r)
        assert [event["text"] for event in events[:-2]] == ["The answer."]
        tokens = [entry["token"] for event in events[:-1] for entry in event["logprobs"]]
        assert [entry["token"] for entry in events[-2]["logprobs"]] == SPLIT_HEADER[1:5]
    assert tokens == SPLIT_HEADER[:5]


@pytest.fixture
def blocklisted(request, tmp_path):
    """A scripted server of its own whose blocklist has the phrase `C#`."""
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("code: C#\n")
    server = start_server(request, "scripted", {"ALPACA_BLOCKLIST": str(blocklist)}, tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("stream", BOTH)
@pytest.mark.parametrize(
    "pieces", [["I code in", " C#", ""], ["I code in", " C#", " daily."]], ids=["at_eos", "mid"]
)
def test_a_held_back_tail_is_filtered_when_it_is_released(blocklisted, pieces, stream):
    blocklisted.engine.reply = lambda prompt: pieces
    answer = ask(blocklisted, "generate", stream)
    assert answer["finish"] == "content_filter"
    assert answer["text"] == "I code in C"
    assert "#" not in "".join(answer["pieces"])


# ---------------------------------------------------------------------------------------------
# Through vLLM (slow): the stop string spans two tokens of a greedy answer


def test_vllm_answers_are_cut_at_a_stop_string_and_the_engine_stops(tiny_server):
    client = tiny_server.client
    body = {"prompt": "Once upon a time", "max_new_tokens": 64, "temperature": 0.0}
    full = client.post("/generate", json={**body, "logprobs": 0}).json()
    tokens = [entry["token"] for entry in full["logprobs"]]
    raw = "".join(tokens)
    assert raw.strip() == full["text"], "the tokens' texts do not add up to the answer"
    # A stop string made of the end of token k and the start of token k + 1, both plain text.
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens) + 1)]
    for k in range(len(tokens) // 3, len(tokens) - 2):
        left, right = tokens[k], tokens[k + 1]
        stop = left[-2:] + right[:2]
        if (left + right).isascii() and left.strip() and right.strip() and len(stop) >= 3:
            if raw.find(stop) == offsets[k + 1] - len(left[-2:]):
                break
    else:  # the tiny model is seeded, so its greedy answer is always the same
        pytest.fail(f"no stop string fits the tiny model's answer (did it change?): {tokens}")
    expected = raw[: raw.find(stop)].strip()
    before = read_metrics(client)

    cut = client.post("/generate", json={**body, "stop": [stop], "logprobs": 0}).json()
    assert cut["text"] == expected
    assert cut["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] == k + 2  # up to the token completing the stop
    assert [entry["token"] for entry in cut["logprobs"]] == tokens[: k + 2]

    with client.stream("POST", "/generate", json={**body, "stop": [stop], "stream": True}) as r:
        events = sse_data(r)
    assert "".join(event["text"] for event in events[:-2]) == expected
    assert events[-2]["finish_reason"] == "stop"
    assert events[-2]["usage"]["completion_tokens"] == k + 2

    # The engine stopped at the stop string: it made no more tokens than the answers counted.
    assert wait_for(lambda: read_metrics(client)["alpaca_num_requests_running"] == 0, 10, 0.05)
    after = read_metrics(client)
    made = after["alpaca_generation_tokens_total"] - before["alpaca_generation_tokens_total"]
    assert made == 2 * (k + 2)
    assert "finish_reason=stop" in tiny_server.log_text()
