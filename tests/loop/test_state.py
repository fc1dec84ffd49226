"""The work folder remembers finished stages and settings, so `alpaca-loop run` resumes where
it stopped and a finished folder does nothing; naming a stage runs it again and makes the later
ones stale. The stages here are stand-ins that record their calls: the real ones are run end to
end in test_loop_e2e.py."""

from __future__ import annotations

import json

import pytest

from alpaca_serve.loop import stages
from alpaca_serve.loop.cli import main
from alpaca_serve.loop.state import STAGES, LoopState, StateError


class Calls(list):
    """The stages called, in order, and the ones told to fail."""

    fail_at: set[str]


@pytest.fixture
def calls(monkeypatch):
    """Stand-in stages that note their name; `fail_at` makes one raise LoopError."""
    called = Calls()
    fail_at: set[str] = set()

    def stand_in(name):
        def run(ctx):
            if name in fail_at:
                raise stages.LoopError(f"{name} broke")
            called.append(name)
            outputs = {"file": str(ctx.work_dir / name / "out.txt")}
            if name == "report":
                outputs["rendered"] = "THE TABLE"
            return outputs, f"{name} did its part"

        return run

    monkeypatch.setattr(stages, "STAGE_FUNCTIONS", {name: stand_in(name) for name in STAGES})
    called.fail_at = fail_at
    return called


def loop(tmp_path, *args):
    return main([*args, "--work-dir", str(tmp_path / "work"), "--no-progress"])


def test_run_does_every_stage_in_order_and_ends_with_the_report_table(calls, tmp_path, capsys):
    assert loop(tmp_path, "run", "--auto", "--adapters-dir", str(tmp_path)) == 0
    assert calls == list(STAGES)
    out = capsys.readouterr().out
    assert out.rstrip().endswith("THE TABLE")
    assert f"file: {tmp_path / 'work' / 'sft' / 'out.txt'}" in out


def test_a_rerun_of_a_finished_folder_does_nothing(calls, tmp_path, capsys):
    loop(tmp_path, "run")
    calls.clear()
    capsys.readouterr()
    assert loop(tmp_path, "run") == 0
    assert calls == []
    out = capsys.readouterr().out
    assert "sft: finished earlier, skipped (sft did its part)" in out
    assert "nothing to do" in out


def test_a_failed_stage_is_not_recorded_and_the_rerun_starts_there(calls, tmp_path, capsys):
    calls.fail_at.add("compare")
    assert loop(tmp_path, "run") == 2
    assert calls == ["sft", "publish"]
    assert capsys.readouterr().err.strip() == "alpaca-loop: error: compare broke"
    calls.fail_at.clear()
    calls.clear()
    assert loop(tmp_path, "run") == 0
    assert calls == ["compare", "prefer", "report"]


def test_naming_a_stage_runs_it_again_and_the_later_ones_at_the_next_run(calls, tmp_path):
    loop(tmp_path, "run")
    calls.clear()
    assert loop(tmp_path, "publish") == 0
    assert calls == ["publish"]
    state = LoopState.load(tmp_path / "work")
    assert state.remaining() == ["compare", "prefer", "report"]
    calls.clear()
    loop(tmp_path, "run")
    assert calls == ["compare", "prefer", "report"]


def test_a_stage_whose_inputs_are_missing_is_refused(calls, tmp_path, capsys):
    assert loop(tmp_path, "prefer") == 2
    assert calls == []
    err = capsys.readouterr().err.strip()
    assert err == "alpaca-loop: error: prefer needs sft, compare first: run `alpaca-loop run`"


def test_the_report_runs_when_prefer_could_not(calls, tmp_path, capsys):
    calls.fail_at.add("prefer")
    assert loop(tmp_path, "run") == 2
    assert loop(tmp_path, "report") == 0
    assert calls == ["sft", "publish", "compare", "report"]
    assert capsys.readouterr().out.rstrip().endswith("THE TABLE")
    calls.fail_at.clear()
    calls.clear()
    assert loop(tmp_path, "run") == 0
    assert calls == ["prefer", "report"]  # the report made without prefer is stale


def test_settings_of_the_first_run_are_remembered_and_secrets_are_not(calls, tmp_path):
    loop(tmp_path, "sft", "--auto", "--limit", "3", "--adapters-dir", "/a", "--api-key", "s3cret")
    loop(tmp_path, "publish", "--limit", "5")
    text = (tmp_path / "work" / "loop_state.json").read_text()
    remembered = json.loads(text)["settings"]
    assert remembered["auto"] is True and remembered["adapters_dir"] == "/a"
    assert remembered["limit"] == 5  # given again: replaced
    assert "s3cret" not in text


def test_keys_come_from_the_environment_when_not_given_and_are_never_remembered(
    tmp_path, monkeypatch
):
    from alpaca_serve.loop.settings import LoopSettings

    monkeypatch.setenv("ALPACA_API_KEY", "from-env")
    monkeypatch.setenv("ALPACA_JUDGE_API_KEY", "judge-from-env")
    settings = LoopSettings.resolve({}, {})
    assert (settings.api_key, settings.judge_api_key) == ("from-env", "judge-from-env")
    assert LoopSettings.resolve({"api_key": "given"}, {}).api_key == "given"
    assert "from-env" not in json.dumps(settings.to_state())


def test_a_bad_setting_is_one_error_line(calls, tmp_path, capsys):
    assert loop(tmp_path, "run", "--limit", "0") == 2
    assert (
        capsys.readouterr().err.strip() == "alpaca-loop: error: --limit must be at least 1, got 0"
    )
    assert calls == []


def test_a_state_file_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "loop_state.json").write_text('{"stages": {}}')
    with pytest.raises(StateError, match="not an alpaca-loop state file"):
        LoopState.load(tmp_path)


def test_the_state_file_is_replaced_whole(tmp_path):
    state = LoopState(tmp_path)
    state.finish("sft", {"adapter": "a"}, "done", 1.5)
    assert [p.name for p in tmp_path.iterdir()] == ["loop_state.json"]
    again = LoopState.load(tmp_path)
    assert again.is_done("sft") and again.stages["sft"].outputs == {"adapter": "a"}
    assert again.remaining() == ["publish", "compare", "prefer", "report"]
