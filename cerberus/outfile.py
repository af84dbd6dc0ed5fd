"""Writing a file (a report, an export, a final model, a checkpoint) so that a failure leaves nothing half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from cerberus.errors import UserError


def check_writable(out: Path) -> None:
    """Refuse (UserError) an ``--out`` that cannot be written, before any work is done.

    Creates the missing folders of ``out`` (the one thing it may leave behind) and probes
    the folder with a temporary file; ``out`` itself is not touched.
    """
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None


def write_atomic(out: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a sibling temporary file, then rename it over ``out`` in one step, so a
    reader never sees a partial file and an error or a kill leaves any older ``out`` as it was
    (a kill leaves the temporary file, ``.<name>.*.tmp``, beside it). Missing folders are made."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the mode open() would
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
