"""The VGA colour text screen at 0xb8000: cells of (character, attribute) the guest stores into.

Only the memory is emulated, with no CRT controller and no rendering beyond `text()`, because the
guests use it as an MMIO sink whose contents a test can read back.
"""

from __future__ import annotations

TEXT_SCREEN_BASE = 0xB8000
TEXT_SCREEN_SIZE = 0x8000  # 0xb8000-0xbffff: the colour text window of the legacy VGA range
COLUMNS = 80
ROWS = 25


class TextScreen:
    """Register on the MmioBus at TEXT_SCREEN_BASE for TEXT_SCREEN_SIZE bytes."""

    def __init__(self) -> None:
        self._memory = bytearray(TEXT_SCREEN_SIZE)

    def read_mmio(self, offset: int, length: int) -> bytes:
        return bytes(self._memory[offset : offset + length])

    def write_mmio(self, offset: int, data: bytes) -> None:
        self._memory[offset : offset + len(data)] = data

    def text(self) -> str:
        """The first page's characters, one line per row, trailing blanks and NULs dropped."""
        rows = []
        for row in range(ROWS):
            start = row * COLUMNS * 2
            characters = self._memory[start : start + COLUMNS * 2 : 2]
            rows.append(characters.decode("cp437").rstrip(" \0"))
        return "\n".join(rows).rstrip("\n")
