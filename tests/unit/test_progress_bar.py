"""The submission progress bar of milex-run: shown on a terminal only, and only for a slow submission."""

from __future__ import annotations

import io

from milex.cli.output import SubmitProgressBar
from milex_common.protocol import SubmitProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_says_when_the_agent_waits_for_the_controller():
    terminal = Terminal()
    with SubmitProgressBar(terminal, after=0) as bar:
        bar.update(SubmitProgress(submitted=21, total=200))
        bar.update(SubmitProgress(submitted=21, total=200, in_doubt=1, waiting_for_controller=True))
        bar.bar.refresh()
        shown = terminal.getvalue()
    assert "21/200" in shown
    assert "SLURM controller silent, waiting (1 in doubt)" in shown


def test_no_bar_off_a_terminal_or_for_a_quick_submission():
    for stream, after in ((io.StringIO(), 0.0), (Terminal(), 60.0)):
        with SubmitProgressBar(stream, after=after) as bar:
            bar.update(SubmitProgress(submitted=1, total=2))
        assert bar.bar is None and stream.getvalue() == ""
