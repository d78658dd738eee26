"""The etcd-style commands' output: etcdctl 3.4's text lines, and JSON in the shape of its `-w json`.

Keys and values are bytes. Text shows them as they are when they are UTF-8 (as etcdctl does, so a
multi-line value comes out whole), else escaped on one line (printable()). JSON carries them in base64,
as etcdctl's does, so that tools written for `etcdctl -w json` read raftctl's unchanged.
"""

from __future__ import annotations

import base64
from typing import Any

from raftd.pb import etcd_kv_pb2 as kvpb
from raftd.pb import etcd_rpc_pb2 as pb

Doc = dict[str, Any]


def printable(raw: bytes) -> str:
    """UTF-8 text unchanged; anything else on one line, Python's way: bytes that are not UTF-8 as \\xNN,
    and backslash, newline and carriage return escaped too, so the bytes can be read back exactly."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    return text.replace("\n", "\\n").replace("\r", "\\r")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def header_doc(h: pb.ResponseHeader) -> Doc:
    return {
        "cluster_id": h.cluster_id,
        "member_id": h.member_id,
        "revision": h.revision,
        "raft_term": h.raft_term,
    }


def kv_doc(kv: kvpb.KeyValue) -> Doc:
    return {
        "key": b64(kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": b64(kv.value),
        "lease": kv.lease,
    }


def kv_lines(kv: kvpb.KeyValue, *, keys_only: bool = False, value_only: bool = False) -> list[str]:
    """etcdctl's two lines for a key-value: the key, then the value."""
    lines = [] if value_only else [printable(kv.key)]
    if not keys_only:
        lines.append(printable(kv.value))
    return lines


# -- KV -------------------------------------------------------------------------------------------------


def range_doc(r: pb.RangeResponse) -> Doc:
    return {
        "header": header_doc(r.header),
        "kvs": [kv_doc(kv) for kv in r.kvs],
        "count": r.count,
        "more": r.more,
    }


def range_lines(r: pb.RangeResponse, *, keys_only: bool = False, value_only: bool = False) -> list[str]:
    return [line for kv in r.kvs for line in kv_lines(kv, keys_only=keys_only, value_only=value_only)]


def put_doc(r: pb.PutResponse, prev_kv: bool) -> Doc:
    doc: Doc = {"header": header_doc(r.header)}
    if prev_kv:
        doc["prev_kv"] = kv_doc(r.prev_kv) if r.HasField("prev_kv") else None
    return doc


def put_lines(r: pb.PutResponse) -> list[str]:
    return ["OK", *(kv_lines(r.prev_kv) if r.HasField("prev_kv") else [])]


def delete_doc(r: pb.DeleteRangeResponse) -> Doc:
    return {
        "header": header_doc(r.header),
        "deleted": r.deleted,
        "prev_kvs": [kv_doc(kv) for kv in r.prev_kvs],
    }


def delete_lines(r: pb.DeleteRangeResponse) -> list[str]:
    return [str(r.deleted), *(line for kv in r.prev_kvs for line in kv_lines(kv))]


def txn_doc(r: pb.TxnResponse) -> Doc:
    responses: list[Doc] = []
    for op in r.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            responses.append({kind: range_doc(op.response_range)})
        elif kind == "response_put":
            responses.append({kind: put_doc(op.response_put, op.response_put.HasField("prev_kv"))})
        elif kind == "response_delete_range":
            responses.append({kind: delete_doc(op.response_delete_range)})
        elif kind == "response_txn":
            responses.append({kind: txn_doc(op.response_txn)})
    return {"header": header_doc(r.header), "succeeded": r.succeeded, "responses": responses}


def txn_lines(r: pb.TxnResponse) -> list[str]:
    """SUCCESS or FAILURE, then each request's output after a blank line, as etcdctl prints them."""
    lines = ["SUCCESS" if r.succeeded else "FAILURE"]
    for op in r.responses:
        lines.append("")
        kind = op.WhichOneof("response")
        if kind == "response_range":
            lines += range_lines(op.response_range)
        elif kind == "response_put":
            lines += put_lines(op.response_put)
        elif kind == "response_delete_range":
            lines += delete_lines(op.response_delete_range)
        elif kind == "response_txn":
            lines += txn_lines(op.response_txn)
    return lines


# -- watch ----------------------------------------------------------------------------------------------


def event_type(e: kvpb.Event) -> str:
    return "DELETE" if e.type == kvpb.Event.DELETE else "PUT"


def event_doc(e: kvpb.Event, prev_kv: bool) -> Doc:
    """One event as one flat object (not etcdctl's whole WatchResponse): one line per event."""
    doc: Doc = {"type": event_type(e), **kv_doc(e.kv)}
    if prev_kv:
        doc["prev_kv"] = kv_doc(e.prev_kv) if e.HasField("prev_kv") else None
    return doc


def event_lines(e: kvpb.Event) -> list[str]:
    """etcdctl's: the type, the previous key-value when asked and there was one, then the key and value
    (a delete's value line is empty)."""
    prev = kv_lines(e.prev_kv) if e.HasField("prev_kv") else []
    return [event_type(e), *prev, *kv_lines(e.kv)]


# -- leases ---------------------------------------------------------------------------------------------


def lease_hex(lease: int) -> str:
    """A lease id as etcdctl prints it and takes it: 16 hex digits."""
    return f"{lease:016x}"


def lease_ttl_line(r: pb.LeaseTimeToLiveResponse, keys: bool) -> str:
    if r.TTL == -1:
        return f"lease {lease_hex(r.ID)} already expired"
    line = f"lease {lease_hex(r.ID)} granted with TTL({r.grantedTTL}s), remaining({r.TTL}s)"
    if keys:
        line += f", attached keys([{' '.join(printable(k) for k in r.keys)}])"
    return line


def lease_ttl_doc(r: pb.LeaseTimeToLiveResponse) -> Doc:
    return {
        "header": header_doc(r.header),
        "ID": r.ID,
        "TTL": r.TTL,
        "grantedTTL": r.grantedTTL,
        "keys": [b64(k) for k in r.keys],
    }
