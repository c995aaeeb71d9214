"""run_tool: a system tool's failure becomes one line in the caller's error class."""

from __future__ import annotations

import pytest

from resistance.commands import run_tool


class ToolError(Exception):
    pass


def test_output_of_a_command_that_succeeds() -> None:
    assert run_tool(["sh", "-c", "cat"], error=ToolError, timeout=10, input="hi\n") == "hi\n"


def test_a_failure_is_its_last_line_of_stderr_and_names_the_command_shown() -> None:
    script = "echo first >&2; echo 'RTNETLINK answers: File exists' >&2; exit 2"
    with pytest.raises(ToolError) as caught:
        run_tool(["sh", "-c", script], error=ToolError, timeout=10, shown=["ip", "link", "add"])
    assert str(caught.value) == "ip link add: RTNETLINK answers: File exists"


def test_a_silent_failure_says_its_exit_status_and_check_false_lets_it_pass() -> None:
    with pytest.raises(ToolError, match=r"^sh -c exit 3: exit status 3$"):
        run_tool(["sh", "-c", "exit 3"], error=ToolError, timeout=10)
    assert run_tool(["sh", "-c", "echo out; exit 3"], error=ToolError, timeout=10, check=False) == (
        "out\n"
    )


def test_a_missing_tool_and_a_timeout_are_one_line_each() -> None:
    with pytest.raises(ToolError, match=r"^no-such-tool-here is not installed$"):
        run_tool(["no-such-tool-here", "x"], error=ToolError, timeout=10)
    with pytest.raises(ToolError, match=r"^sleep 5 took longer than 0\.2 s$"):
        run_tool(["sleep", "5"], error=ToolError, timeout=0.2)


def test_env_adds_to_the_environment() -> None:
    out = run_tool(
        ["sh", "-c", 'echo "$RESIST_T:${PATH:+path}"'], error=ToolError, timeout=10,
        env={"RESIST_T": "x"},
    )  # fmt: skip
    assert out == "x:path\n"
