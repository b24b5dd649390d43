"""The one error the front end raises: where (file:line:column) and what construct."""

from __future__ import annotations


class P4FrontendError(Exception):
    """A program softswitch cannot run: a syntax error, a type error, or a construct outside the supported
    v1model subset. str() is ``file:line:column: message`` so that editors and users can jump to it."""

    def __init__(self, filename: str, line: int, column: int, message: str) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{filename}:{line}:{column}: {message}")
