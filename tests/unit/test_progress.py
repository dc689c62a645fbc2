"""Progress bars appear on a terminal only."""

from __future__ import annotations

import io

from edged.tools.progress import tty_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_not_a_terminal() -> None:
    assert tty_progress("bench", io.StringIO()) is None


def test_bar_draws_in_place_and_ends_the_line() -> None:
    stream = _Terminal()
    show = tty_progress("import", stream, width=10)
    assert show is not None
    show(5, 10)
    show(10, 10)
    text = stream.getvalue()
    assert text.startswith("\rimport [#####.....] 5/10")
    assert text.endswith("\rimport [##########] 10/10\n")
