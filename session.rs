// SPDX-License-Identifier: GPL-2.0

//! Sessions and the command path.
//!
//! One [`Session`] per open file: `open()` sends `VIRTIO_MEDIA_CMD_OPEN`, `release()` sends
//! `VIRTIO_MEDIA_CMD_CLOSE`. Every command is a [`Request`] with its own buffers and its own
//! completion, so any number of commands (from any sessions) can be in flight at once; no lock
//! is held while waiting for the device.
//!
//! Memory safety against a slow or silent device: the device's reference to a request is an
//! `Arc` leaked into the virtqueue token. The request's buffers are freed only when the last
//! reference goes, i.e. after *both* the waiter gave up (timeout, signal) *and* the device
//! returned the chain, or after the device was reset and the chain detached in `remove`. A
//! timed-out command therefore never leaves the device a pointer to freed or reused memory.

use kernel::{
    prelude::*,
    rbtree::RBTreeNode,
    sync::{Arc, CondVar, CondVarTimeoutResult},
    time::msecs_to_jiffies,
    uaccess::UserSlice,
};

use crate::ffi::{dev_warn_rl, new_irq_spinlock, Chain, DmaBuf, FileHandle, IrqSpinLock};
use crate::protocol::{self, Command, IoctlOutcome};
use crate::VirtioMedia;

/// How long a command may stay unanswered before the caller gets `ETIMEDOUT` (ms).
pub(crate) const COMMAND_TIMEOUT_MS: u32 = 10_000;

/// Completion state of a [`Request`].
struct ReqState {
    /// `None` while in flight; the used length, or `ENODEV` if the device went away.
    result: Option<Result<u32>>,
}

/// One command in flight: a device-readable buffer (command + payload) and an optional
/// device-writable one (response + payload).
#[pin_data]
pub(crate) struct Request {
    out: [DmaBuf; 1],
    resp: Option<DmaBuf>,
    #[pin]
    state: IrqSpinLock<ReqState>,
    #[pin]
    done: CondVar,
}

// SAFETY: `out` and `resp` are `DmaBuf`s owned by the request. `resp` is read only through
// `Request::wait`, which hands it out after the completion recorded by the queue callback,
// i.e. after the device returned the chain (or after a reset, when it can no longer write).
unsafe impl Chain for Request {
    fn readable(&self) -> &[DmaBuf] {
        &self.out
    }
    fn writable(&self) -> &[DmaBuf] {
        self.resp.as_slice()
    }
}

impl Request {
    /// Records the device's answer (or `ENODEV`) and wakes the waiter. Queue-callback context.
    pub(crate) fn complete(&self, result: Result<u32>) {
        let mut s = self.state.lock();
        if s.result.is_none() {
            s.result = Some(result);
        }
        drop(s);
        self.done.notify_all();
    }

