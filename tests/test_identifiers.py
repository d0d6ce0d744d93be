"""Random identifiers of the request path (jti, request ids): their form, and no repeats across a fork."""

from __future__ import annotations

import os
import re

from tokendealer.identifiers import request_id, token_id


def test_token_ids_are_144_bit_base64url():
    ids = {token_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{24}", i) for i in ids)


def test_request_ids_are_128_bit_hex():
    ids = {request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_a_forked_worker_draws_other_values_than_its_parent():
    """granian forks its workers: a generator state copied into a child must not repeat the parent's values."""
    token_id()  # the generator is in use (seeded) before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next values, then out without running the test session's exit handlers
        os.write(write, " ".join(token_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [token_id() for _ in range(4)]
    assert len(child) == 4 and not set(child) & set(parent)
