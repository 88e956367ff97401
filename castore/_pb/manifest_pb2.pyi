from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Manifest(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, resource: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("path", "uid", "gid", "user", "group", "mode", "size", "digest", "target", "major", "minor", "xattr", "ads", "chunk", "mtime_ns", "has_mtime", "whiteout", "opaque", "raw_path", "hole", "raw_target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    XATTR_FIELD_NUMBER: _ClassVar[int]
    ADS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    HAS_MTIME_FIELD_NUMBER: _ClassVar[int]
    WHITEOUT_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_FIELD_NUMBER: _ClassVar[int]
    RAW_PATH_FIELD_NUMBER: _ClassVar[int]
    HOLE_FIELD_NUMBER: _ClassVar[int]
    RAW_TARGET_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    uid: int
    gid: int
    user: str
    group: str
    mode: int
    size: int
    digest: _containers.RepeatedScalarFieldContainer[str]
    target: str
    major: int
    minor: int
    xattr: _containers.RepeatedCompositeFieldContainer[XAttr]
    ads: _containers.RepeatedCompositeFieldContainer[ADSEntry]
    chunk: _containers.RepeatedCompositeFieldContainer[Chunk]
    mtime_ns: int
    has_mtime: bool
    whiteout: bool
    opaque: bool
    raw_path: _containers.RepeatedScalarFieldContainer[bytes]
    hole: _containers.RepeatedCompositeFieldContainer[Extent]
    raw_target: bytes
    def __init__(self, path: _Optional[_Iterable[str]] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., user: _Optional[str] = ..., group: _Optional[str] = ..., mode: _Optional[int] = ..., size: _Optional[int] = ..., digest: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ..., major: _Optional[int] = ..., minor: _Optional[int] = ..., xattr: _Optional[_Iterable[_Union[XAttr, _Mapping]]] = ..., ads: _Optional[_Iterable[_Union[ADSEntry, _Mapping]]] = ..., chunk: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ..., mtime_ns: _Optional[int] = ..., has_mtime: bool = ..., whiteout: bool = ..., opaque: bool = ..., raw_path: _Optional[_Iterable[bytes]] = ..., hole: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., raw_target: _Optional[bytes] = ...) -> None: ...

class XAttr(_message.Message):
    __slots__ = ("name", "data", "raw_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RAW_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    raw_name: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., raw_name: _Optional[bytes] = ...) -> None: ...

class ADSEntry(_message.Message):
    __slots__ = ("name", "data", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    digest: str
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., digest: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("digest", "begin", "end")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    digest: str
    begin: int
    end: int
    def __init__(self, digest: _Optional[str] = ..., begin: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Extent(_message.Message):
    __slots__ = ("begin", "end")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    begin: int
    end: int
    def __init__(self, begin: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...
