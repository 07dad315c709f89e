"""The agent's event loop: a ZeroMQ ROUTER socket, requests dispatched, events and logs pushed."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import zmq

from milex_agent.checked_submit import CheckedSubmit
from milex_agent.confirmation import LOST_REASON, Confirmation
from milex_agent.handlers import cancel_late, handle
from milex_agent.job_queue import release
from milex_agent.journal import JournalError
from milex_agent.lifetime import Lifetime
from milex_agent.logs import read_chunk
from milex_agent.notifier import Notifier
from milex_agent.pending import PendingSubmit
from milex_agent.recovery import InDoubtRecovery
from milex_agent.state import Agent, Peer
from milex_agent.usage_gathering import UsageGathering
from milex_common.errors import MilexError, SchedulerUnavailable
from milex_common.model import JobStatus
from milex_common.protocol import (
    MAX_MESSAGE_BYTES,
    AppVersionsReply,
    Error,
    Events,
    LogChunk,
    Message,
    ProtocolError,
    Request,
    Submitted,
    decode_request,
    encode,
    watched,
)

LOG_FOLLOW_INTERVAL = 0.25
T = TypeVar("T")
SUBMIT_WORKERS = 4  # scheduler calls in flight at once, over every submission
log = logging.getLogger("milex_agent")


class AgentServer:
    """Serves one agent on one socket; `serve` returns when the agent is asked to stop (a Shutdown
    request, a signal) or `lifetime` gives it a reason to."""

    def __init__(self, agent: Agent, endpoint: str, *, lifetime: Lifetime) -> None:
        self.agent = agent
        self.lifetime = lifetime
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        # Sending to a client that has gone raises, so its streams can be dropped.
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A hard limit well above ours: a bigger frame still gets our `too_large` reply.
        self.socket.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.pushed_seq = agent.journal.last_seq
        # Scheduler calls run in workers, so that a slow squeue or a big bundle never delays an
        # answer; a worker that finishes wakes the loop through a pipe.
        self.poll_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milex-poll")
        self.submit_workers = ThreadPoolExecutor(SUBMIT_WORKERS, thread_name_prefix="milex-submit")
        self.polling: Future[list[tuple[str, JobStatus]]] | None = None
        # Submissions in progress, with the client that waits for each (None: a release of queued jobs).
        self.submitting: list[tuple[Peer | None, PendingSubmit]] = []
        # Replies made on a worker (handlers that run commands), sent by the loop once done.
        self.answering: list[tuple[Peer, Request, Future[AppVersionsReply]]] = []
        # Submissions whose apps' versions are being checked on a worker: started (or refused) once done.
        self.checking: list[tuple[Peer, CheckedSubmit]] = []
        self.recovery = InDoubtRecovery(agent)
        self.usage = UsageGathering(agent.journal, agent.schedulers)  # after each poll, on its worker
        # Confirmed when the agent starts (the controller may have restarted while it was away), and
        # after any silence of the controller.
        agent.controller.confirms = True
        agent.controller.confirm_due = agent.journal.has_unfinished()
        self.confirmation = Confirmation(agent)
        self.notifier = Notifier(agent.journal)  # the `notify` command of each run that ends
        self._woken, self._wake_up = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.readiness = zmq.Poller()
        self.readiness.register(self.socket, zmq.POLLIN)
        self.readiness.register(self._woken, zmq.POLLIN)
        agent.dispatch = self._dispatch
        agent.in_flight = lambda: {key for _, pending in self.submitting for key in pending.in_flight()}

    def close(self) -> None:
        if self.socket.closed:
            return
        for peer, pending in self.submitting:  # answer with what got submitted; start nothing more
            pending.stop("the agent was stopped during the submission; submit again for the rest.")
            reply = self._guarded(pending.request, pending.wait)
            if peer is not None:
                self.send(peer, reply)
        self.submitting.clear()
        self.notifier.close()
        self.poll_worker.shutdown(wait=True)
        self.submit_workers.shutdown(wait=True)
        self.socket.close(linger=0)
        os.close(self._woken)
        os.close(self._wake_up)

    def serve(self) -> None:
        """Answer requests and push streams until stopped."""
        while not self.agent.stopping:
            ready = dict(self.readiness.poll(int(self._wait() * 1000)))
            if self._woken in ready:
                self._drain_wake_ups()
            if self.socket in ready:
                self._receive_all()
            self._step_checks()
            self._step_submissions()
            self._send_answers()
            self._poll_scheduler()
            self._journaled(lambda: self.usage.step(self.poll_worker, self._wake))
            self.agent.journal.space.check()
            self._push_events()
            self._journaled(self.notifier.step)
            self._push_logs()
            self._check_lifetime()

    def _dispatch(self, call: Callable[[], T], /) -> Future[T]:
        future = self.submit_workers.submit(call)
        future.add_done_callback(self._wake)
        return future

    def _wake(self, _: object = None) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._wake_up, b"\0")

    def _drain_wake_ups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._woken, 4096):
                pass

    def _wait(self) -> float:
        wait = min(self.agent.poller.due_in(), 1.0) if self.polling is None else 1.0
        if self.agent.log_streams:
            wait = min(wait, LOG_FOLLOW_INTERVAL)
        for stream in self.agent.watches.values():
            wait = min(wait, max(0.0, stream.last_sent + stream.heartbeat - time.monotonic()))
        for _, pending in self.submitting:
            wait = min(wait, pending.next_event_in())
        for _, checked in self.checking:
            wait = min(wait, checked.next_event_in())
        return min(wait, self.recovery.next_event_in(), self.confirmation.next_event_in())

    def _receive_all(self) -> None:
        while not self.agent.stopping:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.lifetime.busy()
            peer, payload = frames[0], frames[-1]
            answer = self._answer(peer, payload)
            if isinstance(answer, PendingSubmit):
                self.submitting.append((peer, answer))
            elif isinstance(answer, CheckedSubmit):
                self.checking.append((peer, answer))
            elif isinstance(answer, tuple):
                self.answering.append((peer, *answer))
            else:
                self.send(peer, answer)

    def _answer(
        self, peer: Peer, payload: bytes
    ) -> Message | PendingSubmit | CheckedSubmit | tuple[Request, Future[AppVersionsReply]]:
        try:
            request = decode_request(payload)
        except ProtocolError as error:
            return error.reply
        answer = self._guarded(request, lambda: handle(self.agent, peer, request))
        return (request, answer) if isinstance(answer, Future) else answer

    def _send_answers(self) -> None:
        """Send the replies made on a worker that are done (their failure as an error reply)."""
        for entry in [entry for entry in self.answering if entry[2].done()]:
            self.answering.remove(entry)
            peer, request, future = entry
            self.send(peer, self._guarded(request, future.result))

    def _step_checks(self) -> None:
        """Start the submissions whose versions check is done and allows them (stepped at once, by
        `_step_submissions`); answer the others with the check's refusal; send progress meanwhile."""
        for entry in list(self.checking):
            peer, checked = entry
            if not checked.done():
                if (progress := checked.progress()) is not None:
                    self.send(peer, progress)
                continue
            self.checking.remove(entry)
            outcome = self._guarded(checked.request, checked.outcome)
            if isinstance(outcome, PendingSubmit):
                self.submitting.append((peer, outcome))
            else:
                self.send(peer, outcome)

    def _step_submissions(self) -> None:
        """Advance every submission in progress; answer those that are done; send progress.

        A request whose keys an earlier one still submits (a client's retry after a lost reply)
        waits for it: it then finds every job in the journal and submits none twice.
        """
        owned: set[str] = set()
        for entry in list(self.submitting):
            peer, pending = entry
            waiting = bool(owned & pending.keys)
            owned |= pending.keys
            reply = None if waiting else self._guarded(pending.request, pending.step)
            if reply is not None:
                self.submitting.remove(entry)
                self._answer_submit(peer, reply)
            elif peer is not None and (progress := pending.progress()) is not None:
                self.send(peer, progress)
        self._journaled(lambda: self.recovery.step(owned))
        self._journaled(self._confirm)
        try:
            cancel_late(self.agent)
        except MilexError as error:  # scancel failed: tried again at the next turn
            log.warning("cancelling the late jobs of a cancelled bundle: %s", error)

    def _confirm(self) -> None:
        """Check the accepted jobs when due; submissions that depend on a job found lost stop where
        they are, and their jobs not begun wait in the queue with it."""
        lost = self.confirmation.step()
        if lost:
            for _, pending in self.submitting:
                if pending.depends_on_lost(lost):
                    pending.submission.pause(LOST_REASON)

    def _answer_submit(self, peer: Peer | None, reply: Message) -> None:
        """Send a submission's reply to its client; a release of queued jobs logs what went wrong."""
        if peer is not None:
            self.send(peer, reply)
        elif isinstance(reply, Error) or (isinstance(reply, Submitted) and reply.error):
            log.warning(
                "releasing queued jobs: %s", reply.message if isinstance(reply, Error) else reply.error
            )

    def _release_queued(self) -> None:
        """After a poll: submissions of queued jobs, where their scheduler has room."""
        owned = {key for _, pending in self.submitting for key in pending.keys}
        released = [(None, pending) for pending in release(self.agent, owned)]
        if released:  # stepped at the loop's next turn, now: nothing else would wake it before a second
            self.submitting.extend(released)
            self._wake()

    def _guarded(self, request: Request, work: Callable[[], T]) -> T | Error:
        """What `work` returns, or the error reply to `request` if it fails: the agent never dies of one."""
        try:
            return work()
        except MilexError as error:
            return Error(id=request.id, code="failed", message=str(error))
        except Exception as error:  # the agent never dies of one request
            log.exception("request %s failed", type(request).__name__)
            return Error(
                id=request.id,
                code="internal",
                message=f"the agent failed on this request: {error!r}; its log has the traceback.",
                detail=traceback.format_exc(),
            )

    def send(self, peer: Peer, message: Message) -> bool:
        """Send `message` to `peer`; False when that client is gone."""
        try:
            self.socket.send_multipart([peer, encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def _poll_scheduler(self) -> None:
        """Start a poll when one is due; apply its result when it is done."""
        poller = self.agent.poller
        if self.polling is None:
            if poller.due_in() == 0:
                self.polling = self.poll_worker.submit(poller.query, poller.plan())
                self.polling.add_done_callback(self._wake)
            return
        if not self.polling.done():
            return
        try:
            poller.apply(self.polling.result())
        except SchedulerUnavailable as error:  # the controller is silent: confirm once it is back
            log.warning("status poll failed: %s", error)
            self.agent.controller.unanswered()
            poller.apply([])
        except MilexError as error:
            if not (isinstance(error, JournalError) and error.full):  # the journal said so, once
                log.warning("status poll failed: %s", error)
            poller.apply([])  # back off as if nothing changed; the next poll finds the change again
        finally:
            self.polling = None
            self.usage.due = True
        if not self.agent.journal.space.full:  # nothing is submitted that could not be recorded
            self._journaled(self._release_queued)

    def _journaled(self, step: Callable[[], object]) -> None:
        """A step of the loop that writes the journal: a write refused (a full disk, which the journal
        tells once) leaves nothing of it recorded, and the step is taken again at a later turn."""
        try:
            step()
        except JournalError as error:
            if not error.full:
                log.warning("%s", error)

    def _push_events(self) -> None:
        journal = self.agent.journal
        events = (
            journal.events_since(self.pushed_seq)
            if self.agent.watches and journal.last_seq > self.pushed_seq
            else []
        )
        if not self.agent.watches:
            self.pushed_seq = journal.last_seq
        if events:
            self.pushed_seq = events[-1].seq
        now = time.monotonic()
        for key, stream in list(self.agent.watches.items()):
            if events or now - stream.last_sent >= stream.heartbeat:
                shown = watched(events, tasks=stream.tasks)
                reply = Events(id=stream.request_id, events=shown, last_seq=self.pushed_seq)
                if not self.send(stream.peer, reply):
                    del self.agent.watches[key]
                stream.last_sent = now

    def _push_logs(self) -> None:
        """What each followed log has gained; an empty chunk as a heartbeat when it stays quiet."""
        now = time.monotonic()
        for key, stream in list(self.agent.log_streams.items()):
            job = self.agent.journal.find(stream.job_key)
            finished = job is None or job.state.finished
            data = read_chunk(Path(stream.path), stream.offset)
            eof = not data and finished
            if data or eof or now - stream.last_sent >= max(stream.request.heartbeat, LOG_FOLLOW_INTERVAL):
                chunk = LogChunk(
                    id=stream.request.id, path=stream.path, offset=stream.offset, data=data, eof=eof
                )
                stream.offset += len(data)
                stream.last_sent = now
                if not self.send(stream.peer, chunk) or eof:
                    del self.agent.log_streams[key]

    def _check_lifetime(self) -> None:
        """Stop the agent when it has no reason to run (see Lifetime), saying why in its log."""
        agent = self.agent
        if self.submitting or self.answering or agent.watches or agent.log_streams or self.notifier.running:
            # (unfinished jobs and notifications not sent: reason_to_stop asks the journal)
            self.lifetime.busy()
        reason = self.lifetime.reason_to_stop(agent.journal.has_work)
        if reason and not self.socket.poll(0, zmq.POLLIN):  # a request just in: answer it first
            log.info("stopping: %s", reason)
            agent.stopping = True
