"""Validate the input dataset with the BIDS validator (``bids-validator-deno``, offline)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from brainfm.errors import InvalidBIDSError

LOGGER = logging.getLogger(__name__)


def validator_executable() -> str | None:
    """Path of the installed BIDS validator (beside this Python first, then on PATH), or None."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    if beside.is_file():
        return str(beside)
    return shutil.which("bids-validator-deno")


def validate_bids(bids_dir: Path) -> None:
    """Run the BIDS validator on ``bids_dir``; raise on errors (warnings are logged).

    Parameters
    ----------
    bids_dir : Path
        The dataset to check.

    Raises
    ------
    InvalidBIDSError
        The validator reported errors (exit 16); the message lists the first few.
    """
    exe = validator_executable()
    if exe is None:
        LOGGER.warning("bids-validator not found: skipping validation of %s "
                       "(install bids-validator-deno, or pass --skip-bids-validation)", bids_dir)
        return
    cmd = [exe, str(bids_dir), "--format", "json", "--ignoreNiftiHeaders"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = {}
    issues = report.get("issues", {}).get("issues", [])
    errors = [i for i in issues if i.get("severity") == "error"]
    if proc.returncode != 0 and not errors and not issues:
        errors = [{"code": "VALIDATOR_FAILED", "location": proc.stderr.strip()[-500:]}]
    if errors:
        lines = [f"  {e.get('code')}: {e.get('location', '')} {e.get('issueMessage', '')}".rstrip()
                 for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise InvalidBIDSError(
            f"{bids_dir} is not a valid BIDS dataset:\n" + "\n".join(lines) + more
            + "\nFix the dataset, or pass --skip-bids-validation to proceed anyway."
        )
    warnings = [i for i in issues if i.get("severity") == "warning"]
    if warnings:
        LOGGER.info("BIDS validator: %d warning(s) for %s", len(warnings), bids_dir)
