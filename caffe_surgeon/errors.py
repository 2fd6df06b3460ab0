"""The one error type users see.

Every problem with a model file or an argument is raised as :class:`ModelError`
with a one-line message naming where it happened (file, line/column or byte
offset, layer) and the numbers that disagree. The CLIs print it and exit 2;
nothing else is allowed to reach the user as a traceback.
"""
from __future__ import annotations


class ModelError(Exception):
    """A model file, definition or argument that cannot be used as given.

    Args:
        message: what is wrong, with the disagreeing numbers.
        file: the file it concerns, if any.
        line, column: 1-based text position, for text formats.
        offset: byte offset, for binary formats.
        layer: the layer it concerns, if any.
    """

    def __init__(self, message: str, *, file=None, line=None, column=None,
                 offset=None, layer=None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        self.offset = offset
        self.layer = layer
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            elif self.offset is not None:
                where += f" (byte {self.offset})"
            where += ": "
        layer = f"layer '{self.layer}': " if self.layer else ""
        return f"{where}{layer}{self.message}"

    def located(self, *, file=None, layer=None) -> "ModelError":
        """Return this error with file/layer filled in where they were unknown."""
        return ModelError(self.message, file=self.file or file, line=self.line,
                          column=self.column, offset=self.offset,
                          layer=self.layer or layer)
