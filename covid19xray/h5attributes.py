"""Text attributes of an HDF5 file, their size checked before they are read.

A fixed-length string attribute says its size (`get_storage_size`). A variable-length one, which
h5py writes for a Python `str` and so every model saved before this project wrote fixed-length
strings, does not: its stored size is that of a pointer into the file's global heap, and HDF5
gives no call that says how long the string behind it is. Reading it to find out is what a
hostile file would want (a 300 MB class name, read whole). The length is in the file, though:
each variable-length element starts with it, in the attribute's message in its object's header.
`stored_length` reads it from there, and refuses (never guesses) any layout it does not parse:
attributes kept outside the header (dense storage), shared datatypes, versions it does not know.

The format: the HDF5 File Format Specification, version 3, sections IV.A.1 (object headers, v1
and v2), IV.A.2.f (datatype), IV.A.2.b (dataspace), IV.A.2.m (attribute) and IV.A.2.q
(continuation).
"""

import os
import stat
import struct

import h5py

# Message types of an object header.
CONTINUATION, ATTRIBUTE = 0x0010, 0x000C
VARIABLE_LENGTH = 9  # datatype class
# No header chunk of a file this project reads is near this; larger is refused unread.
MAX_CHUNK_BYTES = 1 << 20
MAX_CHUNKS = 64  # continuation blocks followed, at most (a loop of them would never end)


def read_text_attribute(obj, name, max_bytes):
    """The attribute `name` of the h5py object `obj` as text, or None without it; a ValueError
    when it holds more than `max_bytes` (checked before it is read) or is not text."""
    if name not in obj.attrs:
        return None
    if stored_length(obj, name) > max_bytes:
        raise ValueError(f"attribute {name} holds more than {max_bytes} bytes")
    value = obj.attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise ValueError(f"attribute {name} is not text")
    return value


def stored_length(obj, name):
    """The bytes the attribute `name` of `obj` holds, read without reading its value."""
    attribute = obj.attrs.get_id(name)
    kind = attribute.get_type()
    if not kind.is_variable_str() and kind.get_class() != h5py.h5t.VLEN:
        return attribute.get_storage_size()
    return _variable_length(obj, name)


