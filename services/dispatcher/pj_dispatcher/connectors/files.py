"""The bytes a connector writes for a step's `content` param: one rule for every API that stores files."""

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FileContent:
    data: bytes
    media_type: str


def file_content(content: Any) -> FileContent:
    """A string is written as it is, in UTF-8; any other JSON value as pretty JSON with sorted keys
    and a final newline.

    A string is the author's text, byte for byte. Generated JSON ends with a newline because a text
    file does (POSIX): without it git marks the file ("No newline at end of file") and the first editor
    to save it adds one, which shows as a change; JSON readers skip it. GitHub always wrote it so, and
    its idempotency check compares these bytes with the stored file, so keeping its rule means no
    repository gets a commit for a newline alone; a SharePoint file uploaded before without it is
    written once more, over itself.
    """
    if isinstance(content, str):
        return FileContent(content.encode(), "text/plain; charset=utf-8")
    text = json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return FileContent(text.encode(), "application/json")
