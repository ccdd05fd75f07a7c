"""docs/configuration.md, generated from the config dataclasses: every key with its type, default and the comment
written beside it in the code. `python -m iceburg_daemon.config_reference > docs/configuration.md`; a test
fails when the file is out of date."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Any

from iceburg_daemon.config import ChromaStoreConfig, Config, LogSourceConfig, RoleConfig

FIELD = re.compile(r"^\s+(\w+): [^=]+?(?:= .*?)?(?:\s+#\s*(.*))?$")
HEADER = """# Configuration reference

Generated from the code (`python -m iceburg_daemon.config_reference > docs/configuration.md`; a test fails
when this file is out of date). Every key is optional; the default is shown. Relative paths resolve against the
config file's folder. Any scalar key can be set from the environment as `ICEBURGD_<SECTION>_<KEY>` (e.g.
`ICEBURGD_METRICS_PORT=9500`). `iceburgd config check` validates a file, reporting every problem at once;
`iceburgd config show` prints the resolved values. The commented `config.toml` in the repository is a
starting point.
"""


def comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its line, after any comment lines directly above it."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = FIELD.match(line)
        if m and not stripped.startswith(("def ", "@", '"""')):
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return out


def toml_comments(path: Path) -> dict[tuple[str, str], str]:
    """(section, key) -> the comment beside the key in the repository's commented config.toml (the fallback
    for a field without one in the code; `[surveyor...]` stands for every role)."""
    out: dict[tuple[str, str], str] = {}
    section_name = ""
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        if m := re.match(r"^\[([\w.]+)\]", line):
            section_name = m.group(1).replace("surveyor", "<role>")
        elif m := re.match(r"^(\w+) = .*?#\s*(.*)$", line):
            out[(section_name, m.group(1))] = m.group(2).strip()
    return out


def _type(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("pathlib.", "").replace("<class '", "").replace("'>", "")
    if typing.get_origin(hint) is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in typing.get_args(hint))
    return f"`{text}`"


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (tuple, list)):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    return f"`{value}`"


def section(title: str, cls: type, instance: Any, skip: tuple[str, ...] = (),
            fallback: dict[str, str] | None = None) -> list[str]:
    hints, notes = typing.get_type_hints(cls), {**(fallback or {}), **{k: v for k, v in comments(cls).items() if v}}
    lines = [f"## {title}", "", "| key | type | default | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        note = notes.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | {_type(hints[f.name])} | {_default(getattr(instance, f.name))} | {note} |")
    return [*lines, ""]


def reference(toml: Path = Path(__file__).resolve().parents[1] / "config.toml") -> str:
    cfg, told = Config(), toml_comments(toml)

    def said(name: str) -> dict[str, str]:
        return {key: text for (sec, key), text in told.items() if sec == name}

    out = [HEADER]
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value) or isinstance(value, RoleConfig):
            continue
        out += section(f"`[{f.name}]`", type(value), value, skip=("chroma", "logs"), fallback=said(f.name))
        if f.name == "sources":
            out += section("`[[sources.chroma]]`: one table per ICEBURG ChromaDB store (`name` and `path` required)",
                           ChromaStoreConfig, ChromaStoreConfig(name="", path=Path(".")))
            out += section("`[[sources.logs]]`: one table per glob of ICEBURG log files followed in place (`name` and"
                           " `path` required; see [iceburg.md](iceburg.md))", LogSourceConfig,
                           LogSourceConfig(name="", path=""))
    role = RoleConfig()
    out.append("## Roles\n\n`surveyor`, `dissident`, `synthesist` and `oracle` are enabled by default, `general` is"
               " not. Each role has three tables.\n")
    out += section("`[<role>]`", RoleConfig, role, fallback=said("<role>"))
    out += section("`[<role>.train]`", type(role.train), role.train, fallback=said("<role>.train"))
    out += section("`[<role>.trigger]`", type(role.trigger), role.trigger, fallback=said("<role>.trigger"))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
