"""protocol.py against hostile input: whatever arrives, decode() and recv() return a
message or raise ProtocolError (EOFError for an empty read), and recv() leaks no fd.

Real SEQPACKET socketpairs in this process; no fork.
"""
import dataclasses
import json
import os
import random
import socket

import pytest

from gunicorn_smartspawn.shared import protocol
from gunicorn_smartspawn.shared.protocol import (
    MAX_FDS, MAX_MESSAGE, MAX_TEXT, MESSAGES, ProtocolError,
)

# A valid instance of every message; a new message type fails
# test_every_message_has_a_sample until it has one.
SAMPLES = [
    protocol.SpawnWorker(age=3, slot=2),
    protocol.SpawnWorker(age=4, slot=None, listeners=2, hook_state=True),
    protocol.SpawnerReady(pid=812, boot_seconds=1.25),
    protocol.SpawnerReady(pid=812, boot_seconds=0.5, immortal_objects=10, immortal_walked=20,
                          immortal_seconds=0.125),
    protocol.BecomeTemplate(generation=2),
    protocol.BootFailed(exit_code=3, reason="Traceback ...\nRuntimeError: no"),
    protocol.StandbyReady(pid=813),
    protocol.WorkerSpawned(age=3, pid=814),
    protocol.SpawnFailed(age=5, reason="fork: EAGAIN"),
]

# Values a field of each annotated type must refuse. A field of a new type fails
# test_every_field_type_has_wrong_values until it is listed here.
WRONG = {
    int: ["1", 1.5, True, None, [], {}],
    int | None: ["1", 1.5, False, [], {"a": 1}],
    float: ["1.0", True, None, [], {}],
    float | None: ["0.5", True, [1.0], {}],
    bool: [1, 0, "true", None, [], 1.0],
    str: [1, None, ["x"], {"x": 1}, True],
}


def encode(fields):
    return json.dumps(fields, ensure_ascii=False).encode()


def fields_of(message):
    return {"type": type(message).__name__, **dataclasses.asdict(message)}


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair():
    master, child = protocol.channel_pair()
    yield master, child
    master.close()
    child.close()


def decode_or_protocol_error(data):
    """The message `data` decodes to, or None when it raised ProtocolError; anything else
    it raises fails the test."""
    try:
        message = protocol.decode(data)
    except ProtocolError:
        return None
    assert type(message) in MESSAGES.values()
    return message


# -- valid messages -------------------------------------------------------------------------

def test_every_message_has_a_sample():
    assert {type(m) for m in SAMPLES} == set(MESSAGES.values())


@pytest.mark.parametrize("message", SAMPLES, ids=repr)
def test_a_message_crosses_a_channel_unchanged(pair, message):
    master, child = pair
    protocol.send(master, message)
    assert protocol.recv(child) == (message, [])
    assert protocol.decode(encode(fields_of(message))) == message


def test_fds_cross_with_a_message_and_are_not_inheritable(pair, tmp_path):
    master, child = pair
    with open(tmp_path / "heartbeat", "w") as heartbeat:
        protocol.send(master, SAMPLES[0], [heartbeat.fileno(), heartbeat.fileno()])
    message, fds = protocol.recv(child)
    try:
        assert message == SAMPLES[0] and len(fds) == 2
        assert not any(os.get_inheritable(fd) for fd in fds)
        assert os.readlink("/proc/self/fd/%d" % fds[0]).endswith("heartbeat")
    finally:
        for fd in fds:
            os.close(fd)


def test_a_long_reason_is_cut_by_the_sender():
    failed = protocol.BootFailed(exit_code=3, reason="x" * (MAX_TEXT * 10))
    assert failed.reason.startswith("x" * MAX_TEXT)
    assert failed.reason.endswith(" [... %d more characters, see the log]" % (MAX_TEXT * 9))
    # Non-ASCII at 4 bytes each still fits in a datagram.
    worst = protocol.SpawnFailed(age=1, reason="\U0001f600" * (MAX_TEXT * 2))
    assert len(encode(fields_of(worst))) <= MAX_MESSAGE
    assert isinstance(protocol.decode(encode(fields_of(worst))), protocol.SpawnFailed)


