"""Just enough of openSMILE's config format to split a feature set into its frame-level part and its
whole-clip functionals (smile_functionals.py): sections, component instances, and file includes.

Syntax read: `[instance:cType]` opens a section; `instance[name].type = cType` in
`[componentInstances:cComponentManager]` declares a component; `\\{path}` includes a file (relative to the
including file); `\\{\\cm[option{default}:help]}` includes the file an option names, which stays as text
here (openSMILE resolves it from the run's options); lines starting with `;`, `//` or `%` are comments.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SECTION = re.compile(r"^\[([^:\]]+):([^\]]+)\]\s*$")
_INSTANCE = re.compile(r"^instance\[([^\]]+)\]\.type\s*=\s*(\S+)")
_FILE_INCLUDE = re.compile(r"^\\\{([^\\][^}]*)\}\s*$")   # \{file}, not \{\cm[...]}
_COMMENT = (";", "//", "%")
MANAGER_SECTION = "componentInstances"
_OPTION = re.compile(r"\\cm\[([^\]{:]+)(?:\{([^}]*)\})?(?::[^\]]*)?\]")    # \cm[name{default}:help]


@dataclass
class Component:
    name: str
    type: str
    lines: list[str] = field(default_factory=list)     # the section's body, option includes kept as text

    def option(self, key: str) -> str | None:
        for line in self.lines:
            k, sep, v = line.partition("=")
            if sep and k.strip() == key:
                return v.strip()
        return None

    @property
    def reads(self) -> list[str]:
        return [lv for lv in (self.option("reader.dmLevel") or "").split(";") if lv.strip()]

    @property
    def writes(self) -> str | None:
        return self.option("writer.dmLevel")


def parse(path: Path) -> dict[str, Component]:
    """Components of the config at `path`, includes followed, in declaration order."""
    declared: dict[str, str] = {}
    bodies: dict[str, list[str]] = {}
    section = None
    for line in _lines(Path(path), frozenset()):
        head = _SECTION.match(line)
        if head:
            section = head.group(1).strip()
        elif section == MANAGER_SECTION:
            decl = _INSTANCE.match(line)
            if decl:
                declared[decl.group(1).strip()] = decl.group(2).strip()
        elif section is not None:
            bodies.setdefault(section, []).append(line)
    return {name: Component(name, ctype, bodies.get(name, [])) for name, ctype in declared.items()}


def _lines(path: Path, seen: frozenset):
    """The config's meaningful lines with file includes expanded in place (openSMILE includes textually)."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: openSMILE config includes itself")
    seen = seen | {path.resolve()}
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(_COMMENT):
            continue
        inc = _FILE_INCLUDE.match(line)
        if inc:
            yield from _lines(path.parent / inc.group(1).strip(), seen)
        else:
            yield line


def resolve(line: str, options: dict) -> str:
    """`line` with each `\\cm[name{default}:help]` replaced by the option's value (else its default), so a
    config written from parsed sections needs no options of its own."""
    def value(m: re.Match) -> str:
        name = m.group(1).strip()
        if name in options:
            return str(options[name])
        if m.group(2) is None:
            raise ValueError(f"openSMILE option {name!r} has no value and no default")
        return m.group(2)
    return _OPTION.sub(value, line)


def section_body(lines: list[str], options: dict) -> list[str]:
    """A component's lines with options resolved, for a config of its own. An option include that brings in
    whole sections (the feature set's `\\{\\cm[sink]}`, which the parse met after the last section) is not
    part of the component and is dropped; one of bare settings (buffer modes, frame modes) stays."""
    out = []
    for line in lines:
        line = resolve(line, options)
        inc = _FILE_INCLUDE.match(line)
        if inc and any(_SECTION.match(x.strip()) for x in Path(inc.group(1).strip()).read_text(
                encoding="utf-8", errors="replace").splitlines()):
            continue
        out.append(line)
    return out
