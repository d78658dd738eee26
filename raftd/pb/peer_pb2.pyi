from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MsgType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MSG_TYPE_UNSPECIFIED: _ClassVar[MsgType]
    APP: _ClassVar[MsgType]
    APP_RESP: _ClassVar[MsgType]
    VOTE: _ClassVar[MsgType]
    VOTE_RESP: _ClassVar[MsgType]
    PRE_VOTE: _ClassVar[MsgType]
    PRE_VOTE_RESP: _ClassVar[MsgType]
    SNAP: _ClassVar[MsgType]
    HEARTBEAT: _ClassVar[MsgType]
    HEARTBEAT_RESP: _ClassVar[MsgType]
    TRANSFER_LEADER: _ClassVar[MsgType]
    TIMEOUT_NOW: _ClassVar[MsgType]
    READ_INDEX: _ClassVar[MsgType]
    READ_INDEX_RESP: _ClassVar[MsgType]
MSG_TYPE_UNSPECIFIED: MsgType
APP: MsgType
APP_RESP: MsgType
VOTE: MsgType
VOTE_RESP: MsgType
PRE_VOTE: MsgType
PRE_VOTE_RESP: MsgType
SNAP: MsgType
HEARTBEAT: MsgType
HEARTBEAT_RESP: MsgType
TRANSFER_LEADER: MsgType
TIMEOUT_NOW: MsgType
READ_INDEX: MsgType
READ_INDEX_RESP: MsgType

class Entry(_message.Message):
    __slots__ = ("index", "term", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SnapshotMeta(_message.Message):
    __slots__ = ("index", "term")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("meta", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: SnapshotMeta
    data: bytes
    def __init__(self, meta: _Optional[_Union[SnapshotMeta, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("type", "to", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "context", "snapshot")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    type: MsgType
    to: int
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    commit: int
    reject: bool
    reject_hint: int
    context: bytes
    snapshot: Snapshot
    def __init__(self, type: _Optional[_Union[MsgType, str]] = ..., to: _Optional[int] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., context: _Optional[bytes] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., **kwargs) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("cluster", "messages", "cluster_id", "version")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    cluster_id: str
    version: int
    def __init__(self, cluster: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("cluster", "header", "total_size", "data", "cluster_id")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    header: Message
    total_size: int
    data: bytes
    cluster_id: str
    def __init__(self, cluster: _Optional[str] = ..., header: _Optional[_Union[Message, _Mapping]] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ..., cluster_id: _Optional[str] = ...) -> None: ...
