"""`python -m benchmarks.profile_stream`: how py-spy's samples of the server's event loop are
grouped into where a streamed request's time goes, and its command line."""

from __future__ import annotations

import pytest

from benchmarks.profile_stream import classify, format_tally, main, main_thread_name, tally

MAIN = "thread (101): MainThread"
LOOP = "run (asyncio/runners.py:118);BaseEventLoop._run_once (asyncio/base_events.py:1922)"

RAW = "\n".join(
    [
        f"{MAIN};{LOOP};EpollSelector.select (selectors.py:468) 60",
        f"{MAIN};{LOOP};Handle._run (asyncio/events.py:84);"
        "OutputProcessor.process_outputs (vllm/v1/engine/output_processor.py:430);"
        "IncrementalDetokenizer.update (vllm/v1/engine/detokenizer.py:120) 12",
        f"{MAIN};{LOOP};Handle._run (asyncio/events.py:84);"
        "Generation.stream (server/pipeline.py:520);StopMatcher.feed (server/stop_strings.py:60) 3",
        f"{MAIN};{LOOP};Handle._run (asyncio/events.py:84);"
        "Generation.stream (server/pipeline.py:533);"
        "FilterChain.check_output (server/filters.py:300);"
        "search (re/__init__.py:176) 5",
        f"{MAIN};{LOOP};Handle._run (asyncio/events.py:84);"
        "completion_events (server/routes/openai.py:200);dumps (json/__init__.py:231) 8",
        f"{MAIN};{LOOP};Handle._run (asyncio/events.py:84);"
        "H11Protocol.data_received (uvicorn/protocols/http/h11_impl.py:200) 4",
        f"{MAIN};{LOOP} 2",
        "thread (102): Thread-3 (loop);Thread.run (threading.py:982);select (selectors.py:468) 500",
        "not a sample line",
    ]
)


def test_each_sample_goes_to_the_innermost_group_it_is_in():
    assert classify(["x (selectors.py:1)", "EpollSelector.select (selectors.py:468)"]) == "waiting"
    # The filter's regex search is the filter's time, not "other".
    assert (
        classify(
            [
                "Generation.stream (server/pipeline.py:533)",
                "f (server/filters.py:9)",
                "search (re/__init__.py:176)",
            ]
        )
        == "content filters"
    )
    assert classify(["g (server/pipeline.py:1)", "h (vllm/v1/engine/async_llm.py:3)"]) == (
        "vLLM engine client"
    )
    assert classify(["main (somewhere.py:1)"]) == "other"
    # With uvloop the loop waits in C: the loop's run call is the innermost Python frame.
    assert classify(["<module> (server/main.py:135)", "Runner.run (asyncio/runners.py:118)"]) == (
        "waiting"
    )


def test_only_the_event_loop_thread_is_counted():
    thread = main_thread_name(RAW)
    counts = tally(RAW, thread)

    assert thread == "MainThread"
    assert counts == {
        "waiting": 60,
        "vLLM output processing": 12,
        "stop strings": 3,
        "content filters": 5,
        "OpenAI responses": 8,
        "HTTP": 4,
        "asyncio": 2,
    }
    assert sum(tally(RAW).values()) == 594  # every thread, without the filter


def test_the_report_gives_shares_of_all_samples_and_of_the_busy_ones():
    report = format_tally(tally(RAW, "MainThread"))

    assert "waiting                    63.8%" in report  # 60 of 94 samples
    assert "content filters             5.3%    14.7%" in report  # 5 of 94, 5 of 34 busy
    assert "(94 samples of the event loop's thread)" in report
    assert "other" not in report  # groups without a sample are left out


def test_a_missing_py_spy_is_named_with_how_to_install_it(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--py-spy", "/nonexistent/py-spy"])

    assert exited.value.code == 2
    assert "pip install py-spy" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])

    out = capsys.readouterr().out
    for option in (
        "--clients",
        "--max-new-tokens",
        "--filters",
        "--seconds",
        "--rate",
        "--py-spy",
        "--raw",
    ):
        assert option in out
