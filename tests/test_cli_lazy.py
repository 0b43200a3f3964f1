"""The lazy ``lobstream`` group: a subcommand whose optional packages are missing says in one
line what to install, and the rest of the command line keeps working."""

from __future__ import annotations

from click.testing import CliRunner

from lobstream import cli


def test_a_missing_optional_package_gives_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMANDS, "feed", "lobstream.cli.no_such_feed_module:feed")
    runner = CliRunner()
    res = runner.invoke(cli.main, ["feed", "--symbol", "BTCUSDT"])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [
        "Error: lobstream feed needs the optional extra [live]: pip install 'lobstream[live]'"
    ]
    # listing the commands does not import (or fail on) it
    assert runner.invoke(cli.main, ["--help"]).exit_code == 0


def test_missing_dependency_message_names_the_package_and_the_extra():
    exc = ModuleNotFoundError("No module named 'websockets'", name="websockets")
    msg = cli.missing_dependency_message("feed", "lobstream.cli.feed", exc)
    assert msg == (
        "lobstream feed needs the optional extra [live] (websockets is not installed): "
        "pip install 'lobstream[live]'"
    )
    # a core command missing a third-party package: the package's dependencies bring it
    exc = ModuleNotFoundError("No module named 'zmq'", name="zmq")
    msg = cli.missing_dependency_message("serve", "lobstream.cli.serve", exc)
    assert "zmq" in msg and "pip install lobstream" in msg
    # a module of lobstream itself missing is a broken install, not an extra
    exc = ModuleNotFoundError(
        "No module named 'lobstream.models.gone'", name="lobstream.models.gone"
    )
    assert cli.missing_dependency_message("train", "lobstream.cli.train", exc) is None
    # an ImportError that is not a missing module is a bug: no install advice
    assert cli.missing_dependency_message("train", "lobstream.cli.train", ImportError("x")) is None
