"""Reading a user's JSON or YAML file into a document, whatever its bytes.

Called by ``chaos.spec`` (experiments, campaigns) and ``cluster.kube.config``
(the kube safety file). Every way a file can be unreadable (missing, a
directory, not UTF-8, too large, not JSON/YAML, nested past the parser's
recursion limit) becomes one ``SpecError`` paragraph naming the file, so a
bad file never ends in a traceback and nothing is injected.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from core.errors import SpecError

__all__ = ["MAX_DOCUMENT_BYTES", "read_document"]

# An experiment or campaign is a few KiB; the cap keeps `rto run /dev/zero`
# (or a log passed by mistake) from reading forever.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one clause: what, and where."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def read_document(path: Path, what: str = "an experiment or campaign file") -> object:
    """The file's JSON or YAML document; a SpecError in one paragraph, whatever the bytes."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SpecError(
            f"{path}: larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB, too large for "
            f"{what}; is it the right file?"
        )
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"expected {what} in JSON or YAML, UTF-8."
        ) from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON: {exc}.") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {_yaml_problem(exc)}.") from None
    except RecursionError:
        raise SpecError(
            f"{path}: not valid {kind} for the harness: nested too deeply to be {what}."
        ) from None
