from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLeaderResponse(_message.Message):
    __slots__ = ("nodeId", "nodeAddress")
    NODEID_FIELD_NUMBER: _ClassVar[int]
    NODEADDRESS_FIELD_NUMBER: _ClassVar[int]
    nodeId: int
    nodeAddress: str
    def __init__(self, nodeId: _Optional[int] = ..., nodeAddress: _Optional[str] = ...) -> None: ...

class SuspendRequest(_message.Message):
    __slots__ = ("period",)
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    period: int
    def __init__(self, period: _Optional[int] = ...) -> None: ...

class SetValRequest(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class SetValResponse(_message.Message):
    __slots__ = ("verdict",)
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    verdict: bool
    def __init__(self, verdict: _Optional[bool] = ...) -> None: ...

class GetValRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetValResponse(_message.Message):
    __slots__ = ("verdict", "value")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    verdict: bool
    value: str
    def __init__(self, verdict: _Optional[bool] = ..., value: _Optional[str] = ...) -> None: ...
