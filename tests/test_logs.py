"""``-v`` means the same in every command (issue 11, run records)."""

from __future__ import annotations

import logging

import pytest

from brainfm.bidsapp.cli import build_parser as brainfm_parser
from brainfm.importers.cli import build_parser as import_parser
from brainfm.logs import VERBOSE_HELP, setup_logging
from brainfm.models.cli import build_parser as train_parser
from brainfm.testdata.cli import build_parser as maker_parser


def _verbose_action(parser):
    return next(a for a in parser._actions if a.dest == "verbose")


@pytest.mark.parametrize("make", [brainfm_parser, train_parser, import_parser,
                                  maker_parser])
def test_every_command_counts_v_the_same_way(make):
    action = _verbose_action(make())
    assert action.option_strings == ["-v", "--verbose"]
    assert action.help == VERBOSE_HELP and action.default == 0 and action.nargs == 0


@pytest.mark.parametrize("verbosity,own,other", [(0, logging.INFO, logging.INFO),
                                                 (1, logging.DEBUG, logging.INFO),
                                                 (2, logging.DEBUG, logging.DEBUG)])
def test_levels(monkeypatch, verbosity, own, other):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    brainfm = logging.getLogger("brainfm")
    monkeypatch.setattr(brainfm, "level", brainfm.level)
    setup_logging(verbosity)
    assert logging.getLogger("brainfm.models.stacking").getEffectiveLevel() == own
    assert logging.getLogger("sklearn").getEffectiveLevel() == other
