#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_service (tests/fuzz/corpus/fuzz_service/).

Each seed is a sequence of calls in fuzz_service's input format: an op byte
(the method), a count byte (messages - 1) and each message as a u16
little-endian length plus its bytes. Messages are encoded from text format
by protoc, so the seeds follow proto/ whenever they are rewritten:

    python3 tests/fuzz/make_service_seeds.py
"""
import os
import struct
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus", "fuzz_service")
OPS = {"CreateProfile": 0, "GetProfile": 1, "DeleteProfile": 2, "CreateSession": 3, "GetSession": 4,
       "DropSession": 5, "Append": 6, "Attend": 7, "AttendStream": 8, "Read": 9, "ListSessions": 10,
       "GetServerInfo": 11}
REQUEST = {"CreateProfile": "CreateProfileRequest", "GetProfile": "GetProfileRequest",
           "DeleteProfile": "DeleteProfileRequest", "CreateSession": "CreateSessionRequest",
           "GetSession": "GetSessionRequest", "DropSession": "DropSessionRequest", "Append": "AppendRequest",
           "Attend": "AttendRequest", "AttendStream": "AttendRequest", "Read": "ReadRequest",
           "ListSessions": "ListSessionsRequest", "GetServerInfo": "GetServerInfoRequest"}


def encode(message_type, text):
    return subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--encode=ropekv.v1." + message_type,
                           "ropekv/v1/service.proto"], input=text.encode(), capture_output=True,
                          check=True).stdout


def floats(n, seed):
    """n fp32 values in [-1, 1) as a text-format bytes literal."""
    data = b"".join(struct.pack("<f", ((i * 7919 + seed * 104729) % 2001) / 1000.0 - 1.0) for i in range(n))
    return '"' + "".join("\\%03o" % b for b in data) + '"'


def tensor(shape, seed):
    n = 1
    for s in shape:
        n *= s
    return "dtype: DTYPE_FP32 " + " ".join("shape: %d" % s for s in shape) + " data: " + floats(n, seed)


def call(method, *texts):
    out = bytes([OPS[method], len(texts) - 1])
    for t in texts:
        m = encode(REQUEST[method], t)
        out += struct.pack("<H", len(m)) + m
    return out


GEOMETRY = ("geometry { num_layers: 2 num_q_heads: 4 num_kv_heads: 2 head_dim: 32 "
            "rope_layout: ROPE_LAYOUT_INTERLEAVED rotary_dim: 32 rope_theta: 10000 }")
BUDGET = "budget { key_avg_bits: 3 value_bits: 3 }"
SCORES = "scores { " + " ".join(
    "heads { layer: %d kv_head: %d %s }" % (l, h, " ".join("scores: %d" % (1 + b % 5) for b in range(16)))
    for l in range(2) for h in range(2)) + " }"
QUERY = 'items { session_id: "s" layer: 0 queries { %s } }' % tensor([4, 1, 32], 1)

SEEDS = {
    "attend": call("Attend", QUERY),
    "attend-causal-batch": call("Attend", 'items { session_id: "s" layer: 1 queries { %s } causal_offset: 12 } %s'
                                % (tensor([4, 4, 32], 2), QUERY) + " output_dtype: DTYPE_FP16"),
    "append-then-attend": call("Append", 'session_id: "s" layer: 0 token_start: 16 keys { %s } values { %s }'
                               % (tensor([2, 2, 32], 3), tensor([2, 2, 32], 4)),
                               'layer: 1 token_start: 16 keys { %s } values { %s }'
                               % (tensor([2, 2, 32], 5), tensor([2, 2, 32], 6)))
    + call("Attend", QUERY),
    "profile-scores": call("CreateProfile", 'spec { profile_id: "q" %s %s %s }' % (GEOMETRY, BUDGET, SCORES))
    + call("GetProfile", 'profile_id: "q" include_plan: true') + call("DeleteProfile", 'profile_id: "q"'),
    "profile-calibration": call("CreateProfile", 'spec { profile_id: "c" %s %s calibration {} }' % (GEOMETRY, BUDGET),
                                "calibration { layer: 0 queries { %s } keys { %s } }"
                                % (tensor([4, 3, 32], 7), tensor([2, 3, 32], 8)),
                                "calibration { layer: 1 queries { %s } keys { %s } }"
                                % (tensor([4, 3, 32], 9), tensor([2, 3, 32], 10))),
    "profile-allocation": call("CreateProfile", 'spec { profile_id: "a" %s %s allocation { %s } }' % (
        GEOMETRY, BUDGET, " ".join("heads { layer: %d kv_head: %d %s }" % (
            l, h, " ".join("block_bits: %d" % (2 + b % 3) for b in range(16))) for l in range(2) for h in range(2)))),
    "session-window": call("CreateSession", 'session_id: "w" profile_id: "p" sink_tokens: 1 window_tokens: 2')
    + call("Append", 'session_id: "w" layer: 0 token_start: 0 keys { %s } values { %s }'
           % (tensor([2, 4, 32], 11), tensor([2, 4, 32], 12)))
    + call("Attend", 'items { session_id: "w" layer: 0 queries { %s } causal_offset: 3 }' % tensor([4, 1, 32], 13))
    + call("GetSession", 'session_id: "w"') + call("DropSession", 'session_id: "w"'),
    "read-packed": call("Read", 'session_id: "s" format: READ_FORMAT_PACKED chunk_tokens: 5'),
    "read-fp16-range": call("Read", 'session_id: "s" layers: 1 token_start: 3 token_end: 9 format: READ_FORMAT_FP16'),
    "attend-stream": call("AttendStream", QUERY, QUERY.replace("layer: 0", "layer: 1")),
    "listing": call("ListSessions", "") + call("GetServerInfo", ""),
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print("wrote %d seeds to %s" % (len(SEEDS), OUT))
