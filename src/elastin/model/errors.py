"""Exceptions of the model package.

Hierarchy::

    ModelError                      root of everything raised by elastin.model
     ├── UnitError                  a cpu / size value that cannot be parsed
     └── SpecError                  a spec file that is not valid; carries SpecIssues

A ``SpecIssue`` says where (file, line, column, field path), what is wrong, and a hint.
``SpecError.render()`` gives the text the CLI prints and the API returns.
"""

from __future__ import annotations

from dataclasses import dataclass


class ModelError(Exception):
    """Root of all errors raised by ``elastin.model``."""


class UnitError(ModelError, ValueError):
    """A quantity (cpu, memory, disk) that cannot be parsed."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec file: where it is, what is wrong, how to fix it."""

    path: str  # field path, e.g. "services.web.resources.memory"
    message: str  # what is wrong
    hint: str = ""  # how to fix it
    file: str = ""  # file name, "" when the spec did not come from a file
    line: int = 0  # 1-based; 0 when unknown
    column: int = 0  # 1-based; 0 when unknown

    def render(self) -> str:
        where = self.file or "<spec>"
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        text = f"{where}: {self.path or '<root>'}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


class SpecError(ModelError):
    """A spec that is not valid. ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.issues)
        head = f"spec is not valid ({n} problem{'s' if n != 1 else ''}):"
        return "\n".join([head, *("  " + i.render().replace("\n", "\n  ") for i in self.issues)])
