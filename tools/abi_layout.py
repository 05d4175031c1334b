"""Turn the DWARF of gcc's probe object into ctypes class definitions (used by gen_abi.py).

Each struct/union is laid out the way ctypes would lay it out, then compared member by member
with the offsets gcc recorded in DWARF. Where gcc put a member later than ctypes would (an
alignment attribute, an unnamed bit-field DWARF does not list), explicit padding is inserted;
where gcc put it earlier, the struct is `__attribute__((packed))` and gets `_pack_ = 1`.
A layout that still disagrees is an error: the generator never writes a layout it has not
checked against the compiler.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.dwarf.die import DIE
from elftools.elf.elffile import ELFFile

CType = Any  # a ctypes type object; ctypes' own type hierarchy is too loose to be useful here
BITS_PER_BYTE = 8
# Bit-field members of a ctypes class report size as (bit width << 16) | bit offset in the unit.
CTYPES_BITFIELD_SHIFT = 16

DW_ATE_BOOLEAN, DW_ATE_FLOAT, DW_ATE_SIGNED, DW_ATE_SIGNED_CHAR = 0x2, 0x4, 0x5, 0x6
DW_ATE_UNSIGNED, DW_ATE_UNSIGNED_CHAR = 0x7, 0x8
SIGNED_INTS = {1: "c_int8", 2: "c_int16", 4: "c_int32", 8: "c_int64"}
UNSIGNED_INTS = {1: "c_uint8", 2: "c_uint16", 4: "c_uint32", 8: "c_uint64"}
FLOATS = {4: "c_float", 8: "c_double"}
QUALIFIERS = {"DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type"}


@dataclass
class Member:
    name: str  # the C name; "_anonN" for an anonymous struct/union member
    ctype: CType
    expr: str  # the same type as a Python expression in the generated module
    bits: int | None = None  # bit-field width
    bit_offset: int | None = None  # where gcc put it; None for padding we added
    anonymous: bool = False


@dataclass
class ClassDef:
    name: str
    is_union: bool
    size: int
    c_name: str | None  # "struct kvm_run"; None for a class made for an anonymous C type
    members: list[Member] = field(default_factory=list)
    packed: bool = False

    @property
    def anonymous(self) -> list[str]:
        return [m.name for m in self.members if m.anonymous]


def die_name(die: DIE) -> str | None:
    attribute = die.attributes.get("DW_AT_name")
    return attribute.value.decode() if attribute else None


def make_class(name: str, is_union: bool, members: list[Member], packed: bool) -> CType:
    namespace: dict[str, object] = {}
    if packed:
        namespace["_pack_"] = 1
    if anonymous := [m.name for m in members if m.anonymous]:
        namespace["_anonymous_"] = anonymous
    namespace["_fields_"] = [
        (m.name, m.ctype) if m.bits is None else (m.name, m.ctype, m.bits) for m in members
    ]
    return type(name, (ctypes.Union if is_union else ctypes.Structure,), namespace)


def bit_position(cls: CType, member: str) -> int:
    descriptor = getattr(cls, member)
    position: int = descriptor.offset * BITS_PER_BYTE
    if descriptor.size >> CTYPES_BITFIELD_SHIFT:
        position += descriptor.size & ((1 << CTYPES_BITFIELD_SHIFT) - 1)
    return position


def end_of_members(cls: CType, members: list[Member]) -> int:
    """First byte after the last member ctypes placed (tail padding excluded)."""
    ends = [0]
    for member in members:
        descriptor = getattr(cls, member.name)
        ends.append(descriptor.offset + ctypes.sizeof(member.ctype))
    return max(ends)


class LayoutBuilder:
    def __init__(self) -> None:
        self.classes: dict[str, ClassDef] = {}  # in dependency order
        self.ctypes_classes: dict[str, CType] = {}
        self.names_by_die: dict[int, str] = {}
        self.enumerators: dict[str, int] = {}

    def type_of(self, die: DIE, name_hint: str) -> tuple[CType, str]:
        """The ctypes type for a DWARF type DIE, and its spelling in the generated module."""
        while die.tag in QUALIFIERS or (
            die.tag == "DW_TAG_typedef" and self.strip_typedef_target(die).tag == "DW_TAG_base_type"
        ):
            die = die.get_DIE_from_attribute("DW_AT_type")
        if die.tag == "DW_TAG_typedef":
            return self.type_of(die.get_DIE_from_attribute("DW_AT_type"), die_name(die) or "")
        if die.tag == "DW_TAG_base_type":
            return self.base_type(die)
        if die.tag == "DW_TAG_pointer_type":
            return ctypes.c_void_p, "ctypes.c_void_p"
        if die.tag == "DW_TAG_enumeration_type":
            return self.enum_type(die)
        if die.tag == "DW_TAG_array_type":
            return self.array_type(die, name_hint)
        if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            name = self.build_class(die, name_hint)
            return self.ctypes_classes[name], name
        raise ValueError(f"unsupported DWARF type {die.tag} ({name_hint})")

    @staticmethod
    def strip_typedef_target(die: DIE) -> DIE:
        target = die.get_DIE_from_attribute("DW_AT_type")
        while target.tag in QUALIFIERS or target.tag == "DW_TAG_typedef":
            target = target.get_DIE_from_attribute("DW_AT_type")
        return target

    @staticmethod
    def base_type(die: DIE) -> tuple[CType, str]:
        size = die.attributes["DW_AT_byte_size"].value
        encoding = die.attributes["DW_AT_encoding"].value
        if die_name(die) == "char":
            name = "c_char"  # plain char arrays are text (kvm_stats_desc.name): read as bytes
        elif encoding == DW_ATE_BOOLEAN:
            name = "c_bool"
        elif encoding == DW_ATE_FLOAT:
            name = FLOATS[size]
        elif encoding in (DW_ATE_SIGNED, DW_ATE_SIGNED_CHAR):
            name = SIGNED_INTS[size]
        elif encoding in (DW_ATE_UNSIGNED, DW_ATE_UNSIGNED_CHAR):
            name = UNSIGNED_INTS[size]
        else:
            raise ValueError(f"unsupported base type {die_name(die)}")
        return getattr(ctypes, name), f"ctypes.{name}"

    def enum_type(self, die: DIE) -> tuple[CType, str]:
        signed = False
        for child in die.iter_children():
            name, value = die_name(child), child.attributes["DW_AT_const_value"].value
            signed = signed or value < 0
            if name and name.startswith("KVM_"):
                self.enumerators[name] = value
        if "DW_AT_type" in die.attributes:  # DWARF 5: the underlying integer type
            return self.type_of(die.get_DIE_from_attribute("DW_AT_type"), "")
        name = (SIGNED_INTS if signed else UNSIGNED_INTS)[die.attributes["DW_AT_byte_size"].value]
        return getattr(ctypes, name), f"ctypes.{name}"

    def array_type(self, die: DIE, name_hint: str) -> tuple[CType, str]:
        ctype, expr = self.type_of(die.get_DIE_from_attribute("DW_AT_type"), name_hint)
        dimensions = []
        for subrange in die.iter_children():
            if "DW_AT_count" in subrange.attributes:
                dimensions.append(subrange.attributes["DW_AT_count"].value)
            elif "DW_AT_upper_bound" in subrange.attributes:
                dimensions.append(subrange.attributes["DW_AT_upper_bound"].value + 1)
            else:
                dimensions.append(0)  # flexible array member: zero-length, callers size it
        # C's int a[2][3] is ctypes' (c_int * 3) * 2: the last dimension is innermost.
        for length in reversed(dimensions):
            ctype = ctype * length
            expr = f"{expr} * {length}"
        return ctype, expr

    def build_class(self, die: DIE, name_hint: str) -> str:
        if die.offset in self.names_by_die:
            return self.names_by_die[die.offset]
        name = die_name(die) or name_hint
        if not name or name in self.classes:
            raise ValueError(f"no unique class name for DIE at {die.offset:#x} ({name_hint!r})")
        self.names_by_die[die.offset] = name
        is_union = die.tag == "DW_TAG_union_type"
        members = self.members_of(die, name)
        c_name = f"{'union' if is_union else 'struct'} {name}" if die_name(die) else None
        definition = ClassDef(name, is_union, die.attributes["DW_AT_byte_size"].value, c_name)
        for packed in (False, True):
            laid_out = self.lay_out(definition, members, packed)
            if laid_out is not None:
                definition.members, definition.packed = laid_out, packed
                break
        else:
            raise ValueError(f"cannot reproduce gcc's layout of {name} with ctypes")
        self.classes[name] = definition
        self.ctypes_classes[name] = make_class(name, is_union, definition.members, packed)
        return name

    def members_of(self, die: DIE, class_name: str) -> list[Member]:
        members, anonymous_count = [], 0
        for child in die.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            c_name = die_name(child)
            if c_name is None:
                field_name = f"_anon{anonymous_count}"
                anonymous_count += 1
            else:
                field_name = c_name
            ctype, expr = self.type_of(
                child.get_DIE_from_attribute("DW_AT_type"), f"{class_name}_{field_name.lstrip('_')}"
            )
            if "DW_AT_data_bit_offset" in child.attributes:
                bit_offset = child.attributes["DW_AT_data_bit_offset"].value
            elif "DW_AT_data_member_location" in child.attributes:
                bit_offset = child.attributes["DW_AT_data_member_location"].value * BITS_PER_BYTE
            else:
                bit_offset = 0  # union members carry no location
            bits = (
                child.attributes["DW_AT_bit_size"].value
                if "DW_AT_bit_size" in child.attributes
                else None
            )
            members.append(Member(field_name, ctype, expr, bits, bit_offset, c_name is None))
        return members

    @staticmethod
    def lay_out(definition: ClassDef, members: list[Member], packed: bool) -> list[Member] | None:
        """The members plus the padding needed to match gcc, or None if impossible unpacked."""
        placed: list[Member] = []
        padding_count = 0

        def padding(ctype: CType, expr: str, bits: int | None = None) -> Member:
            nonlocal padding_count
            name = f"_padding{padding_count}"
            padding_count += 1
            if any(m.name == name for m in members):
                raise ValueError(f"{definition.name} already has a member named {name}")
            return Member(name, ctype, expr, bits)

        for member in members:
            assert member.bit_offset is not None
            while True:
                trial = make_class(definition.name, definition.is_union, [*placed, member], packed)
                actual = bit_position(trial, member.name)
                if actual == member.bit_offset:
                    placed.append(member)
                    break
                if actual > member.bit_offset:
                    return None
                gap = member.bit_offset - actual
                if member.bits is not None and placed and placed[-1].bits is not None:
                    # an unnamed bit-field DWARF omits: pad inside the same storage unit
                    placed.append(padding(member.ctype, member.expr, gap))
                else:
                    before = make_class(definition.name, definition.is_union, placed, packed)
                    length = member.bit_offset // BITS_PER_BYTE - end_of_members(before, placed)
                    placed.append(padding(ctypes.c_uint8 * length, f"ctypes.c_uint8 * {length}"))
        cls = make_class(definition.name, definition.is_union, placed, packed)
        if ctypes.sizeof(cls) < definition.size:
            tail = definition.size - (0 if definition.is_union else end_of_members(cls, placed))
            placed.append(padding(ctypes.c_uint8 * tail, f"ctypes.c_uint8 * {tail}"))
            cls = make_class(definition.name, definition.is_union, placed, packed)
        return placed if ctypes.sizeof(cls) == definition.size else None


def build_classes(
    object_file: Path, root_variables: list[str]
) -> tuple[list[ClassDef], dict[str, int]]:
    """Class definitions (dependency order) for the types of the named global variables."""
    builder = LayoutBuilder()
    with object_file.open("rb") as stream:
        dwarf = ELFFile(stream).get_dwarf_info()
        variables = {
            die_name(die): die
            for unit in dwarf.iter_CUs()
            for die in unit.get_top_DIE().iter_children()
            if die.tag == "DW_TAG_variable"
        }
        for variable in root_variables:
            builder.type_of(variables[variable].get_DIE_from_attribute("DW_AT_type"), "")
    return list(builder.classes.values()), builder.enumerators


def render_classes(classes: list[ClassDef]) -> list[str]:
    lines: list[str] = []
    for definition in classes:
        base = "ctypes.Union" if definition.is_union else "ctypes.Structure"
        lines += ["", "", f"class {definition.name}({base}):"]
        if definition.packed:
            lines.append("    _pack_ = 1")
        if definition.anonymous:
            names = "".join(f"{name!r}, " for name in definition.anonymous).rstrip(" ")
            lines.append(f"    _anonymous_ = ({names})")
        lines.append("    _fields_ = [")
        for member in definition.members:
            bits = "" if member.bits is None else f", {member.bits}"
            lines.append(f"        ({member.name!r}, {member.expr}{bits}),")
        lines.append("    ]")
    return lines


def verify_rendered(module_text: str, classes: list[ClassDef]) -> None:
    """Execute the generated module and check every class against gcc's DWARF layout."""
    namespace: dict[str, Any] = {}
    exec(compile(module_text, "<generated>", "exec"), namespace)
    for definition in classes:
        cls = namespace[definition.name]
        if ctypes.sizeof(cls) != definition.size:
            raise AssertionError(
                f"{definition.name}: size {ctypes.sizeof(cls)} != {definition.size}"
            )
        for member in definition.members:
            if (
                member.bit_offset is not None
                and bit_position(cls, member.name) != member.bit_offset
            ):
                raise AssertionError(f"{definition.name}.{member.name}: offset differs from gcc's")
