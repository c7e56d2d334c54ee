"""Header layouts and single-packet encoding.

A HeaderLayout names the unsigned fields of a packet header (u8, u16, u32,
u64, all little- or all big-endian), which field holds the frame length and
whether that length counts the header (Netty's LengthFieldBasedFrameDecoder
is the model: the field's offset and width, plus an adjustment). GAME, the
default, is ``<HHII``: size (whole packet), type, seq, player_id.

Fields named ``type``, ``seq`` and ``player_id`` take those roles (for
PacketBatch.types, Packet.seq, encode(), SendBuffer) unless other names are
given with ``type_field=``, ``seq_field=`` and ``player_id_field=``.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

from fastpacket import _native
from fastpacket._native import encode

__all__ = ["HeaderLayout", "GAME", "encode", "FIELD_KINDS", "MAX_HEADER_SIZE"]

#: Field kinds a header may use, and their widths in bytes.
FIELD_KINDS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
#: Largest header a layout may describe, in bytes.
MAX_HEADER_SIZE = 64
_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}
_ROLES = ("type", "seq", "player_id")


class HeaderLayout(_native.NativeLayout):
    """HeaderLayout(fields, length_field, length_includes_header=True, byteorder="little", ...)

    Args:
        fields: ``[(name, kind), ...]`` in wire order; kind is one of
            ``"u8" "u16" "u32" "u64"``. Names are unique identifiers.
        length_field: the name of the field that holds the frame length.
        length_includes_header: True when the length counts the header too
            (GAME), False when it counts the payload only.
        byteorder: ``"little"`` or ``"big"`` for every field.
        length_adjustment: added to the length field's value (Netty's
            lengthAdjustment), for protocols whose length counts something
            else; usually 0.
        type_field, seq_field, player_id_field: the fields with those roles;
            default: the field of that name if there is one.
        name: a label for messages and repr.

    Raises:
        ValueError: no fields, a bad kind, duplicate or non-identifier names,
            a missing length field, a header over 64 bytes, a bad role name.
    """

    def __init__(
        self,
        fields: Iterable[Tuple[str, str]],
        length_field: str,
        length_includes_header: bool = True,
        byteorder: str = "little",
        *,
        length_adjustment: int = 0,
        type_field: Optional[str] = None,
        seq_field: Optional[str] = None,
        player_id_field: Optional[str] = None,
        name: Optional[str] = None,
    ) -> None:
        fields = [tuple(f) for f in fields]  # type: ignore[misc]  # shape checked below
        if not fields:
            raise ValueError("a header layout needs at least one field")
        names = []
        for f in fields:
            if len(f) != 2:
                raise ValueError(f"each field is (name, kind), got {f!r}")
            fname, kind = f
            if not isinstance(fname, str) or not fname.isidentifier():
                raise ValueError(f"field names must be identifiers, got {fname!r}")
            if kind not in FIELD_KINDS:
                raise ValueError(f"field {fname!r}: kind must be one of {sorted(FIELD_KINDS)}, got {kind!r}")
            if fname in names:
                raise ValueError(f"duplicate field name {fname!r}")
            names.append(fname)
        size = sum(FIELD_KINDS[k] for _, k in fields)
        if size > MAX_HEADER_SIZE:
            raise ValueError(f"a header is at most {MAX_HEADER_SIZE} bytes, these fields take {size}")
        if length_field not in names:
            raise ValueError(f"length_field {length_field!r} is not one of the fields {names}")
        if byteorder not in ("little", "big"):
            raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")
        if not isinstance(length_adjustment, int) or abs(length_adjustment) > 1 << 32:
            raise ValueError(f"length_adjustment must be an int within ±2**32, got {length_adjustment!r}")
        roles = {}
        for role, given in zip(_ROLES, (type_field, seq_field, player_id_field)):
            if given is not None and given not in names:
                raise ValueError(f"{role}_field {given!r} is not one of the fields {names}")
            chosen = given if given is not None else (role if role in names else None)
            if chosen == length_field:
                raise ValueError(f"the length field {length_field!r} cannot also be the {role} field")
            roles[role] = chosen
        self.fields: Tuple[Tuple[str, str], ...] = tuple(fields)  # type: ignore[assignment]
        self.length_field = length_field
        self.length_includes_header = bool(length_includes_header)
        self.byteorder = byteorder
        self.length_adjustment = length_adjustment
        self.roles = roles
        self.name = name or "HeaderLayout(" + ",".join(f"{n}:{k}" for n, k in fields) + ")"
        self.struct_format = ("<" if byteorder == "little" else ">") + "".join(_STRUCT_CODES[k] for _, k in fields)
        self._configure(
            list(fields), length_field, self.length_includes_header, length_adjustment, byteorder == "big", roles
        )

    # size, dtype and field_names come from the native half.

    def _key(self) -> tuple:
        return (self.fields, self.length_field, self.length_includes_header, self.byteorder,
                self.length_adjustment, tuple(sorted((k, v or "") for k, v in self.roles.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeaderLayout):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"HeaderLayout(fields={list(self.fields)!r}, length_field={self.length_field!r}, "
                f"length_includes_header={self.length_includes_header}, byteorder={self.byteorder!r}"
                + (f", length_adjustment={self.length_adjustment}" if self.length_adjustment else "")
                + (f", name={self.name!r}" if not self.name.startswith("HeaderLayout(") else "")
                + ")")

    def __reduce__(self):  # layouts pickle by value (worker processes)
        return (_rebuild_layout, (self.fields, self.length_field, self.length_includes_header, self.byteorder,
                                  self.length_adjustment, self.roles, self.name))


def _rebuild_layout(fields: Sequence[Tuple[str, str]], length_field: str, includes: bool, byteorder: str,
                    adjustment: int, roles: dict, name: str) -> HeaderLayout:
    return HeaderLayout(fields, length_field, includes, byteorder, length_adjustment=adjustment,
                        type_field=roles.get("type"), seq_field=roles.get("seq"),
                        player_id_field=roles.get("player_id"), name=name)


#: The default layout ``<HHII``: size (u16, whole packet), type (u16),
#: seq (u32), player_id (u32); 12 bytes.
GAME = HeaderLayout(
    [("size", "u16"), ("type", "u16"), ("seq", "u32"), ("player_id", "u32")],
    length_field="size",
    length_includes_header=True,
    byteorder="little",
    name="GAME",
)
_native._set_default_layout(GAME)
