"""The wire codec: every message survives a round trip, and every bad frame becomes a clear Error."""

from __future__ import annotations

import typing

import msgspec
import pytest

from milex_common.model import JobState, MachineSettings
from milex_common.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    AppVersions,
    AppVersionsReply,
    Cancel,
    Cancelled,
    Error,
    ErrorCode,
    Event,
    Events,
    Hello,
    HelloReply,
    LogChunk,
    Logs,
    ProtocolError,
    Reply,
    Request,
    Shutdown,
    Status,
    StatusReply,
    SubmitBundle,
    SubmitProgress,
    Submitted,
    TrackedJob,
    Unwatch,
    Watch,
    decode_reply,
    decode_request,
    encode,
    version_mismatch,
)
from milex_common.usage import StepUsage, TaskUsage, Usage
from tests.unit.agent_fakes import chain_bundle

SETTINGS = MachineSettings(name="cluster", path="/scratch/alice/milex", slurm_account="def-alice")
TRACKED = TrackedJob(
    key="exp_20240101000000/a", bundle="exp_20240101000000", name="a", job_id="1234",
    state=JobState.FAILED, exit_code=3, reason="NonZeroExitCode", script="/p/slurm/a.sh",
    stdout="/p/slurm/a-%j.out", stderr="/p/slurm/a-%j.err", submitted_at=1.5, updated_at=2.5,
    script_sha256="5" * 64,
)  # fmt: skip
USAGE = Usage(
    tasks=[TaskUsage(task=2, state="COMPLETED", elapsed=7.0, cpu_time=0.7, max_rss=220880896,
                     requested_memory=524288000, cpus=2, time_limit=300.0,
                     steps=[StepUsage(name="batch", elapsed=7.0, cpu_time=0.7, max_rss=220880896)])]
)  # fmt: skip
EVENT = Event(seq=7, key="k", bundle="exp_20240101000000", name="a", job_id="1234", state=JobState.RUNNING)

REQUESTS = [
    Hello(id="r1", client_version="0.1.0"),
    SubmitBundle(id="r2", bundle=chain_bundle(), settings=SETTINGS, keys={"a": "ka", "b": "kb", "c": "kc"}),
    SubmitBundle(
        id="r2c",
        bundle=chain_bundle(),
        settings=SETTINGS,
        keys={"a": "ka", "b": "kb", "c": "kc"},
        progress=True,
        check_versions=True,
    ),
    Cancel(id="r3", job_ids=["1", "2"]),
    Cancel(id="r4", bundle="exp"),
    Status(id="r5", bundle="exp_20240101000000"),
    Status(id="r5u", bundle="exp", usage=True),
    Watch(id="r6", since=12, follow=False, heartbeat=0.5),
    Unwatch(id="r7", watch_id="r6"),
    Logs(id="r8", job_id="1234", stream="err", offset=100, follow=True, array_task=3),
    Shutdown(id="r9"),
    AppVersions(id="r10", settings=SETTINGS, apps=["milex-example", "train"]),
]
REPLIES = [
    HelloReply(id="r1", agent_version="0.1.0", user="alice", host="login1", pid=42, last_seq=9),
    Submitted(id="r2", jobs=[TRACKED], error="job 'b' was not submitted"),
    Submitted(id="r2c", jobs=[TRACKED], unchecked="the agent runs in a container"),
    SubmitProgress(id="r2", submitted=3, total=200, in_doubt=1, waiting_for_controller=True),
    Cancelled(id="r3", job_ids=["1", "2"]),
    StatusReply(
        id="r5",
        jobs=[TRACKED, TrackedJob(key="k", bundle="b", name="n", job_id="1", state=JobState.SUBMITTED)],
        last_seq=3,
    ),
    StatusReply(id="r5u", jobs=[TRACKED], usage={TRACKED.key: USAGE}),
    Events(id="r6", events=[EVENT], last_seq=7),
    LogChunk(id="r8", path="/p/slurm/a-1234.out", offset=100, data=b"\x00\xffbinary ok\n", eof=True),
    Ack(id="r9"),
    AppVersionsReply(id="r10", versions={"milex-example": "0.1.0", "train": ""}),
    AppVersionsReply(id="r10", error="the check took more than 30 s"),
    Error(id="r2", code="failed", message="refused", detail="traceback"),
]


