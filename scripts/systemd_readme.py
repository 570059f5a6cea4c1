"""README.md's "Running as a systemd service" section, as scripts/systemd-check runs it.

The README is the source of truth: the check runs its ``sh`` blocks line by line, as written,
except for what a script cannot do as a person would (each rewrite is in ``runnable``):
``/path/to/framebus`` is the checkout, ``journalctl -f`` shows the last lines instead of
following, ``systemctl status`` gets --no-pager, ``systemctl edit UNIT  # [Service] KEY=VALUE``
writes that drop-in, and the "edit it" / "edit:" steps are done by the check (``hooks``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECTION = "Running as a systemd service"


@dataclass(frozen=True)
class Line:
    """One command of a block (continuations joined), with the comment lines above it."""

    command: str
    comments: tuple[str, ...]
    number: int  # in README.md


def section(readme: Path, title: str = SECTION, sub: str | None = None,
            ) -> tuple[str, int, int]:
    """README.md's text, and where the section (its ``### sub`` subsection) starts and ends
    in it."""
    text = readme.read_text()
    start = text.index(f"\n## {title}\n") + 1
    end = text.find("\n## ", start)
    end = end if end >= 0 else len(text)
    if sub is not None:
        start = text.index(f"\n### {sub}\n", start, end) + 1
        following = text.find("\n### ", start, end)
        end = following if following >= 0 else end
    return text, start, end


def raw_blocks(readme: Path, title: str, sub: str | None = None) -> list[str]:
    """The ``sh`` blocks of a section (or subsection) as written."""
    text, start, end = section(readme, title, sub)
    return [m.group(1) for m in re.compile(r"^```sh\n(.*?)^```", re.S | re.M).finditer(
        text, start, end)]


def blocks(readme: Path, title: str = SECTION, sub: str | None = None) -> list[list[Line]]:
    """The section's ``sh`` blocks, each as its commands in order."""
    text, start, end = section(readme, title, sub)
    found = []
    for match in re.compile(r"^```sh\n(.*?)^```", re.S | re.M).finditer(text, start, end):
        number = text[:match.start()].count("\n") + 1  # the ``` line
        lines: list[Line] = []
        comments: list[str] = []
        pending = ""
        for raw in match.group(1).splitlines():
            number += 1
            if not pending and raw.lstrip().startswith("#"):
                comments.append(raw.lstrip()[1:].strip())
                continue
            pending = f"{pending}\n{raw}" if pending else raw
            if raw.rstrip().endswith("\\"):
                continue
            if pending.strip():
                lines.append(Line(pending, tuple(comments), number))
                comments = []
            pending = ""
        found.append(lines)
    return found


def apt_packages(readme: Path) -> list[str]:
    """The packages the section's ``apt-get install`` line names."""
    for block in blocks(readme):
        for line in block:
            match = re.match(r"\s*apt-get install\s+([^#\n]+)", line.command)
            if match:
                return [word for word in match.group(1).split() if not word.startswith("-")]
    raise ValueError(f"README.md, {SECTION}: no apt-get install line")


def secrets(readme: Path) -> list[str]:
    """Passwords the section writes into credential files (printf '%s' 'SECRET' > ...)."""
    text, start, end = section(readme)
    return re.findall(r"printf '%s' '([^']+)' >", text[start:end])


def drop_in(line: Line) -> tuple[str, str] | None:
    """``systemctl edit UNIT  # [Service] KEY=VALUE ...``: (UNIT, the drop-in's text)."""
    match = re.match(r"\s*systemctl edit (\S+)\s+#\s*(\[\w+\])\s*(.+)", line.command)
    if match is None:
        return None
    settings = "\n".join(match.group(3).split())
    unit = match.group(1) if "." in match.group(1) else f"{match.group(1)}.service"
    return unit, f"{match.group(2)}\n{settings}\n"


def is_hwaccel(block: list[Line]) -> bool:
    """The hardware-decoding block: it installs drop-ins into framebus.service.d/."""
    return any("/etc/systemd/system/framebus.service.d/" in line.command for line in block)


def hwaccel_scores(readme: Path) -> tuple[str, str]:
    """What the section records of `systemd-analyze security framebus`: the unit alone and
    with both hardware-decoding drop-ins ("1.5 OK"), as `**1.5 OK** for the unit alone,
    **2.1 OK** with both drop-ins`."""
    text, start, end = section(readme)
    found = re.search(r"\*\*([\d.]+ \w+)\*\* for the unit alone,\s+\*\*([\d.]+ \w+)\*\* "
                      r"with both drop-ins", text[start:end])
    if found is None:
        raise ValueError(f"README.md, {SECTION}: no recorded systemd-analyze security scores")
    return found.group(1), found.group(2)


def runnable(line: Line, checkout: str) -> str:
    """The command as the check runs it (see the module's docstring)."""
    command = line.command.replace("/path/to/framebus", checkout)
    command = re.sub(r"^(\s*journalctl\b.*?)\s+-f\b", r"\1 --no-pager -n 20", command)
    command = re.sub(r"^(\s*systemctl status)\b", r"\1 --no-pager", command)
    return command


def instance_edits(comments: str, name: str) -> dict[str, object]:
    """What the instance section's ``edit:`` comment names, as dotted config keys:
    fifo_dir, http.listen, http.unix_socket, and each subscriber's ``fifo:`` when named
    (a value with NAME in it: the subscriber's name)."""
    edits: dict[str, object] = {}
    patterns = {"fifo_dir": r"fifo_dir: (\S+?)[,}\s]", "http.listen": r"listen: \"([^\"]+)\"",
                "http.unix_socket": r"unix_socket: (\S+?)[,}\s]",
                "subscribers.*.fifo": r"\bfifo: (\S+?)[,)\s]"}
    for key, pattern in patterns.items():
        match = re.search(pattern, comments + " ")
        if match:
            edits[key] = match.group(1)
    if edits.get("fifo_dir") and name not in str(edits["fifo_dir"]):
        raise ValueError(f"the edit comment's fifo_dir does not name the instance {name!r}")
    return edits
