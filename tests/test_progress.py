"""Progress: a bar on a terminal, log lines in a script or a log, nothing in CI."""

import logging

from bayes_sws import _progress


def _bar(monkeypatch, *, tty, ci, progress=None):
    monkeypatch.setattr(_progress, "_on_terminal", lambda: tty)
    monkeypatch.setattr(_progress, "_quiet_environment", lambda: ci)
    return _progress.progress_bar(10, desc="fit (map)", progress=progress)


def test_log_lines_when_not_on_a_terminal(monkeypatch, caplog):
    bar = _bar(monkeypatch, tty=False, ci=False)
    bar.every = 0.0  # a line for every update
    with caplog.at_level(logging.INFO, logger="bayes_sws"), bar:
        for step in range(10):
            bar.update()
            bar.set_postfix(loss=f"{100 - step}")
    lines = [r.getMessage() for r in caplog.records if r.name == "bayes_sws"]
    assert lines[0].startswith("fit (map): 1/10 (10 %)")
    assert lines[9].startswith("fit (map): 10/10 (100 %), loss 92")  # postfix of step 8
    assert lines[10].startswith("fit (map): 10/10 (100 %), loss 91")
    assert len(lines) == 11  # ten updates and the closing line


def test_silent_in_ci_and_when_switched_off(monkeypatch):
    assert isinstance(_bar(monkeypatch, tty=False, ci=True), _progress._NoBar)
    assert type(_bar(monkeypatch, tty=True, ci=False, progress=False)) is _progress._NoBar
    assert type(_bar(monkeypatch, tty=False, ci=False, progress=False)) is _progress._NoBar
