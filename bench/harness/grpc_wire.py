"""gRPC messages as h2load sends them (length-prefixed frames), and one-off unary calls."""

from __future__ import annotations

import struct

import grpc

__all__ = ["grpc_frame", "grpc_unframe", "unary_call"]


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_unframe(frame: bytes) -> bytes:
    """The message of a single uncompressed frame; ValueError for anything else."""
    flag, length = frame[0], struct.unpack(">I", frame[1:5])[0]
    if flag != 0 or length != len(frame) - 5:
        raise ValueError("not a single uncompressed gRPC message")
    return frame[5:]


def unary_call(port: int, path: str, message: bytes, *, timeout: float = 5.0) -> bytes:
    """One raw-bytes unary call to ``path`` on 127.0.0.1:``port``; the raw answer."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        raw: bytes = call(message, timeout=timeout)
    return raw
