"""The README's two set-up commands stay true: CI runs exactly the test command."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```\n(python3 -m venv .+?)\n```", readme)


def test_readme_has_main_job_and_test_commands():
    cmds = _commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("lobstream demo")
    assert "pytest" in cmds[1]
    for cmd in cmds:
        # torch first, pinned to the CPU build on disk, before the project pulls a range
        install = re.search(r"-e '\.\[test(,ray)?(,live)?\]'", cmd)
        assert install, cmd
        assert cmd.index("torch==2.13.0") < install.start()


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert _commands()[1] in ci.splitlines()