def test_every_request_and_reply_type_is_covered_by_the_round_trips():
    assert {type(r) for r in REQUESTS} == set(typing.get_args(Request))
    assert {type(r) for r in REPLIES} == set(typing.get_args(Reply))


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_request_survives_a_round_trip(request_):
    decoded = decode_request(encode(request_))
    assert type(decoded) is type(request_)
    assert decoded == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_a_reply_survives_a_round_trip(reply):
    decoded = decode_reply(encode(reply))
    assert type(decoded) is type(reply)
    assert decoded == reply


def test_a_request_is_not_read_as_a_reply_nor_the_reverse():
    with pytest.raises(ProtocolError) as caught:
        decode_reply(encode(Hello(id="r1")))
    assert caught.value.reply.code == "bad_request"
    with pytest.raises(ProtocolError) as caught:
        decode_request(encode(Ack(id="r1")))
    assert caught.value.reply.code == "bad_request"


def test_a_status_without_usage_from_an_older_peer_decodes_with_none():
    """An older client's Status has no `usage`; an older agent's StatusReply neither."""
    older = msgspec.msgpack.encode({"type": "status", "v": PROTOCOL_VERSION, "id": "x", "bundle": "b"})
    assert decode_request(older) == Status(id="x", bundle="b", usage=False)
    older_reply = msgspec.msgpack.encode({"type": "status_reply", "v": PROTOCOL_VERSION, "id": "x"})
    assert decode_reply(older_reply) == StatusReply(id="x", usage={})


def test_a_submit_and_its_reply_from_an_older_peer_decode_with_no_version_check():
    """An older client's SubmitBundle has no `check_versions` (the agent checks nothing, as then); an
    older agent's Submitted has no `unchecked`."""
    older = msgspec.msgpack.encode(
        {"type": "submit", "v": PROTOCOL_VERSION, "id": "x", "bundle": msgspec.to_builtins(chain_bundle()),
         "settings": msgspec.to_builtins(SETTINGS), "keys": {"a": "ka"}}
    )  # fmt: skip
    assert decode_request(older) == SubmitBundle(
        id="x", bundle=chain_bundle(), settings=SETTINGS, keys={"a": "ka"}
    )
    older_reply = msgspec.msgpack.encode({"type": "submitted", "v": PROTOCOL_VERSION, "id": "x", "error": ""})
    assert decode_reply(older_reply) == Submitted(id="x", unchecked="")


def test_unknown_fields_from_a_newer_peer_are_ignored():
    frame = msgspec.msgpack.encode({"type": "hello", "v": PROTOCOL_VERSION, "id": "r1", "color": "blue"})
    assert decode_request(frame) == Hello(id="r1")


def test_a_bundle_from_a_newer_client_with_one_more_job_field_and_slurm_option_decodes():
    request = SubmitBundle(
        id="r2", bundle=chain_bundle(), settings=SETTINGS, keys={"a": "ka", "b": "kb", "c": "kc"}
    )
    newer = msgspec.to_builtins(request)
    newer["bundle"]["jobs"]["a"]["retries"] = 3
    newer["bundle"]["jobs"]["a"]["slurm"] = {"time": "10", "gpus_per_task": 2}
    decoded = decode_request(msgspec.msgpack.encode(newer))
    assert isinstance(decoded, SubmitBundle)
    assert decoded.bundle.jobs["a"].slurm.time == "10"
    assert decoded.bundle.jobs["b"] == request.bundle.jobs["b"]


# ---- bad frames, for both directions ------------------------------------------------------------

DECODERS = [pytest.param(decode_request, id="request"), pytest.param(decode_reply, id="reply")]