def test_a_cut_reason_arrives_as_it_was_sent():
    failed = protocol.BootFailed(exit_code=3, reason="x" * (MAX_TEXT * 10))
    assert protocol.decode(encode(fields_of(failed))) == failed


def test_send_refuses_a_message_larger_than_a_datagram(pair, monkeypatch):
    master, child = pair
    monkeypatch.setattr(protocol, "MAX_MESSAGE", 20)
    with pytest.raises(ProtocolError, match="larger than 20"):
        protocol.send(master, SAMPLES[0])
    child.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing was sent
        child.recv(100)


# -- hostile datagrams: decode() ------------------------------------------------------------

NOT_A_MESSAGE = [
    b"",
    b"not json",
    b"{",
    b"\xff\xfe\x00",                              # not UTF-8
    b'{"type": "WorkerSpawned", "age": 1, "pid": 2}\x00',
    b"[]",
    b'["WorkerSpawned", 1, 2]',
    b"1",
    b"null",
    b"true",
    b"NaN",
    b'"WorkerSpawned"',
    b"{}",                                        # no type
    b'{"age": 1, "pid": 2}',
    b'{"type": "Nope"}',
    b'{"type": "ProtocolError"}',
    b'{"type": "__class__"}',
    b'{"type": "workerspawned", "age": 1, "pid": 2}',
    b'{"type": null, "age": 1, "pid": 2}',
    b'{"type": 1}',
    b'{"type": ["WorkerSpawned"], "age": 1, "pid": 2}',   # unhashable
    b'{"type": {"a": 1}}',
    b'{"type": "WorkerSpawned", "age": 1}',               # a field missing
    b'{"type": "WorkerSpawned"}',
    b'{"type": "WorkerSpawned", "age": 1, "pid": 2, "extra": 3}',
    b'{"type": "BootFailed", "exit_code": 3, "reason": 42}',
    b'{"type": "BootFailed", "exit_code": 3, "reason": {"a": 1}}',
    b'{"type": "WorkerSpawned", "age": 1, "pid": 1' + b"0" * 5000 + b"}",  # int too long
    b'{"type": "WorkerSpawned", "age": 1e400, "pid": 2}',
    b'{"type": "WorkerSpawned", "age": NaN, "pid": 2}',
    b'{"type": "BecomeTemplate", "generation": 2, "generation": "2"}',    # duplicate key
]


@pytest.mark.parametrize("data", NOT_A_MESSAGE, ids=lambda d: repr(d[:50]))
def test_what_is_no_message_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        protocol.decode(data)


def test_a_reason_of_many_items_is_a_protocol_error():
    many = {"type": "BootFailed", "exit_code": 3, "reason": ["x"] * (MAX_TEXT + 10)}
    with pytest.raises(ProtocolError):
        protocol.decode(encode(many))
    many["reason"] = {str(i): i for i in range(MAX_TEXT + 10)}
    with pytest.raises(ProtocolError):
        protocol.decode(encode(many))


def test_every_field_type_has_wrong_values():
    types = {f.type for cls in MESSAGES.values() for f in dataclasses.fields(cls)}
    assert types <= set(WRONG), types - set(WRONG)


@pytest.mark.parametrize("message", SAMPLES, ids=repr)
def test_a_field_of_the_wrong_type_is_a_protocol_error(message):
    for field in dataclasses.fields(message):
        for wrong in WRONG[field.type]:
            fields = {**fields_of(message), field.name: wrong}
            with pytest.raises(ProtocolError, match=field.name):
                protocol.decode(encode(fields))


@pytest.mark.parametrize("message", SAMPLES, ids=repr)
def test_a_truncated_message_is_a_protocol_error(message):
    data = encode(fields_of(message))
    for size in range(len(data)):
        with pytest.raises(ProtocolError):
            protocol.decode(data[:size])


@pytest.mark.parametrize("prefix", [b"", b'{"type": "BootFailed", "exit_code": 3, "reason": '],
                         ids=["array", "in-a-field"])
def test_deeply_nested_json_is_a_protocol_error(prefix):
    data = prefix + b"[" * (MAX_MESSAGE - len(prefix))  # as deep as a datagram holds
    with pytest.raises(ProtocolError):
        protocol.decode(data)


