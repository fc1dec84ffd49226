"""`python -m benchmarks.engine_start`: its options, the variants it measures and its report.
(Its figures come from compiled engines, minutes each, so it is run by hand; docs/results.md
shows them.)"""

from __future__ import annotations

import argparse

import pytest

from benchmarks.engine_start import Variant, build_parser, format_report, main, variants


def test_help_names_the_variants_and_the_cache_experiment(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for words in ("compiled", "--preload", "--compiled-env", "VLLM_USE_AOT_COMPILE=1", "--only"):
        assert words in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "0"], "expected positive integers such as 1,16, got '0'"),
        (["--compiled-env", "NOVALUE"], "expected NAME=VALUE, got 'NOVALUE'"),
        (["--also-compiled", "A=1,B"], "expected NAME=VALUE, got 'B'"),
        (["--model", "/no/such/model"], "--model /no/such/model has no config.json"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_compiled_variant_gets_the_experiments_environment():
    args = argparse.Namespace(
        preload=False, compiled_env=[("VLLM_USE_AOT_COMPILE", "0")], also_compiled=[], only=[]
    )

    eager, compiled = variants(args)

    # No variant preloads by itself (the server would by default): only +preload ones do.
    assert eager.env == {"ALPACA_PRELOAD": "false", "ALPACA_ENFORCE_EAGER": "true"}
    assert compiled.env == {
        "ALPACA_PRELOAD": "false",
        "ALPACA_ENFORCE_EAGER": "false",
        "VLLM_USE_AOT_COMPILE": "0",
    }


def test_more_compiled_variants_are_measured_side_by_side_each_named_by_its_settings():
    args = build_parser().parse_args(
        ["--also-compiled", "VLLM_USE_MEGA_AOT_ARTIFACT=0", "--also-compiled", "A=1,B=2"]
    )
    args.preload = False

    names = {variant.name: variant.env for variant in variants(args)}

    assert list(names) == [
        "eager",
        "compiled",
        "compiled[VLLM_USE_MEGA_AOT_ARTIFACT=0]",
        "compiled[A=1,B=2]",
    ]
    assert names["compiled[A=1,B=2]"] == {
        "ALPACA_PRELOAD": "false",
        "ALPACA_ENFORCE_EAGER": "false",
        "A": "1",
        "B": "2",
    }


def test_the_report_gives_both_starts_whether_the_cache_was_reused_and_ratios_to_eager():
    eager = Variant("eager", {}, [20.0, 19.0], [False, False], {1: 40.0, 16: 300.0})
    compiled = Variant("compiled", {}, [80.0, 30.0], [False, True], {1: 46.0, 16: 345.0})
    args = argparse.Namespace(rounds=2, max_new_tokens=128, clients=[1, 16])

    report = format_report([eager, compiled], args, "model")

    rows = {line.split()[0]: line.split() for line in report.splitlines()[3:]}
    assert rows["eager"][1:4] == ["20.0", "19.0", "yes"]
    assert rows["compiled"][1:4] == ["80.0", "30.0", "no"]
    assert rows["compiled"][4:] == ["46.0", "1.150", "345.0", "1.150"]


def test_only_the_variants_named_are_measured_and_an_unknown_name_is_refused(monkeypatch):
    monkeypatch.setattr("benchmarks.engine_start.preload_libraries", lambda: ["/a.so", "/b.so"])
    args = build_parser().parse_args(["--preload", "--only", "eager,eager+preload"])

    assert [v.name for v in variants(args)] == ["eager", "eager+preload"]
    assert variants(args)[1].env["LD_PRELOAD"] == "/a.so:/b.so"

    args.only = ["eager", "fast"]
    with pytest.raises(SystemExit, match="no variant fast"):
        variants(args)