def _error(decode, frame: bytes) -> Error:
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert str(caught.value) == caught.value.reply.message
    return caught.value.reply


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("frame", [b"\xc1garbage", b"", b"\x81", b"not msgpack at all"])
def test_garbage_bytes_are_a_bad_request(decode, frame):
    error = _error(decode, frame)
    assert error.code == "bad_request"
    assert "not a Milex message" in error.message


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("value", [[1, 2, 3], "hello", 42, None])
def test_msgpack_that_is_not_a_map_is_a_bad_request(decode, value):
    error = _error(decode, msgspec.msgpack.encode(value))
    assert error.code == "bad_request"
    assert "msgpack map expected" in error.message


@pytest.mark.parametrize("decode", DECODERS)
def test_an_unknown_type_is_a_bad_request_that_names_it_and_keeps_the_id(decode):
    error = _error(decode, msgspec.msgpack.encode({"type": "frobnicate", "v": PROTOCOL_VERSION, "id": "r7"}))
    assert error.code == "bad_request"
    assert error.id == "r7"
    assert "frobnicate" in error.message
    assert "$.type" in error.message


def test_a_wrong_field_type_in_a_request_names_the_field_path():
    frame = msgspec.msgpack.encode({"type": "logs", "v": PROTOCOL_VERSION, "id": "r8", "job_id": 1234})
    error = _error(decode_request, frame)
    assert (error.code, error.id) == ("bad_request", "r8")
    assert "`$.job_id`" in error.message
    assert "'logs'" in error.message


def test_a_wrong_nested_field_type_names_its_path():
    request = msgspec.to_builtins(REQUESTS[1])
    request["bundle"]["jobs"]["b"]["dependencies"] = "a"
    error = _error(decode_request, msgspec.msgpack.encode(request))
    assert error.code == "bad_request"
    assert "$.bundle.jobs" in error.message and ".dependencies" in error.message


def test_a_missing_required_field_is_named():
    frame = msgspec.msgpack.encode({"type": "unwatch", "v": PROTOCOL_VERSION, "id": "r1"})
    error = _error(decode_request, frame)
    assert error.code == "bad_request"
    assert "watch_id" in error.message


def test_a_wrong_field_type_in_a_reply_names_the_field_path():
    frame = msgspec.msgpack.encode({"type": "events", "v": PROTOCOL_VERSION, "id": "r6", "last_seq": "7"})
    error = _error(decode_reply, frame)
    assert (error.code, error.id) == ("bad_request", "r6")
    assert "`$.last_seq`" in error.message


def test_an_error_code_outside_the_known_ones_is_refused():
    frame = msgspec.msgpack.encode(
        {"type": "error", "v": PROTOCOL_VERSION, "id": "r", "code": "oops", "message": "m"}
    )
    assert _error(decode_reply, frame).code == "bad_request"


def test_a_request_over_the_limit_is_too_large():
    frame = msgspec.msgpack.encode(
        {"type": "hello", "v": PROTOCOL_VERSION, "id": "r1", "pad": "x" * MAX_MESSAGE_BYTES}
    )
    assert len(frame) > MAX_MESSAGE_BYTES
    error = _error(decode_request, frame)
    assert error.code == "too_large"
    assert str(len(frame)) in error.message and str(MAX_MESSAGE_BYTES) in error.message


def test_a_reply_over_the_requests_limit_is_read():
    """A status of 28,000 jobs was 14 MB: the agent's replies are the user's own, read whatever their size."""
    jobs = [TrackedJob(key=f"b/j{i}", bundle="b", name=f"j{i}", job_id=str(i), state=JobState.PENDING,
                       reason="x" * 400) for i in range(20_000)]  # fmt: skip
    frame = encode(StatusReply(id="r1", jobs=jobs))
    assert len(frame) > MAX_MESSAGE_BYTES
    reply = decode_reply(frame)
    assert isinstance(reply, StatusReply) and len(reply.jobs) == 20_000