def test_random_and_mutated_datagrams_decode_or_raise_protocol_error():
    """Random bytes and valid datagrams with bytes flipped, cut, inserted or repeated."""
    rng = random.Random(1234)
    valid = [encode(fields_of(m)) for m in SAMPLES]
    decoded = 0
    for _ in range(3000):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            match rng.randrange(5):
                case 0:
                    data[at:at + 1] = bytes([rng.randrange(256)])
                case 1:
                    del data[at:at + rng.randint(1, 8)]
                case 2:
                    data[at:at] = rng.choice([b"0", b"-", b".", b"e9", b"\"", b",", b"]",
                                              b"}", b"null", b"true", b"\\u0000"])
                case 3:
                    data[at:at] = data[at:at + rng.randint(1, 20)]
                case 4:
                    data = bytearray(rng.randbytes(rng.randint(0, 200)))
        decoded += decode_or_protocol_error(bytes(data)) is not None
    assert decoded < 3000  # most mutations break the message


# -- hostile datagrams: recv() on a real channel ---------------------------------------------

def test_an_empty_read_is_eof(pair):
    master, child = pair
    master.close()
    with pytest.raises(EOFError):
        protocol.recv(child)


def test_an_empty_datagram_is_eof(pair):
    """A zero-length datagram cannot be told from the peer's close."""
    master, child = pair
    master.send(b"")
    with pytest.raises(EOFError):
        protocol.recv(child)


@pytest.mark.parametrize("data", [b"garbage", b"[]", b'{"type": "Nope"}',
                                  b'{"type": "WorkerSpawned", "age": 1}'])
def test_garbage_on_the_channel_is_a_protocol_error_and_the_next_message_reads(pair, data):
    master, child = pair
    master.send(data)
    protocol.send(master, SAMPLES[-1])
    with pytest.raises(ProtocolError):
        protocol.recv(child)
    assert protocol.recv(child) == (SAMPLES[-1], [])


def test_truncated_datagrams_on_the_channel_are_protocol_errors(pair):
    master, child = pair
    data = encode(fields_of(SAMPLES[1]))
    for size in range(1, len(data), 7):
        master.send(data[:size])
        with pytest.raises(ProtocolError):
            protocol.recv(child)


def test_an_oversized_datagram_is_a_protocol_error_and_its_rest_is_dropped(pair):
    master, child = pair
    master.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_MESSAGE)
    big = encode({"type": "BootFailed", "exit_code": 3, "reason": "x" * MAX_MESSAGE})
    master.send(big)
    protocol.send(master, SAMPLES[-2])
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.recv(child)
    assert protocol.recv(child) == (SAMPLES[-2], [])


@pytest.mark.parametrize("data", [encode(fields_of(SAMPLES[0])), b"garbage", b"\x00"])
def test_too_many_fds_is_a_protocol_error_and_none_of_them_leaks(pair, data):
    master, child = pair
    before = open_fds()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        socket.send_fds(master, [data], [fd] * (MAX_FDS + 1))
    finally:
        os.close(fd)
    with pytest.raises(ProtocolError):
        protocol.recv(child)
    assert open_fds() == before


@pytest.mark.parametrize("data", [b"garbage", b'{"type": "Nope"}', b"[]"])
def test_fds_that_come_with_garbage_are_closed(pair, data):
    master, child = pair
    before = open_fds()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        socket.send_fds(master, [data], [fd, fd, fd])
    finally:
        os.close(fd)
    with pytest.raises(ProtocolError):
        protocol.recv(child)
    assert open_fds() == before


def test_fds_without_a_message_are_a_protocol_error_and_closed(pair):
    """No bytes but fds: not the peer's close, and no message either."""
    master, child = pair
    before = open_fds()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        socket.send_fds(master, [b""], [fd])
    finally:
        os.close(fd)
    with pytest.raises(ProtocolError):
        protocol.recv(child)
    assert open_fds() == before


def test_max_fds_with_a_message_arrive(pair):
    master, child = pair
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        protocol.send(master, SAMPLES[0], [fd] * MAX_FDS)
    finally:
        os.close(fd)
    message, fds = protocol.recv(child)
    for received in fds:
        os.close(received)
    assert message == SAMPLES[0] and len(fds) == MAX_FDS