def _variable_length(obj, name):
    """The sum of the lengths of the variable-length elements of the attribute `name`, read
    from its message in `obj`'s object header."""
    plist = obj.file.id.get_create_plist()
    offset_size, length_size = plist.get_sizes()
    base = plist.get_userblock()
    address = h5py.h5o.get_info(obj.id).addr
    with open(obj.file.filename, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        reader = _Reader(f, base, offset_size, length_size)
        try:
            for kind, message in reader.messages(address):
                if kind == ATTRIBUTE:
                    found = _attribute(message, name.encode(), reader)
                    if found is not None:
                        return found
        except (IndexError, struct.error):  # a message shorter than its fields
            raise ValueError("a damaged object header") from None
    raise ValueError(f"attribute {name} is not stored in its object's header")


class _Reader:
    """Bounded reads of header chunks from an open file."""

    def __init__(self, f, base, offset_size, length_size):
        self.f, self.base = f, base
        self.offset_size, self.length_size = offset_size, length_size

    def read(self, address, size):
        if size > MAX_CHUNK_BYTES:
            raise ValueError(f"an object header chunk of {size} bytes")
        self.f.seek(self.base + address)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("the object header runs past the end of the file")
        return data

    def number(self, data, at, size):
        if at + size > len(data):
            raise ValueError("a message runs past its chunk")
        return int.from_bytes(data[at:at + size], "little")

    def messages(self, address):
        """(type, data) of every message of the object header at `address`, continuation
        blocks followed."""
        prefix = self.read(address, 16)
        if prefix[:4] == b"OHDR":
            yield from self._version_2(address)
        elif prefix[0] == 1:
            yield from self._version_1(address, prefix)
        else:
            raise ValueError(f"an object header of version {prefix[0]}")

    def _continuation(self, data):
        """(address, length) of the block a continuation message points to."""
        return (self.number(data, 0, self.offset_size),
                self.number(data, self.offset_size, self.length_size))

    def _version_1(self, address, prefix):
        def header(data, at):  # type (2 bytes), size (2), flags (1), reserved (3)
            kind, length = struct.unpack_from("<HH", data, at)
            return kind, length, data[at + 4]

        first = self.read(address + 16, struct.unpack_from("<I", prefix, 8)[0])
        return self._walk(first, 8, header, self.read)

    def _version_2(self, address):
        head = self.read(address, 6 + 16 + 4 + 8)
        version, flags = head[4], head[5]
        if version != 2:
            raise ValueError(f"an object header of version {version}")
        at = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        first = self.read(address + at + width, self.number(head, at, width))

        def header(data, at):  # type (1 byte), size (2), flags (1)[, creation order (2)]
            return data[at], struct.unpack_from("<H", data, at + 1)[0], data[at + 3]

        def block(start, size):  # a continuation block: its signature, messages, checksum
            data = self.read(start, size)
            if data[:4] != b"OCHK":
                raise ValueError("a continuation block without its signature")
            return data[4:-4]

        return self._walk(first, 6 if flags & 0x04 else 4, header, block)

    def _walk(self, data, step, header, read_block):
        """(type, data) of the messages in the chunk `data` and in the continuation blocks
        they point to: each message is `step` bytes of header (`header(data, at)`: its type,
        size and flags), then its data."""
        chunks = []
        for _ in range(MAX_CHUNKS):
            at = 0
            while at + step <= len(data):
                kind, length, flags = header(data, at)
                body = data[at + step:at + step + length]
                if len(body) != length:
                    raise ValueError("a message runs past its chunk")
                if flags & 0x02:  # shared: its data elsewhere
                    raise ValueError("a shared header message")
                if kind == CONTINUATION:
                    chunks.append(self._continuation(body))
                else:
                    yield kind, body
                at += step + length
            if not chunks:
                return
            data = read_block(*chunks.pop(0))
        raise ValueError(f"more than {MAX_CHUNKS} object header chunks")


def _attribute(message, wanted, reader):
    """The summed element lengths of the variable-length attribute `message` when it is named
    `wanted`, else None."""
    version = message[0]
    if version not in (1, 2, 3):
        raise ValueError(f"an attribute message of version {version}")
    flags = message[1]
    if flags & 0x03:  # its datatype or dataspace shared: stored elsewhere
        raise ValueError("an attribute with a shared datatype or dataspace")
    name_size, type_size, space_size = struct.unpack_from("<HHH", message, 2)
    at = 8 if version < 3 else 9

    def padded(n):
        return (n + 7) & ~7 if version == 1 else n

    name = message[at:at + name_size].rstrip(b"\0")
    at += padded(name_size)
    if name != wanted:
        return None
    datatype = message[at:at + type_size]
    at += padded(type_size)
    dataspace = message[at:at + space_size]
    at += padded(space_size)
    if len(datatype) < 8 or datatype[0] & 0x0F != VARIABLE_LENGTH:
        raise ValueError("not a variable-length attribute")
    element_size = struct.unpack_from("<I", datatype, 4)[0]
    if element_size != 4 + reader.offset_size + 4:  # a length, then a global heap ID
        raise ValueError(f"a variable-length element of {element_size} bytes")
    count = _elements(dataspace, reader.length_size)
    total = 0
    for k in range(count):
        total += reader.number(message, at + k * element_size, 4)
    return total


def _elements(dataspace, length_size):
    """The number of elements a dataspace message describes."""
    if len(dataspace) < 4:
        raise ValueError("a dataspace message runs short")
    version, rank = dataspace[0], dataspace[1]
    if version == 1:
        at = 8
    elif version == 2:
        if dataspace[3] == 0:  # scalar
            return 1
        if dataspace[3] == 2:  # null: no element
            return 0
        at = 4
    else:
        raise ValueError(f"a dataspace of version {version}")
    if rank == 0:
        return 1
    count = 1
    for k in range(rank):
        at_k = at + k * length_size
        if at_k + length_size > len(dataspace):
            raise ValueError("a dataspace message runs short")
        count *= int.from_bytes(dataspace[at_k:at_k + length_size], "little")
    if count > 1 << 20:
        raise ValueError(f"an attribute of {count} elements")
    return count