def test_a_frame_at_the_limit_is_read():
    padding = "x" * (MAX_MESSAGE_BYTES - 100)
    frame = msgspec.msgpack.encode(
        {"type": "hello", "v": PROTOCOL_VERSION, "id": "r1", "client_version": padding}
    )
    assert len(frame) <= MAX_MESSAGE_BYTES
    assert decode_request(frame) == Hello(id="r1", client_version=padding)


# ---- versions ------------------------------------------------------------------------------------


def _speaking(version: int, message: dict) -> bytes:
    return msgspec.msgpack.encode({**message, "v": version})


def test_a_request_from_a_newer_client_is_a_version_mismatch_saying_so_and_how_to_fix():
    error = _error(decode_request, _speaking(PROTOCOL_VERSION + 1, {"type": "hello", "id": "r1"}))
    assert (error.code, error.id) == ("version_mismatch", "r1")
    assert f"client speaks Milex protocol {PROTOCOL_VERSION + 1}" in error.message
    assert f"this agent speaks {PROTOCOL_VERSION}" in error.message
    assert "the client is newer" in error.message
    assert "milex agent deploy" in error.message and "milex agent stop" in error.message


def test_a_request_from_an_older_client_is_a_version_mismatch_saying_the_agent_is_newer():
    # Even a frame this agent could read is refused: the version is checked before the content.
    error = _error(decode_request, _speaking(PROTOCOL_VERSION - 1, msgspec.to_builtins(Hello(id="r2"))))
    assert (error.code, error.id) == ("version_mismatch", "r2")
    assert "the agent is newer" in error.message


def test_a_request_of_another_version_with_an_unknown_type_is_still_a_version_mismatch():
    error = _error(decode_request, _speaking(PROTOCOL_VERSION + 1, {"type": "teleport", "id": "r3"}))
    assert error.code == "version_mismatch"


def test_an_unreadable_reply_from_a_newer_agent_is_a_version_mismatch_saying_so():
    frame = _speaking(PROTOCOL_VERSION + 1, {"type": "hello_reply", "id": "r1", "agent_version": 2})
    error = _error(decode_reply, frame)
    assert (error.code, error.id) == ("version_mismatch", "r1")
    assert f"agent speaks Milex protocol {PROTOCOL_VERSION + 1}" in error.message
    assert f"this client speaks {PROTOCOL_VERSION}" in error.message
    assert "the agent is newer" in error.message
    assert "milex agent deploy" in error.message


def test_an_unreadable_reply_from_an_older_agent_says_the_client_is_newer():
    error = _error(decode_reply, _speaking(PROTOCOL_VERSION - 1, {"type": "teleported", "id": "r1"}))
    assert error.code == "version_mismatch"
    assert "the client is newer" in error.message


def test_the_agents_own_version_mismatch_error_reaches_the_client_whatever_its_version():
    # A newer agent answers an old client's request with its Error; the client shows it as sent.
    agents_error = version_mismatch("r1", peer=PROTOCOL_VERSION, side="client")
    frame = _speaking(PROTOCOL_VERSION + 1, msgspec.to_builtins(agents_error))
    reply = decode_reply(frame)
    assert isinstance(reply, Error)
    assert (reply.code, reply.id, reply.message) == ("version_mismatch", "r1", agents_error.message)


@pytest.mark.parametrize(
    ("side", "peer", "newer"),
    [("client", 2, "client"), ("client", 0, "agent"), ("agent", 2, "agent"), ("agent", 0, "client")],
)
def test_version_mismatch_names_the_newer_side(side, peer, newer, monkeypatch):
    monkeypatch.setattr("milex_common.protocol.PROTOCOL_VERSION", 1)
    error = version_mismatch("r", peer=peer, side=side)
    assert f"the {newer} is newer" in error.message
    assert f"the {side} speaks Milex protocol {peer}" in error.message


def test_every_error_code_a_peer_may_send_can_be_decoded():
    for code in typing.get_args(ErrorCode):
        assert decode_reply(encode(Error(id="r", code=code, message="m"))).code == code
