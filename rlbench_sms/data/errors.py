"""The one exception type for bad datasets: its message names the file and the field."""

from __future__ import annotations

from pathlib import Path


class DatasetError(Exception):
    """A dataset is missing, malformed or inconsistent.

    The message is one line, ``<path>: <field>: <problem>``, so that a user sees at once which
    file and which field to look at. Never raised for a programming error of ours.
    """

    def __init__(self, path: str | Path, field: str | None, problem: str):
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}")
