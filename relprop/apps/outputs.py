"""The output folder of ``relprop explain``: per-image files written atomically, prediction part files, their merge.

``Store(root)``: ``root/<key>.npy`` and ``root/<key>.png`` per image (hidden temporary
files, then renames), prediction lines appended to ``root/.relprop-explain/<run>-rank<r>.jsonl``
(flushed per batch), and :meth:`Store.merge`, which writes ``root/predictions.jsonl``
atomically (:func:`write_atomic`; one line per output, the newest wins) and removes the
part files.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FAILURES", "PARTS", "PREDICTIONS", "Store", "write_atomic"]

PREDICTIONS = "predictions.jsonl"
FAILURES = "failures.jsonl"
PARTS = ".relprop-explain"


@dataclass
class Store:
    """The output folder: per-image files written atomically, prediction part files, their merge."""

    root: Path
    part: Any = None

    @property
    def parts(self) -> Path:
        return self.root / PARTS

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.png"

    def records(self) -> tuple[dict[str, dict], list[Path], int]:
        """Prediction lines by output key (predictions.jsonl, then the part files, newest last),
        the part files read, and how many lines were unreadable (cut off by an interrupted run)."""
        files = sorted(self.parts.glob("*.jsonl")) if self.parts.is_dir() else []
        out: dict[str, dict] = {}
        bad = 0
        for path in [self.root / PREDICTIONS, *files]:
            if not path.is_file():
                continue
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        out[record["npy"][: -len(".npy")]] = record
                    except (ValueError, KeyError, TypeError):
                        bad += bool(line.strip())
        return out, files, bad

    def save(self, key: str, relevance: Any, draw: Callable[[Path], None]) -> None:
        """Write ``key``'s .npy (``relevance``) and .png (``draw(path)``): temporary files, then renames."""
        import numpy as np

        npy, png = self.paths(key)
        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp_npy, tmp_png = (p.with_name(f".{p.name}.tmp") for p in (npy, png))
        try:
            with open(tmp_npy, "wb") as f:
                np.save(f, relevance)
            draw(tmp_png)
            os.replace(tmp_npy, npy)
            os.replace(tmp_png, png)
        finally:
            tmp_npy.unlink(missing_ok=True)
            tmp_png.unlink(missing_ok=True)

    def append(self, run: str, rank: int, records: Sequence[dict]) -> None:
        """Append prediction lines to this rank's part file and flush them."""
        if self.part is None:
            self.parts.mkdir(parents=True, exist_ok=True)
            self.part = open(self.parts / f"{run}-rank{rank:05d}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.part.write("".join(json.dumps(r) + "\n" for r in records))
        self.part.flush()

    def close(self) -> None:
        if self.part is not None:
            self.part.close()
            self.part = None

    def merge(self) -> int:
        """predictions.jsonl := every line, one per output (newest wins), sorted; part files removed."""
        records, files, bad = self.records()
        write_atomic(self.root / PREDICTIONS, "".join(json.dumps(records[k]) + "\n" for k in sorted(records)))
        for path in files:
            path.unlink(missing_ok=True)
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()
        if bad:
            print(f"relprop: warning: left out {bad} cut-off prediction lines of an interrupted run", file=sys.stderr)
        return len(records)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
