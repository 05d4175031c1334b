"""Parse the struct text strace prints for the few KVM ioctls it decodes, for differential tests.

    4985  ioctl(9, 0x4090ae82 /* KVM_SET_REGS */, {rax=0, ..., rflags=0x2}) = 0

`strace -f -v -X verbose -s 4096 -e trace=ioctl` output: comments are dropped, numbers parsed
with their base, nested {..} become dicts and [..] lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

StraceValue: TypeAlias = "int | str | list[StraceValue] | dict[str, StraceValue]"
_LINE = re.compile(
    r"^(?P<tid>\d+)\s+ioctl\(\d+, 0x[0-9a-f]+ /\* (?P<name>KVM_\w+) \*/, "
    r"(?P<arg>.*)\) = (?P<ret>.*)$"
)
_COMMENT = re.compile(r"\s*/\*.*?\*/")
_TOKEN = re.compile(r"\s*([{}\[\],=]|[^{}\[\],=\s]+)")


@dataclass(frozen=True)
class StraceIoctl:
    tid: int
    name: str
    argument: StraceValue
    result: str


def parse_log(text: str) -> list[StraceIoctl]:
    calls = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        argument_text = _COMMENT.sub("", match["arg"])
        calls.append(
            StraceIoctl(int(match["tid"]), match["name"], parse_value(argument_text), match["ret"])
        )
    return calls


def ioctl_names(text: str) -> set[str]:
    """Every KVM ioctl name strace printed, decoded or not."""
    return set(re.findall(r"ioctl\(\d+, 0x[0-9a-f]+ /\* (KVM_\w+) \*/", text))


def parse_value(text: str) -> StraceValue:
    tokens = _TOKEN.findall(text)
    value, position = _parse(tokens, 0)
    return value if position == len(tokens) else text


def _parse(tokens: list[str], position: int) -> tuple[StraceValue, int]:
    token = tokens[position]
    if token == "{":
        fields: dict[str, StraceValue] = {}
        position += 1
        while tokens[position] != "}":
            key = tokens[position]
            assert tokens[position + 1] == "=", tokens[position : position + 3]
            fields[key], position = _parse(tokens, position + 2)
            if tokens[position] == ",":
                position += 1
        return fields, position + 1
    if token == "[":
        items: list[StraceValue] = []
        position += 1
        while tokens[position] != "]":
            item, position = _parse(tokens, position)
            items.append(item)
            if tokens[position] == ",":
                position += 1
        return items, position + 1
    try:
        return int(token, 0), position + 1
    except ValueError:
        return token, position + 1
