"""The file tree of an output dataset, as the checked-in expected lists name it."""

from __future__ import annotations

import re
from pathlib import Path

#: A run id (brainfm.bidsapp.records.new_run_id) in a path, as the expected lists write it.
RUN_ID = re.compile(r"\d{8}-\d{6}_[0-9a-f]{8}")


def output_tree(out: Path) -> list[str]:
    """Sorted relative paths of the files under ``out``, run ids written ``RUNID``."""
    return sorted(RUN_ID.sub("RUNID", p.relative_to(out).as_posix()) for p in out.rglob("*")
                  if p.is_file() and p.name != ".brainfm.lock"
                  and ".brainfm-locks" not in p.relative_to(out).parts)  # lock files
