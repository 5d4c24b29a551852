"""How an event's body is stored: DEFLATE with a preset dictionary, behind a one-byte tag.

Why: the body (``Event.to_json()``, about 1 KB with the run's RunMetadata) was most of a state
file, and a state file must hold ``retention_days`` of events in a small volume. Each body is
compressed on its own (so one row is read without its neighbours) against a preset dictionary
of the text every event repeats (envelope, RunMetadata field names, status names), which
takes a typical body from ~1,050 to ~240 bytes where plain zlib reaches only ~500.

Invariants:
- A stored body is either ``TEXT`` (rows written before this codec: the JSON itself) or a
  ``BLOB`` whose first byte names the codec; :func:`decode_body` reads both, so old files stay
  readable without being rewritten and pending deliveries keep their exact body and id.
- Decoding gives back the exact text that was encoded (notifiers sign those bytes).
- A shipped dictionary is never edited (stored rows depend on it byte for byte): a better one
  is a new tag, with the old ones kept for reading.
"""

from __future__ import annotations

import zlib

_TAG_DEFLATE_V1 = 1
_WBITS = -15  # raw DEFLATE: no zlib header or checksum (SQLite pages have their own checks)

# Most frequent text last: DEFLATE reaches the end of the dictionary with the shortest
# distances. Never edit (see the module docstring).
_DICT_V1 = (
    b'"failure":{"task":"","message":"","stderr_tail":""}'
    b'{"type":"run.stuck","id":"evt_","timestamp":"2026-","data":{"run_uuid":"","project_id":"",'
    b'"status":"QUEUED","since":"","stuck_seconds":,"labels":{}}}'
    b'{"type":"run.not_found","id":"evt_","timestamp":"2026-","data":{"run_uuid":"",'
    b'"project_id":"","last_status":"RUNNING","observed_at":"","labels":{}}}'
    b'INITIALIZING","EXECUTOR_ERROR","SYSTEM_ERROR","CANCELED","COMPLETE","PREEMPTED","FAILED","'
    b'{"type":"run.status_changed","id":"evt_","timestamp":"2026-11-01T00:00:00.000Z","data":'
    b'{"run_uuid":"","project_id":"prj-","previous_status":"QUEUED","status":"RUNNING",'
    b'"terminal":false,"observed_at":"2026-11-01T00:00:00.000Z","labels":{"run_group":"rg-"},'
    b'"metadata":{"CallCached":false,"CallName":"","Command":"","EndTime":"","ErrorMessage":"",'
    b'"Input":"{\\".sample_id\\": \\"sample-\\", \\".reads_r1\\": \\"cos://\\", \\".reads_r2\\": '
    b'\\"_R1.fq.gz\\", \\".reference\\": \\"_R2.fq.gz\\"}","JobId":"","Output":"{}","ParentId":"",'
    b'"PostProcess":false,"Preprocess":false,"RunId":"","RunType":"Workflow","Runtime":"{}",'
    b'"ScatterIndex":"","StartTime":"2026-11-01T00:00:00+08:00","Status":"SUCCESS","Stderr":"",'
    b'"Stdout":"","SubmitTime":"2026-11-01T00:00:00+08:00","WorkDir":"","Meta":""},'
    b'"failure":null}}'
)


def encode_body(text: str) -> bytes:
    """The stored form of an event body (see :func:`decode_body`)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, _WBITS, 9, zlib.Z_DEFAULT_STRATEGY, _DICT_V1)
    return bytes([_TAG_DEFLATE_V1]) + packer.compress(text.encode()) + packer.flush()


def decode_body(stored: str | bytes) -> str:
    """The event's JSON text from a stored body: TEXT as is, a tagged BLOB decompressed."""
    if isinstance(stored, str):
        return stored
    if not stored or stored[0] != _TAG_DEFLATE_V1:
        raise ValueError("event body stored with an unknown codec")
    unpacker = zlib.decompressobj(_WBITS, _DICT_V1)
    return (unpacker.decompress(stored[1:]) + unpacker.flush()).decode()
