"""The options reference, docs/reference.md, written from the declarations it documents: every
command's options (the same objects ``--help`` prints) and every field of a configuration (the
keys of a space file and of a config JSON, :mod:`cerberus.config`).

``python -m cerberus.reference > docs/reference.md`` rewrites it; a test fails when the file
and the declarations drift apart.
"""

from __future__ import annotations

import dataclasses

from cerberus import knobs
from cerberus.config import MAX_STAGES, TABLES
from cerberus.optim import OPTIMIZERS, SCHEDULES

HEADER = """# Options reference

Written by `python -m cerberus.reference` from the declarations themselves (`cerberus/cli.py`
for the commands, `cerberus/config.py` for the configuration fields); do not edit it by hand.
"""


def render() -> str:
    return "\n".join([HEADER, _commands(), _fields(), _registries()]).rstrip() + "\n"


def _commands() -> str:
    import typer

    from cerberus.cli import app

    group = typer.main.get_command(app)
    out = ["## Commands", ""]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        if command.hidden:
            continue
        out += [f"### `cerberus-search {name}`", "", " ".join((command.help or "").split()), "",
                "| option | default | meaning |", "| --- | --- | --- |"]
        for param in command.params:
            if param.name == "help":
                continue
            flags = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
            default = "" if param.required or param.default is None or param.is_flag and not param.default else f"`{param.default}`"
            if param.required:
                default = "required"
            out.append(f"| {flags} | {default} | {' '.join((param.help or '').split())} |")
        out.append("")
    return "\n".join(out)


def _fields() -> str:
    out = ["## Configuration fields", "",
           "The keys of a space file's `[arch]`, `[recipe]` and `[augment]` tables, and of a config JSON's "
           "`arch`, `recipe` and `recipe.augment` objects. A key that does not act (see *acts*) is not sampled "
           "and keeps its default.", "",
           f"`[arch]` also takes `stages` (1..{MAX_STAGES}), and `blocks_N` / `widths_N` for stage N alone.", ""]
    for table, cls in TABLES.items():
        out += [f"### `[{table}]`", "", "| key | type | default | allowed | acts | meaning |",
                "| --- | --- | --- | --- | --- | --- |"]
        for f in knobs.fields(cls):
            default = "required" if f.default is dataclasses.MISSING else f"`{_value(f.default)}`"
            kind = f"{f.item.__name__} per stage" if f.spec.per_stage else (
                f"list of {f.item.__name__}" if f.kind is not f.item else f.item.__name__)
            out.append(f"| `{f.name}` | {kind} | {default} | {f.allowed_words()} | {f.spec.acts.words(f.name)} | {f.spec.doc} |")
        out.append("")
    return "\n".join(out)


def _registries() -> str:
    out = ["## Optimizers and schedules", "", "| `optimizer` | reads | what |", "| --- | --- | --- |"]
    out += [f"| `{name}` | {', '.join(e.reads) or '-'} | {e.doc} |" for name, e in OPTIMIZERS.items()]
    out += ["", "| `schedule` | reads | what |", "| --- | --- | --- |"]
    out += [f"| `{name}` | {', '.join(e.reads) or '-'} | {e.doc} |" for name, e in SCHEDULES.items()]
    return "\n".join(out) + "\n"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


if __name__ == "__main__":
    print(render(), end="")