    /// Waits for completion: the response bytes and the used length.
    ///
    /// Errors: `ETIMEDOUT` after [`COMMAND_TIMEOUT_MS`], `EINTR` on a signal, `ENODEV` if the
    /// device was removed. On error the request (and its buffers) stays alive for as long as
    /// the device holds it.
    pub(crate) fn wait(&self) -> Result<(&[u8], usize)> {
        let mut left = msecs_to_jiffies(COMMAND_TIMEOUT_MS);
        let mut s = self.state.lock();
        loop {
            match s.result {
                Some(Ok(used)) => {
                    let resp = self.resp.as_ref().map(|r| r.bytes()).unwrap_or(&[]);
                    return Ok((resp, used as usize));
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
            match self.done.wait_interruptible_timeout(&mut s, left) {
                CondVarTimeoutResult::Timeout => return Err(etimedout()),
                CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
                CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
            }
        }
    }
}

impl VirtioMedia {
    /// Sends one command: `out` (device-readable) and, if given, a device-writable buffer of
    /// `resp_len` bytes. Returns the request after completion for the caller to parse.
    ///
    /// Errors: `ENODEV` (device removed), `ENOMEM`, `ETIMEDOUT`, `EINTR`.
    pub(crate) fn send(&self, out: DmaBuf, resp_len: usize) -> Result<Arc<Request>> {
        let resp = if resp_len > 0 {
            Some(DmaBuf::new(resp_len)?)
        } else {
            None
        };
        let req = Arc::pin_init(
            pin_init!(Request {
                out: [out],
                resp,
                state <- new_irq_spinlock!(ReqState { result: None }, "virtio_media:request"),
                done <- kernel::new_condvar!("virtio_media:request_done"),
            }),
            GFP_KERNEL,
        )?;
        let mut token = req.clone();
        let mut left = msecs_to_jiffies(COMMAND_TIMEOUT_MS);
        let mut q = self.commandq.lock();
        loop {
            let Some(vq) = q.vq.as_mut() else {
                return Err(ENODEV);
            };
            match vq.add(token) {
                Ok(()) => {
                    vq.kick();
                    break;
                }
                Err((e, t)) if e == ENOSPC => {
                    // Ring full: wait for the callback to free descriptors.
                    token = t;
                    match self.commandq_space.wait_interruptible_timeout(&mut q, left) {
                        CondVarTimeoutResult::Timeout => return Err(etimedout()),
                        CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
                        CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
        drop(q);
        Ok(req)
    }

    /// Warns (rate-limited) about a malformed response and returns `EIO`.
    pub(crate) fn bad_response(&self, what: &str, e: protocol::ProtoError) -> Error {
        dev_warn_rl!(self.dev(), "malformed {} response: {:?}", what, e);
        EIO
    }
}

/// `ETIMEDOUT` (110, include/uapi/asm-generic/errno.h), absent from 6.12's `kernel::error::code`.
fn etimedout() -> Error {
    Error::from_errno(-110)
}

/// Maps a positive device errno to an [`Error`] (non-errno values were rejected already).
pub(crate) fn device_error(errno: u32) -> Error {
    Error::from_errno(-(protocol::device_errno(errno) as i32))
}

/// Most completed buffers kept per queue before DQBUF; more is a device flood (dropped).
const MAX_DONE: usize = 64;

/// Size of a completed buffer as a DQBUF event carries it: `v4l2_buffer` + 8 planes (600).
const DONE_SIZE: usize = protocol::EVENT_DQBUF_SIZE - protocol::DQBUF_BUFFER_OFFSET;

/// A buffer the device returned (DQBUF event), waiting for user space's DQBUF.
struct DoneBuf([u8; DONE_SIZE]);

/// Driver-side state of one V4L2 queue (capture or output) of a session.
struct QueueState {
    /// Completed buffers, oldest first.
    done: KVec<DoneBuf>,
    /// Buffers allocated (REQBUFS/CREATE_BUFS answers): DQBUF events must name one of them.
    num_buffers: u32,
    /// Buffers queued and not yet dequeued (for `poll` on output queues).
    queued: u32,
    /// Between a successful STREAMON and STREAMOFF/REQBUFS(0).
    streaming: bool,
    /// A buffer flagged `V4L2_BUF_FLAG_LAST` was dequeued: DQBUF answers `EPIPE` until the
    /// queue restarts (STREAMOFF/STREAMON, or `V4L2_DEC_CMD_START`).
    last_dequeued: bool,
}

impl QueueState {
    const fn new() -> Self {
        Self {
            done: KVec::new(),
            num_buffers: 0,
            queued: 0,
            streaming: false,
            last_dequeued: false,
        }
    }

    /// Forgets completed buffers and stream state (STREAMOFF, REQBUFS(0)).
    fn reset(&mut self) {
        self.done = KVec::new();
        self.queued = 0;
        self.streaming = false;
        self.last_dequeued = false;
    }

    /// Removes and returns the oldest completed buffer.
    fn pop_done(&mut self) -> Option<DoneBuf> {
        let mut it = core::mem::take(&mut self.done).into_iter();
        let first = it.next();
        // Moves the rest to the front of the same allocation (no allocation).
        self.done = it.collect(GFP_ATOMIC);
        first
    }
}

/// Per-session state that changes after open.
struct SessionState {
    /// Set by an ERROR event or device removal: the errno every later command gets.
    failed: Option<Error>,
    /// Whether the file handle is set up and not yet released: V4L2 events may be queued and
    /// waiters woken only while it is (the bottom half can still hold the session after
    /// `release()` began).
    fh_live: bool,
    /// Capture and output queues, indexed by [`protocol::Queue`].
    queues: [QueueState; 2],
}

/// `v4l2_requestbuffers.count` / `v4l2_create_buffers.index` and `.count` offsets.
mod bufreq {
    pub(super) const COUNT: usize = 0;
    pub(super) const TYPE: usize = 4;
    pub(super) const CREATE_INDEX: usize = 0;
    pub(super) const CREATE_COUNT: usize = 4;
    /// `v4l2_create_buffers.format.type`.
    pub(super) const CREATE_TYPE: usize = 12;
}

/// A device session, one per open file of the video node.
#[pin_data]
pub(crate) struct Session {
    #[pin]
    pub(crate) handle: FileHandle,
    media: Arc<VirtioMedia>,
    id: u32,
    #[pin]
    state: IrqSpinLock<SessionState>,
}

impl Session {
    /// The V4L2 file handle.
    pub(crate) fn handle(&self) -> &FileHandle {
        &self.handle
    }

    /// The device.
    pub(crate) fn media(&self) -> &Arc<VirtioMedia> {
        &self.media
    }

    /// Device session id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// `VIDIOC_SUBSCRIBE_EVENT` / `VIDIOC_UNSUBSCRIBE_EVENT` (32-byte
    /// `v4l2_event_subscription`), forwarded; the caller mirrors it in the V4L2 event core.
    pub(crate) fn subscription(&self, nr: u8, sub: &[u8]) -> Result {
        let mut copy = [0u8; 32];
        copy.copy_from_slice(sub.get(..32).ok_or(EINVAL)?);
        self.ioctl(nr, &mut [&mut copy])
    }

    /// Opens a device session (`VIRTIO_MEDIA_CMD_OPEN`) and registers it for event routing.
    ///
    /// Errors: the device's errno, `EIO` for a malformed response, `EBUSY` if the device
    /// reuses the id of a session still open, and those of [`VirtioMedia::send`].
    pub(crate) fn open(media: Arc<VirtioMedia>) -> Result<Arc<Session>> {
        let mut out = DmaBuf::new(protocol::CmdOpen::SIZE)?;
        protocol::CmdOpen::new()
            .encode(out.bytes_mut())
            .ok_or(EINVAL)?;
        let resp_len = core::mem::size_of::<protocol::RespOpen>();
        let req = media.send(out, resp_len)?;
        let (resp, used) = req.wait()?;
        let id = match protocol::check_open_resp(resp, used, resp_len) {
            Ok(Ok(id)) => id,
            Ok(Err(errno)) => return Err(device_error(errno)),
            Err(e) => return Err(media.bad_response("OPEN", e)),
        };
        let media2 = media.clone();
        let session = Arc::pin_init(
            pin_init!(Session {
                handle <- FileHandle::new(),
                media: media2,
                id,
                state <- new_irq_spinlock!(
                    SessionState {
                        failed: None,
                        fh_live: false,
                        queues: [QueueState::new(), QueueState::new()],
                    },
                    "virtio_media:session"
                ),
            }),
            GFP_KERNEL,
        );
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                send_close(&media, id);
                return Err(e);
            }
        };
        let node = match RBTreeNode::new(id, session.clone(), GFP_KERNEL) {
            Ok(n) => n,
            Err(e) => {
                send_close(&media, id);
                return Err(e);
            }
        };
        let mut sessions = media.sessions.lock();
        if sessions.get(&id).is_some() {
            drop(sessions);
            dev_warn_rl!(media.dev(), "device reused open session id {}", id);
            return Err(EBUSY);
        }
        sessions.insert(node);
        drop(sessions);
        Ok(session)
    }

    /// Closes the session (`VIRTIO_MEDIA_CMD_CLOSE`, sent once), after [`Self::begin_release`].
    pub(crate) fn close(&self) {
        send_close(&self.media, self.id);
    }

    /// Marks the session failed with `errno`: later commands return it.
    fn fail(&self, err: Error) {
        let mut s = self.state.lock();
        if s.failed.is_none() {
            s.failed = Some(err);
        }
    }

    /// The device was removed: later commands fail with `ENODEV`, and blocked DQBUF/poll
    /// callers wake up to see it.
    pub(crate) fn device_gone(&self) {
        self.fail(ENODEV);
        self.wake();
    }

    fn check_usable(&self) -> Result {
        match self.state.lock().failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Handles an event routed to this session (bottom-half context). `buf` holds the
    /// event's bytes as validated by [`protocol::parse_event`].
    pub(crate) fn handle_event(&self, ev: protocol::Event, buf: &[u8]) {
        let dev = self.media.dev();
        match ev {
            protocol::Event::Error { errno, .. } => {
                dev_warn_rl!(
                    dev,
                    "device reported error {} on session {}",
                    errno,
                    self.id
                );
                self.fail(device_error(errno));
                self.wake();
            }
            protocol::Event::Dqbuf { buf_type, .. } => {
                let Some(q) = protocol::queue_of(buf_type) else {
                    dev_warn_rl!(dev, "DQBUF event with buffer type {} dropped", buf_type);
                    return;
                };
                let mut st = self.state.lock();
                let qs = &mut st.queues[q as usize];
                if let Err(e) = protocol::check_dqbuf(buf, qs.num_buffers) {
                    drop(st);
                    dev_warn_rl!(dev, "session {}: bad DQBUF event dropped: {:?}", self.id, e);
                    return;
                }
                if qs.done.len() >= MAX_DONE {
                    drop(st);
                    dev_warn_rl!(dev, "session {}: DQBUF event flood, event dropped", self.id);
                    return;
                }
                let mut d = DoneBuf([0; DONE_SIZE]);
                let src = protocol::DQBUF_BUFFER_OFFSET;
                d.0.copy_from_slice(&buf[src..src + DONE_SIZE]);
                if qs.done.push(d, GFP_ATOMIC).is_err() {
                    drop(st);
                    dev_warn_rl!(dev, "session {}: no memory for a DQBUF event", self.id);
                    return;
                }
                drop(st);
                self.wake();
            }
            protocol::Event::V4l2 { .. } => {
                let off = protocol::EVENT_V4L2_OFFSET;
                let st = self.state.lock();
                if st.fh_live {
                    self.handle
                        .queue_event(&buf[off..off + protocol::V4L2_EVENT_SIZE]);
                }
            }
        }
    }

    /// Wakes `poll`/DQBUF/DQEVENT waiters, if the file handle is live.
    fn wake(&self) {
        let st = self.state.lock();
        if st.fh_live {
            self.handle.wake_all();
        }
    }

    /// The file handle is set up (`open()` finished): events may be delivered to it.
    pub(crate) fn fh_ready(&self) {
        self.state.lock().fh_live = true;
    }

    /// `release()` begins: stop delivering to the file handle, and stop routing events here.
    pub(crate) fn begin_release(&self) {
        self.state.lock().fh_live = false;
        let removed = self.media.sessions.lock().remove(&self.id);
        drop(removed);
    }

    /// Updates the driver-side queue state after a successful ioctl `nr` whose main payload
    /// (as the device answered it) is `p`.
    fn after_ioctl(&self, nr: u8, p: &[u8]) {
        let get = |off| protocol::get_u32(p, off).unwrap_or(0);
        let queue = |t| protocol::queue_of(t).map(|q| q as usize);
        let mut st = self.state.lock();
        match nr {
            protocol::nr::REQBUFS => {
                if let Some(q) = queue(get(bufreq::TYPE)) {
                    let qs = &mut st.queues[q];
                    qs.num_buffers = get(bufreq::COUNT);
                    if qs.num_buffers == 0 {
                        qs.reset();
                    }
                }
            }
            protocol::nr::CREATE_BUFS => {
                if let Some(q) = queue(get(bufreq::CREATE_TYPE)) {
                    let end = get(bufreq::CREATE_INDEX).saturating_add(get(bufreq::CREATE_COUNT));
                    let qs = &mut st.queues[q];
                    qs.num_buffers = qs.num_buffers.max(end);
                }
            }
            protocol::nr::QBUF => {
                if let Some(q) = queue(get(protocol::buf::TYPE)) {
                    st.queues[q].queued = st.queues[q].queued.saturating_add(1);
                }
            }
            protocol::nr::STREAMON => {
                if let Some(q) = queue(get(0)) {
                    st.queues[q].streaming = true;
                    st.queues[q].last_dequeued = false;
                }
            }
            protocol::nr::STREAMOFF => {
                if let Some(q) = queue(get(0)) {
                    st.queues[q].reset();
                }
            }
            // v4l2_decoder_cmd.cmd == V4L2_DEC_CMD_START restarts a drained decoder.
            protocol::nr::DECODER_CMD if get(0) == 0 => {
                st.queues[protocol::Queue::Capture as usize].last_dequeued = false;
            }
            _ => return,
        }
        drop(st);
        // STREAMOFF/REQBUFS(0) make blocked DQBUF calls return.
        self.wake();
    }

    /// `VIDIOC_DQBUF`, answered from the buffers the device returned through the eventq.
    ///
    /// `b` is the caller's `v4l2_buffer` (its `type` selects the queue), `planes` the planes
    /// array of a multi-planar buffer (`b.length` entries). Errors: `EINVAL` (bad type, not
    /// streaming, or fewer planes than the buffer has), `EAGAIN` (`nonblock` and nothing
    /// done), `EPIPE` (after the LAST buffer), `ERESTARTSYS` (signal), the session's error.
    pub(crate) fn dqbuf(&self, nonblock: bool, b: &mut [u8], planes: &mut [u8]) -> Result {
        let buf_type = protocol::get_u32(b, protocol::buf::TYPE).ok_or(EINVAL)?;
        let q = protocol::queue_of(buf_type).ok_or(EINVAL)? as usize;
        let user_planes = planes.len() / protocol::plane::SIZE;
        loop {
            let mut st = self.state.lock();
            if let Some(e) = st.failed {
                return Err(e);
            }
            let qs = &mut st.queues[q];
            if qs.last_dequeued {
                return Err(EPIPE);
            }
            if let Some(front) = qs.done.first() {
                let f = &front.0;
                if protocol::get_u32(f, protocol::buf::TYPE) != Some(buf_type) {
                    return Err(EINVAL);
                }
                let n = if protocol::buf_type_is_multiplanar(buf_type) {
                    protocol::get_u32(f, protocol::buf::LENGTH).unwrap_or(0) as usize
                } else {
                    0
                };
                if n > user_planes {
                    return Err(EINVAL);
                }
                let Some(d) = qs.pop_done() else {
                    return Err(EINVAL);
                };
                qs.queued = qs.queued.saturating_sub(1);
                let flags = protocol::get_u32(&d.0, protocol::buf::FLAGS).unwrap_or(0);
                if flags & protocol::buf::FLAG_LAST != 0 {
                    qs.last_dequeued = true;
                }
                drop(st);
                copy_done(&d, b, planes, n);
                return Ok(());
            }
            if !qs.streaming {
                return Err(EINVAL);
            }
            drop(st);
            if nonblock {
                return Err(EAGAIN);
            }
            self.handle.wait_interruptible(|| self.dqbuf_ready(q))?;
        }
    }

    /// Whether a DQBUF on queue `q` would not block.
    fn dqbuf_ready(&self, q: usize) -> bool {
        let st = self.state.lock();
        let qs = &st.queues[q];
        st.failed.is_some() || !qs.done.is_empty() || !qs.streaming || qs.last_dequeued
    }

    /// `poll()` events for the requested `req` mask, for the queues a node of direction
    /// `dir` has (V4L2 semantics as in `vb2_core_poll`): readable when a capture buffer is
    /// done, writable when an output buffer can be queued, `EPOLLERR` when the queue is not
    /// streaming or the session failed, `EPOLLPRI` is added by the caller for V4L2 events.
    pub(crate) fn poll_mask(&self, req: u32, capture: bool, output: bool) -> u32 {
        use crate::ffi::poll::*;
        let st = self.state.lock();
        if st.failed.is_some() {
            return EPOLLERR;
        }
        let mut mask = 0;
        if capture && req & (EPOLLIN | EPOLLRDNORM) != 0 {
            let qs = &st.queues[protocol::Queue::Capture as usize];
            if !qs.done.is_empty() || qs.last_dequeued {
                mask |= EPOLLIN | EPOLLRDNORM;
            } else if !qs.streaming {
                mask |= EPOLLERR;
            }
        }
        if output && req & (EPOLLOUT | EPOLLWRNORM) != 0 {
            let qs = &st.queues[protocol::Queue::Output as usize];
            if !qs.done.is_empty() || (qs.streaming && qs.queued < qs.num_buffers) {
                mask |= EPOLLOUT | EPOLLWRNORM;
            } else if !qs.streaming {
                mask |= EPOLLERR;
            }
        }
        mask
    }

    /// Sends ioctl `nr` whose payload is the concatenation of `parts` (the main struct, then
    /// any array the protocol appends), and writes the device's payload back into `parts`.
    ///
    /// Errors: `ENOTTY` for an ioctl the protocol does not carry, `EINVAL` if the parts'
    /// total size does not fit, the device's errno, `EIO` for a malformed response, and those
    /// of [`VirtioMedia::send`].
    pub(crate) fn ioctl(&self, nr: u8, parts: &mut [&mut [u8]]) -> Result {
        let required = parts.iter().map(|p| p.len()).sum::<usize>();
        self.ioctl_min(nr, parts, required)
    }

    /// [`Self::ioctl`] where a success needs to carry only `required` payload bytes (the
    /// device writes appended plane arrays only as far as the buffer has planes); whatever
    /// the device wrote is copied back.
    fn ioctl_min(&self, nr: u8, parts: &mut [&mut [u8]], required: usize) -> Result {
        self.check_usable()?;
        let info = protocol::ioctl_info(nr).ok_or(ENOTTY)?;
        let total = parts.iter().map(|p| p.len()).sum::<usize>();
        let layout = protocol::ChainLayout::ioctl(info.dir, total, 0).ok_or(EINVAL)?;
        let mut out = DmaBuf::new(layout.readable)?;
        let cmd_len = protocol::CmdIoctl::SIZE;
        protocol::CmdIoctl::new(self.id, u32::from(nr))
            .encode(out.bytes_mut())
            .ok_or(EINVAL)?;
        if info.dir.to_device() {
            let mut off = cmd_len;
            for p in parts.iter() {
                out.bytes_mut()[off..off + p.len()].copy_from_slice(p);
                off += p.len();
            }
        }
        let req = self.media.send(out, layout.writable)?;
        let (resp, used) = req.wait()?;
        let (payload_len, required) = if info.dir.from_device() {
            (total, required)
        } else {
            (0, 0)
        };
        let (outcome, written) =
            protocol::check_ioctl_resp_min(resp, used, layout.writable, payload_len, required)
                .map_err(|e| self.media.bad_response("ioctl", e))?;
        // Copy back what the device wrote, part by part.
        let mut off = core::mem::size_of::<protocol::RespIoctl>();
        let mut left = written;
        for p in parts.iter_mut() {
            let n = p.len().min(left);
            p[..n].copy_from_slice(&resp[off..off + n]);
            off += n;
            left -= n;
        }
        match outcome {
            IoctlOutcome::Ok => {
                if let Some(main) = parts.first_mut() {
                    if protocol::sanitize_response(nr, main) {
                        dev_warn_rl!(self.media.dev(), "repaired ioctl {} payload", nr);
                    }
                }
                if let Some(main) = parts.first() {
                    self.after_ioctl(nr, main);
                }
                Ok(())
            }
            IoctlOutcome::Err { errno, .. } => Err(device_error(errno)),
        }
    }

    /// `QBUF`, `QUERYBUF`, `PREPARE_BUF`: the `v4l2_buffer` `b`, followed for multi-planar
    /// types by its `planes` (spec: the planes array follows the struct in both directions).
    /// The `m` values user space passed (`m.planes`, and `m.userptr`/`m.fd` of buffer and
    /// planes) come back unchanged; MMAP offsets are the device's.
    ///
    /// Errors: `EINVAL` for USERPTR and DMABUF memory (not supported yet), and those of
    /// [`Self::ioctl`].
    pub(crate) fn buf_ioctl(&self, nr: u8, b: &mut [u8], planes: &mut [u8]) -> Result {
        let memory = protocol::get_u32(b, protocol::buf::MEMORY).ok_or(EINVAL)?;
        if memory != protocol::MEMORY_MMAP && nr != protocol::nr::QUERYBUF {
            return Err(EINVAL);
        }
        let multi = protocol::get_u32(b, protocol::buf::TYPE)
            .map(protocol::buf_type_is_multiplanar)
            .unwrap_or(false);
        let planes: &mut [u8] = if multi { planes } else { &mut [] };
        let mut saved_m = [0u8; 8];
        saved_m.copy_from_slice(&b[protocol::buf::M..protocol::buf::M + 8]);
        let ret = self.ioctl_min(nr, &mut [&mut *b, &mut *planes], protocol::buf::SIZE);
        if multi {
            b[protocol::buf::M..protocol::buf::M + 8].copy_from_slice(&saved_m);
        }
        ret
    }

    /// `G/S/TRY_EXT_CTRLS`: `head` is the `v4l2_ext_controls`, `controls` its array.
    ///
    /// Controls with a `ptr` payload (`size > 0`) need SG lists of user memory, which this
    /// driver does not send yet: such a request fails with `EINVAL` and `error_idx = count`
    /// (V4L2's "failed before any control was touched") without reaching the device.
    pub(crate) fn ext_ctrls(&self, nr: u8, head: &mut [u8], controls: &mut [u8]) -> Result {
        // v4l2_ext_control: id@0 size@4 reserved2@8 value@12 (packed, 20 bytes).
        let count = controls.len() / protocol::V4L2_EXT_CONTROL_SIZE;
        for c in controls.chunks(protocol::V4L2_EXT_CONTROL_SIZE) {
            if protocol::get_u32(c, 4).unwrap_or(0) != 0 {
                // v4l2_ext_controls.error_idx is at offset 12.
                protocol::put_u32(head, 12, count as u32).ok_or(EINVAL)?;
                return Err(EINVAL);
            }
        }
        self.ioctl(nr, &mut [head, controls])
    }

    /// Forwards an ioctl straight from user memory (used for the standard ioctls the V4L2
    /// core would otherwise rewrite). Returns 0 or a negative errno.
    pub(crate) fn ioctl_user(&self, nr: u8, user: UserSlice) -> i32 {
        let Some(info) = protocol::ioctl_info(nr) else {
            return ENOTTY.to_errno();
        };
        let mut buf = [0u8; 128];
        let size = info.size as usize;
        if size > buf.len() {
            return ENOTTY.to_errno();
        }
        let (mut reader, mut writer) = user.reader_writer();
        if info.dir.to_device() {
            if let Err(e) = reader.read_slice(&mut buf[..size]) {
                return e.to_errno();
            }
        }
        let ret = self.ioctl(nr, &mut [&mut buf[..size]]);
        if ret.is_ok() && info.dir.from_device() {
            if let Err(e) = writer.write_slice(&buf[..size]) {
                return e.to_errno();
            }
        }
        match ret {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

/// Sends `VIRTIO_MEDIA_CMD_CLOSE` for `id` (no response) and waits for the device to take it,
/// so a following open sees the session gone. Errors are only logged: the file is going away.
fn send_close(media: &VirtioMedia, id: u32) {
    let res = DmaBuf::new(protocol::CmdClose::SIZE).and_then(|mut out| {
        protocol::CmdClose::new(id)
            .encode(out.bytes_mut())
            .ok_or(EINVAL)?;
        let req = media.send(out, 0)?;
        req.wait().map(|_| ())
    });
    if let Err(e) = res {
        if e != ENODEV {
            dev_warn_rl!(media.dev(), "CLOSE of session {} failed: {:?}", id, e);
        }
    }
}

/// Copies a completed buffer into the caller's `v4l2_buffer` `b` and `n` planes of `planes`,
/// keeping the caller's `m.planes` pointer for multi-planar buffers.
fn copy_done(d: &DoneBuf, b: &mut [u8], planes: &mut [u8], n: usize) {
    let m = protocol::buf::M;
    let mut saved_m = [0u8; 8];
    saved_m.copy_from_slice(&b[m..m + 8]);
    b.copy_from_slice(&d.0[..protocol::buf::SIZE]);
    let multi = protocol::get_u32(b, protocol::buf::TYPE)
        .map(protocol::buf_type_is_multiplanar)
        .unwrap_or(false);
    if multi {
        b[m..m + 8].copy_from_slice(&saved_m);
        let len = n * protocol::plane::SIZE;
        planes[..len].copy_from_slice(&d.0[protocol::buf::SIZE..protocol::buf::SIZE + len]);
    }
}
