"""The wire protocol between client and agent: every message, its version, and the only codec.

Messages are msgspec Structs tagged by type, carried as msgpack in one ZeroMQ frame. A request
carries an id; every reply names the request it answers (several replies for `Watch` and a
following `Logs`). New fields get defaults; field types never change; a change that old peers
cannot read raises PROTOCOL_VERSION.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from milex_common.model import Bundle, JobStatus, MachineSettings
from milex_common.usage import Usage

PROTOCOL_VERSION = 1
# Behaviours added to protocol 1 that a client may ask for, named in HelloReply.features.
LOG_HEARTBEAT = "log_heartbeat"  # a following `Logs` gets an empty `LogChunk` after `heartbeat` s of quiet
SUBMIT_PROGRESS = (
    "submit_progress"  # SubmitBundle(progress=True) gets SubmitProgress replies before its Submitted
)
# A `Watch(tasks=True)` gets an event per change of an array's task too (its `tasks` holds that task).
TASK_EVENTS = "task_events"
USAGE = "usage"  # Status(usage=True) gets StatusReply.usage: what the jobs that ended used
APP_VERSIONS = "app_versions"  # the AppVersions request: the apps' versions in a machine's environment
# SubmitBundle(check_versions=True) checks the apps' versions first, in the same request (no AppVersions).
SUBMIT_CHECKS_VERSIONS = "submit_checks_versions"
AGENT_FEATURES: tuple[str, ...] = (
    LOG_HEARTBEAT,
    SUBMIT_PROGRESS,
    TASK_EVENTS,
    USAGE,
    APP_VERSIONS,
    SUBMIT_CHECKS_VERSIONS,
)
# The largest request the agent reads (a bundle of about 10,000 jobs): it guards the agent's memory. A
# reply has no limit: the agent is the user's own, and a status of tens of thousands of jobs is larger.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
LOG_CHUNK_BYTES = 64 * 1024


class Message(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=False):
    """Fields every message has: the protocol version it speaks and the request id it belongs to."""

    v: int = PROTOCOL_VERSION
    id: str = ""


# ---- requests (client -> agent) ----------------------------------------------------------------


class Hello(Message, tag="hello"):
    """First request of a connection: versions are compared, the agent says who and where it is.

    The tunnel's broker answers it from the agent's reply to its own Hello (the agent's version,
    protocol, features and host hold for the agent's life); `fresh` asks for the agent's own answer
    (its `last_seq` now). Agents ignore the field.
    """

    client_version: str = ""
    fresh: bool = False


class SubmitBundle(Message, tag="submit"):
    """Render and submit every job of `bundle` in dependency order with `settings`.

    `keys` maps each job name to its idempotency key: a job whose key the agent has seen is
    never submitted again; its recorded id is returned instead. With `progress` (when the agent
    has the SUBMIT_PROGRESS feature), SubmitProgress replies come at least every second until then.

    With `check_versions` (when the agent has the SUBMIT_CHECKS_VERSIONS feature), the apps of the
    jobs with a checkable provenance are checked first, as AppVersions would: a failed check, or an
    app the machine has in another version than recorded, is answered by the AppVersionsReply of the
    check, and nothing is submitted; an agent that cannot check submits, and its Submitted's
    `unchecked` says why.
    """

    bundle: Bundle
    settings: MachineSettings
    keys: dict[str, str]
    progress: bool = False
    check_versions: bool = False


class Cancel(Message, tag="cancel"):
    """Cancel jobs by scheduler id, or every unfinished job of a bundle (`NAME_DATE` or `NAME`)."""

    job_ids: list[str] = []
    bundle: str = ""


class Status(Message, tag="status"):
    """The last known state of tracked jobs: all, those of `job_ids`, or those of a bundle; with
    `usage` (an agent with the USAGE feature), what those that ended used, too."""

    job_ids: list[str] = []
    bundle: str = ""
    usage: bool = False


class Watch(Message, tag="watch"):
    """Every event after sequence number `since`, then (with `follow`) each new one as it happens.

    While following, the agent sends an empty `Events` every `heartbeat` seconds, so a client
    can tell a quiet agent from a dead link and resume from its last sequence number. With `tasks`
    (when the agent has the TASK_EVENTS feature), the events of an array's tasks too: a client that
    does not ask would take a task's change for its array's.
    """

    since: int = 0
    follow: bool = True
    heartbeat: float = 5.0
    tasks: bool = False


class Unwatch(Message, tag="unwatch"):
    """Stop the watch (or log follow) that the request `watch_id` started."""

    watch_id: str


class Logs(Message, tag="logs"):
    """A job's stdout or stderr from byte `offset`; with `follow`, more as it grows until the job ends.

    While following, an agent with the "log_heartbeat" feature sends an empty `LogChunk` after
    `heartbeat` seconds without one, so a quiet job can be told from a dead agent or link.
    """

    job_id: str
    stream: Literal["out", "err"] = "out"
    offset: int = 0
    follow: bool = False
    array_task: int | None = None
    heartbeat: float = 5.0


class Shutdown(Message, tag="shutdown"):
    """Stop the agent (its journal keeps every job; the next agent resumes watching them)."""


class AppVersions(Message, tag="app_versions"):
    """The version of each app (a console script's name) in the environment `settings`' env_command
    makes, as a job's script would find it (agents naming the APP_VERSIONS feature)."""

    settings: MachineSettings
    apps: list[str] = []


Request = Hello | SubmitBundle | Cancel | Status | Watch | Unwatch | Logs | Shutdown | AppVersions


# ---- replies (agent -> client) -----------------------------------------------------------------


class TrackedJob(JobStatus):
    """A job the agent tracks: who it is in its bundle, and its status (scheduler id, last known state)."""

    key: str
    bundle: str
    name: str
    script: str = ""
    stdout: str = ""
    stderr: str = ""
    submitted_at: float = 0.0
    updated_at: float = 0.0
    # The sha256 of the script the agent submitted (in the reply to a submission; "" elsewhere).
    script_sha256: str = ""


class Event(JobStatus):
    """A change of a job's state (its new status), numbered in the order the agent saw it. An event of
    an array's task carries that task alone in `tasks`, and its array's status as it stood before the
    array's own event that may follow: `take` merges the task in."""

    seq: int
    key: str
    bundle: str
    name: str
    time: float = 0.0


class HelloReply(Message, tag="hello_reply"):
    agent_version: str
    protocol: int = PROTOCOL_VERSION
    user: str = ""
    host: str = ""
    pid: int = 0
    last_seq: int = 0
    # What this agent does beyond protocol 1's first release (`AGENT_FEATURES`): a newer client
    # asks for a behaviour only when the agent names it, so it works with older agents too.
    features: list[str] = []


class Submitted(Message, tag="submitted"):
    """The jobs submitted (or found already submitted) in order; `error` if one was refused;
    `unchecked`: why the versions a SubmitBundle(check_versions=True) asked about were not checked."""

    jobs: list[TrackedJob] = []
    error: str = ""
    unchecked: str = ""


class SubmitProgress(Message, tag="submit_progress"):
    """How far a submission is: jobs submitted of `total`, those in doubt, whether the controller is mute."""

    submitted: int = 0
    total: int = 0
    in_doubt: int = 0
    waiting_for_controller: bool = False


class Cancelled(Message, tag="cancelled"):
    """The jobs cancelled in the scheduler, and how many were taken out of the agent's queue."""

    job_ids: list[str] = []
    queued: int = 0


class StatusReply(Message, tag="status_reply"):
    jobs: list[TrackedJob] = []
    last_seq: int = 0
    usage: dict[str, Usage] = {}  # by key, when asked: the jobs whose usage the agent has recorded


class Events(Message, tag="events"):
    """Events in sequence order; `last_seq` is the newest the agent has, to resume from."""

    events: list[Event] = []
    last_seq: int = 0


def watched(events: list[Event], *, tasks: bool) -> list[Event]:
    """The events a watch gets: with `tasks` all, else those of jobs alone (not of an array's tasks)."""
    return events if tasks else [event for event in events if not event.tasks]


class LogChunk(Message, tag="log_chunk"):
    """Bytes of a log from `offset`; `eof` when the job has finished and nothing more will come."""

    path: str = ""
    offset: int = 0
    data: bytes = b""
    eof: bool = False


class AppVersionsReply(Message, tag="app_versions_reply"):
    """The version found of each app asked about ("" when no installed distribution provides it);
    `error` when the check itself failed (its environment could not be made, a timeout);
    `unchecked`, why this agent cannot check (it runs in a container, apart from the jobs' environment).
    Also the reply to a SubmitBundle(check_versions=True) that the check refused."""

    versions: dict[str, str] = {}
    error: str = ""
    unchecked: str = ""


class Ack(Message, tag="ack"):
    """A request done that has nothing to return."""


# `failed`: the request was understood but could not be done (the message says why). `unavailable`:
# sent by the tunnel's broker alone (to clients of its own release), when the link to the agent went
# before the answer came; the client takes it for an agent that did not answer.
ErrorCode = Literal[
    "bad_request", "version_mismatch", "too_large", "not_found", "failed", "internal", "unavailable"
]


class Error(Message, tag="error"):
    """The one error reply: a code for programs, a message for the user, detail for debugging."""

    code: ErrorCode
    message: str
    detail: str = ""


Reply = (
    HelloReply
    | Submitted
    | SubmitProgress
    | Cancelled
    | StatusReply
    | Events
    | LogChunk
    | AppVersionsReply
    | Ack
    | Error
)


# ---- the codec ---------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A frame that cannot be read; `reply` is the Error to send back."""

    def __init__(self, reply: Error) -> None:
        super().__init__(reply.message)
        self.reply = reply


class _Envelope(msgspec.Struct):
    """What can be read of any message of any version: enough to answer it."""

    type: str = ""
    v: int = 0
    id: str = ""


_encoder = msgspec.msgpack.Encoder()
_request_decoder: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
_reply_decoder: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_request(frame: bytes) -> Request:
    """The request in `frame`; ProtocolError (with the Error reply to send) when it is not one."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            Error(
                code="too_large",
                message=f"message of {len(frame)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}; "
                "submit large bundles in parts.",
            )
        )
    envelope = _read_envelope(frame)
    if envelope.v != PROTOCOL_VERSION:
        raise ProtocolError(version_mismatch(envelope.id, peer=envelope.v, side="client"))
    try:
        return _request_decoder.decode(frame)
    except msgspec.ValidationError as error:
        raise ProtocolError(
            Error(id=envelope.id, code="bad_request", message=f"invalid {envelope.type!r} request: {error}")
        ) from None


def decode_reply(frame: bytes) -> Reply:
    """The reply in `frame`; ProtocolError when the agent speaks another version or sent garbage."""
    envelope = _read_envelope(frame)
    try:
        reply = _reply_decoder.decode(frame)
    except msgspec.ValidationError as error:
        if envelope.v != PROTOCOL_VERSION:
            raise ProtocolError(version_mismatch(envelope.id, peer=envelope.v, side="agent")) from None
        raise ProtocolError(
            Error(id=envelope.id, code="bad_request", message=f"invalid {envelope.type!r} reply: {error}")
        ) from None
    return reply


def _read_envelope(frame: bytes) -> _Envelope:
    try:
        return _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ProtocolError(
            Error(code="bad_request", message=f"not a Milex message (msgpack map expected): {error}")
        ) from None


def version_mismatch(request_id: str, *, peer: int, side: str) -> Error:
    """The error both sides show when their protocol versions differ, with how to fix it."""
    newer = "agent" if (side == "client") == (peer < PROTOCOL_VERSION) else "client"
    return Error(
        id=request_id,
        code="version_mismatch",
        message=(
            f"the {side} speaks Milex protocol {peer} but this {'agent' if side == 'client' else 'client'} "
            f"speaks {PROTOCOL_VERSION}; the {newer} is newer. Install the same milex-scheduler "
            "version on both sides (`milex agent deploy --machine M` updates the agent), "
            "then `milex agent stop --machine M` so the new agent starts."
        ),
    )
