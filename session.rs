// SPDX-License-Identifier: GPL-2.0

//! Sessions and the command path.
//!
//! One [`Session`] per open file: `open()` sends `VIRTIO_MEDIA_CMD_OPEN`, `release()` sends
//! `VIRTIO_MEDIA_CMD_CLOSE`. Every command is a [`Request`] with its own buffers and its own
//! completion, so any number of commands (from any sessions) can be in flight at once; no lock
//! is held while waiting for the device. Requests come from a per-device pool
//! ([`RequestPool`]) and go back to it when both the device and the waiter are done with them,
//! so the common command allocates nothing.
//!
//! Lock order (locks taken here): `session.queue_ops` (a mutex, held across a command) →
//! `session.pinned` → `commandq` → `request.state`; `eventq` → `sessions` → `session.state`;
//! `pool` is a leaf (held only to push or pop one request).
//!
//! Memory safety against a slow or silent device: the device's reference to a request is an
//! `Arc` leaked into the virtqueue token. The request's buffers are freed only when the last
//! reference goes, i.e. after *both* the waiter gave up (timeout, signal) *and* the device
//! returned the chain, or after the device was reset and the chain detached in `remove`. A
//! timed-out command therefore never leaves the device a pointer to freed or reused memory.

use core::pin::Pin;
use kernel::{
    prelude::*,
    rbtree::RBTreeNode,
    sync::{Arc, CondVar, CondVarTimeoutResult, Mutex, UniqueArc},
    time::msecs_to_jiffies,
    uaccess::UserSlice,
};

use crate::ffi::{
    dev_warn_rl, new_irq_spinlock, Chain, DmaBuf, FileHandle, IrqSpinLock, UserPages,
};
use crate::protocol::{self, Command, IoctlOutcome};
use crate::VirtioMedia;

/// How long a command may stay unanswered before the caller gets `ETIMEDOUT` (ms).
pub(crate) const COMMAND_TIMEOUT_MS: u32 = 10_000;

/// Completion state of a [`Request`].
struct ReqState {
    /// `None` while in flight; the used length, or `ENODEV` if the device went away.
    result: Option<Result<u32>>,
}

/// What a waiter and the commandq callback share: the completion state and its wait queue.
#[pin_data]
struct ReqSync {
    #[pin]
    state: IrqSpinLock<ReqState>,
    #[pin]
    done: CondVar,
}

/// Capacity of a pooled request's device-readable buffer (bytes): the command header and the
/// largest fixed-size ioctl payload with a planes array (`v4l2_buffer`, 88 bytes on 64-bit,
/// plus 8 `v4l2_plane`s of 64) fit, with room for a short SG list.
const POOL_READABLE: usize = 1024;

/// Capacity of a pooled request's device-writable buffer (bytes), as [`POOL_READABLE`].
const POOL_WRITABLE: usize = 1024;

/// Most free requests a device keeps for reuse ([`RequestPool`]): 32 × ~2.1 KiB.
const POOL_MAX: usize = 32;

/// One command: a device-readable buffer (command + payload) and a device-writable one
/// (response + payload; not posted when the command has no response).
///
/// Requests are reused ([`RequestPool`]): a request goes back to its device's pool only when
/// nothing else holds it, i.e. when the device has returned the chain and the waiter is done
/// ([`Arc::into_unique_or_drop`]); a request the device still holds is freed by whoever drops
/// the last reference.
pub(crate) struct Request {
    out: [DmaBuf; 1],
    resp: [DmaBuf; 1],
    /// Whether `resp` is part of the chain.
    has_resp: bool,
    sync: Pin<KBox<ReqSync>>,
}

// SAFETY: `out` and `resp` are `DmaBuf`s owned by the request. `resp` is read only through
// `Request::wait`, which hands it out after the completion recorded by the queue callback,
// i.e. after the device returned the chain (or after a reset, when it can no longer write).
// Both are written only through `&mut Request` (a `UniqueArc` before posting), which cannot
// exist while the virtqueue's token holds a reference.
unsafe impl Chain for Request {
    fn readable(&self) -> &[DmaBuf] {
        &self.out
    }
    fn writable(&self) -> &[DmaBuf] {
        if self.has_resp {
            &self.resp
        } else {
            &[]
        }
    }
}

impl Request {
    /// A request whose buffers have capacity `readable` and `writable` bytes. Errors: `ENOMEM`.
    fn new(readable: usize, writable: usize) -> Result<UniqueArc<Request>> {
        let sync = KBox::pin_init(
            pin_init!(ReqSync {
                state <- new_irq_spinlock!(ReqState { result: None }, "virtio_media:request"),
                done <- kernel::new_condvar!("virtio_media:request_done"),
            }),
            GFP_KERNEL,
        )?;
        Ok(UniqueArc::new(
            Request {
                out: [DmaBuf::new(readable)?],
                resp: [DmaBuf::new(writable)?],
                has_resp: false,
                sync,
            },
            GFP_KERNEL,
        )?)
    }

    /// Sizes the buffers for a command of `readable` bytes with a response of `writable`
    /// bytes (0: none), both zeroed. Errors: `EINVAL` if they exceed the capacities.
    fn prepare(&mut self, readable: usize, writable: usize) -> Result {
        self.out[0].set_len(readable)?;
        self.resp[0].set_len(writable)?;
        self.has_resp = writable > 0;
        self.sync.state.lock().result = None;
        Ok(())
    }

    /// Whether the buffers have the pool's capacities.
    fn poolable(&self) -> bool {
        self.out[0].capacity() == POOL_READABLE && self.resp[0].capacity() == POOL_WRITABLE
    }

    /// The device-readable bytes, to be filled before posting.
    pub(crate) fn out_mut(&mut self) -> &mut [u8] {
        self.out[0].bytes_mut()
    }

    /// Records the device's answer (or `ENODEV`) and wakes the waiter. Queue-callback context.
    pub(crate) fn complete(&self, result: Result<u32>) {
        let mut s = self.sync.state.lock();
        if s.result.is_none() {
            s.result = Some(result);
        }
        drop(s);
        self.sync.done.notify_all();
    }

    /// Waits for completion: the response bytes and the used length.
    ///
    /// Errors: `ETIMEDOUT` after [`COMMAND_TIMEOUT_MS`], `EINTR` on a signal, `ENODEV` if the
    /// device was removed. On error the request (and its buffers) stays alive for as long as
    /// the device holds it.
    pub(crate) fn wait(&self) -> Result<(&[u8], usize)> {
        let mut left = msecs_to_jiffies(COMMAND_TIMEOUT_MS);
        let mut s = self.sync.state.lock();
        loop {
            // Checked after every wake-up, signals and timeouts included: a command the device
            // has answered is reported as answered.
            if let Some(r) = s.result {
                return self.answer(r);
            }
            if left == 0 {
                return Err(etimedout());
            }
            match self.sync.done.wait_interruptible_timeout(&mut s, left) {
                CondVarTimeoutResult::Timeout => left = 0,
                CondVarTimeoutResult::Signal { .. } if s.result.is_none() => return Err(EINTR),
                CondVarTimeoutResult::Signal { jiffies }
                | CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
            }
        }
    }

    /// Whether the device has answered (or the request was completed with `ENODEV`).
    pub(crate) fn is_done(&self) -> bool {
        self.sync.state.lock().result.is_some()
    }

    /// The response bytes and used length of a completed request (`result` as recorded by
    /// [`Self::complete`]).
    fn answer(&self, result: Result<u32>) -> Result<(&[u8], usize)> {
        let used = result?;
        Ok((
            self.writable().first().map_or(&[][..], |r| r.bytes()),
            used as usize,
        ))
    }

    /// [`Self::wait`] for the commands of a release path (CLOSE, MUNMAP), which must not be
    /// cut short by the signal that is killing the process: if a signal is pending, the wait
    /// goes on uninterruptibly, polling every 10 ms, for up to another
    /// [`COMMAND_TIMEOUT_MS`]. Errors as for [`Self::wait`], without `EINTR`.
    pub(crate) fn wait_release(&self) -> Result<(&[u8], usize)> {
        match self.wait() {
            Err(e) if e == EINTR => {}
            r => return r,
        }
        let mut waited = 0;
        while waited < COMMAND_TIMEOUT_MS {
            if let Some(r) = self.sync.state.lock().result {
                return self.answer(r);
            }
            crate::ffi::msleep(10);
            waited += 10;
        }
        Err(etimedout())
    }
}

/// A device's free [`Request`]s with the pool's capacities, reused so that a command costs no
/// allocation: a stack of at most [`POOL_MAX`]. Filled lazily by requests coming back.
pub(crate) struct RequestPool {
    free: [Option<UniqueArc<Request>>; POOL_MAX],
    len: usize,
}

impl RequestPool {
    /// An empty pool.
    pub(crate) const fn new() -> Self {
        Self {
            free: [const { None }; POOL_MAX],
            len: 0,
        }
    }

    fn pop(&mut self) -> Option<UniqueArc<Request>> {
        let i = self.len.checked_sub(1)?;
        self.len = i;
        self.free[i].take()
    }

    /// Keeps `req`, or gives it back if the pool is full.
    fn push(&mut self, req: UniqueArc<Request>) -> Option<UniqueArc<Request>> {
        match self.free.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(req);
                self.len += 1;
                None
            }
            None => Some(req),
        }
    }
}

/// A posted [`Request`]: dereferences to it for [`Request::wait`]; dropping it gives the
/// request back to the pool if the device has returned it too (else the last holder frees it).
pub(crate) struct InFlight<'a> {
    media: &'a VirtioMedia,
    /// `Some` until dropped.
    req: Option<Arc<Request>>,
}

impl InFlight<'_> {
    /// Another reference to the request (kept beyond this `InFlight`: no reuse then).
    pub(crate) fn arc(&self) -> Option<Arc<Request>> {
        self.req.clone()
    }

    /// The request (`ENODEV` cannot happen: `req` is `Some` until the drop).
    fn request(&self) -> Result<&Request> {
        self.req.as_deref().ok_or(ENODEV)
    }

    /// [`Request::wait`].
    pub(crate) fn wait(&self) -> Result<(&[u8], usize)> {
        self.request()?.wait()
    }

    /// [`Request::wait_release`].
    pub(crate) fn wait_release(&self) -> Result<(&[u8], usize)> {
        self.request()?.wait_release()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            self.media.recycle(req);
        }
    }
}

impl VirtioMedia {
    /// A request for a command of `readable` device-readable bytes (to be filled through
    /// [`Request::out_mut`]) with a zeroed response buffer of `writable` bytes (0: none):
    /// from the device's pool when it fits the pool's capacities, else allocated.
    ///
    /// Errors: `ENOMEM`.
    pub(crate) fn request(&self, readable: usize, writable: usize) -> Result<UniqueArc<Request>> {
        let fits = readable <= POOL_READABLE && writable <= POOL_WRITABLE;
        let pooled = if fits { self.pool.lock().pop() } else { None };
        let mut req = match pooled {
            Some(r) => r,
            None if fits => Request::new(POOL_READABLE, POOL_WRITABLE)?,
            None => Request::new(readable, writable)?,
        };
        req.prepare(readable, writable)?;
        Ok(req)
    }

    /// Gives `req` back to the pool if nothing else holds it and it has the pool's
    /// capacities; otherwise drops this reference.
    fn recycle(&self, req: Arc<Request>) {
        let Some(req) = req.into_unique_or_drop() else {
            return;
        };
        let req = Pin::into_inner(req);
        if req.poolable() {
            let full = self.pool.lock().push(req);
            drop(full);
        }
    }

    /// Posts the command `req` (from [`Self::request`]). Returns the in-flight request; the
    /// caller waits for it with [`Request::wait`] and parses the response. Holds the commandq
    /// lock only to post; if the ring is full, waits (up to the command timeout) for space.
    ///
    /// Errors: `ENODEV` (device removed), `ETIMEDOUT` and `EINTR` (ring full), and
    /// `virtqueue_add_sgs` errors.
    pub(crate) fn send(&self, req: UniqueArc<Request>) -> Result<InFlight<'_>> {
        self.post(req, true)
    }

    /// [`Self::send`] without waiting for ring space: `ENOSPC` if the commandq is full.
    pub(crate) fn try_send(&self, req: UniqueArc<Request>) -> Result<InFlight<'_>> {
        self.post(req, false)
    }

    /// [`Self::send`]; waits for ring space only if `wait_for_space`.
    fn post(&self, req: UniqueArc<Request>, wait_for_space: bool) -> Result<InFlight<'_>> {
        let req: Arc<Request> = req.into();
        let mut token = req.clone();
        let sent = InFlight {
            media: self,
            req: Some(req),
        };
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
                Err((e, t)) if e == ENOSPC && wait_for_space => {
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
        Ok(sent)
    }

    /// [`Request::wait`] for `req`, with a rate-limited warning naming `what` when the device
    /// let the command time out (the caller gets `ETIMEDOUT`; the request stays alive until the
    /// device answers or is reset).
    pub(crate) fn wait<'a>(
        &self,
        req: &'a InFlight<'_>,
        what: core::fmt::Arguments<'_>,
    ) -> Result<(&'a [u8], usize)> {
        let r = req.wait();
        if matches!(&r, Err(e) if *e == etimedout()) {
            dev_warn_rl!(
                self.dev(),
                "{} not answered within {} ms",
                what,
                COMMAND_TIMEOUT_MS
            );
        }
        r
    }

    /// Warns (rate-limited) about a malformed response and returns `EIO`.
    pub(crate) fn bad_response(&self, what: &str, e: protocol::ProtoError) -> Error {
        dev_warn_rl!(self.dev(), "malformed {} response: {:?}", what, e);
        EIO
    }
}

/// `ETIMEDOUT` (110, include/uapi/asm-generic/errno.h), absent from 6.12's `kernel::error::code`.
pub(crate) fn etimedout() -> Error {
    Error::from_errno(-110)
}

/// [`protocol::check_request`] as an [`Error`].
fn check_request(nr: u8, payload: &mut [u8]) -> Result {
    protocol::check_request(nr, payload).map_err(|errno| Error::from_errno(-(errno as i32)))
}

/// Maps a positive device errno to an [`Error`] (non-errno values were rejected already).
pub(crate) fn device_error(errno: u32) -> Error {
    Error::from_errno(-(protocol::device_errno(errno) as i32))
}

/// Most completed buffers kept per queue before DQBUF; more is a device flood (dropped).
const MAX_DONE: usize = 64;

/// Size of a completed buffer as a DQBUF event carries it: `v4l2_buffer` + 8 planes (600).
const DONE_SIZE: usize = protocol::EVENT_DQBUF_SIZE - protocol::DQBUF_BUFFER_OFFSET;

/// A buffer the device returned (DQBUF event), waiting for user space's DQBUF: the event's
/// `v4l2_buffer` and planes as the device wrote them (what user space is given) and their
/// fields as [`protocol::parse_event`] decoded and [`protocol::Dqbuf::check`] validated them
/// (what the driver uses).
#[derive(Clone)]
struct DoneBuf {
    info: protocol::Dqbuf,
    bytes: [u8; DONE_SIZE],
}

/// Completed buffers of one queue, oldest first: a ring of [`MAX_DONE`] slots allocated at
/// open, so the bottom half never allocates.
struct DoneRing {
    slots: KVVec<DoneBuf>,
    head: usize,
    len: usize,
}

impl DoneRing {
    fn new() -> Result<Self> {
        Ok(Self {
            slots: KVVec::from_elem(
                DoneBuf {
                    info: protocol::Dqbuf::default(),
                    bytes: [0; DONE_SIZE],
                },
                MAX_DONE,
                GFP_KERNEL,
            )?,
            head: 0,
            len: 0,
        })
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Appends the buffer `info` with a copy of its event bytes `d`; `false` if the ring is
    /// full.
    fn push(&mut self, info: protocol::Dqbuf, d: &[u8]) -> bool {
        let cap = self.slots.len();
        if self.len == cap || d.len() != DONE_SIZE {
            return false;
        }
        // `head < cap` and `len < cap`, so one wrap at most (no division, no panic path).
        let mut i = self.head + self.len;
        if i >= cap {
            i -= cap;
        }
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        slot.info = info;
        slot.bytes.copy_from_slice(d);
        self.len += 1;
        true
    }
    fn front(&self) -> Option<&DoneBuf> {
        if self.len == 0 {
            None
        } else {
            self.slots.get(self.head)
        }
    }
    fn pop(&mut self) -> Option<DoneBuf> {
        let d = self.front()?.clone();
        self.head = if self.head + 1 >= self.slots.len() {
            0
        } else {
            self.head + 1
        };
        self.len -= 1;
        Some(d)
    }
    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Buffers per queue whose plane sizes are remembered (`VIDEO_MAX_FRAME`); DQBUF events of
/// higher indices are not checked against them.
const MAX_TRACKED: usize = 64;

/// Driver-side state of one V4L2 queue (capture or output) of a session.
struct QueueState {
    /// Completed buffers.
    done: DoneRing,
    /// Plane sizes of buffers `0..MAX_TRACKED` as QUERYBUF/QBUF/PREPARE_BUF answers gave them
    /// (0 = unknown): a DQBUF event must not describe a different (larger) buffer than the
    /// one user space mapped. Preallocated at open; cleared by REQBUFS.
    lengths: KVVec<protocol::PlaneLengths>,
    /// Buffers allocated (REQBUFS/CREATE_BUFS answers): DQBUF events must name one of them.
    num_buffers: u32,
    /// Buffers queued and not yet dequeued.
    queued: u32,
    /// Between a successful STREAMON and STREAMOFF/REQBUFS(0).
    streaming: bool,
    /// A STREAMON is in flight: the device may send DQBUF events before answering it.
    streamon_pending: bool,
    /// A buffer flagged `V4L2_BUF_FLAG_LAST` was dequeued: DQBUF answers `EPIPE` until the
    /// queue restarts (STREAMOFF/STREAMON, or `V4L2_DEC_CMD_START`/`V4L2_ENC_CMD_START`).
    last_dequeued: bool,
}

impl QueueState {
    fn new() -> Result<Self> {
        Ok(Self {
            done: DoneRing::new()?,
            lengths: KVVec::from_elem([0; protocol::MAX_PLANES], MAX_TRACKED, GFP_KERNEL)?,
            num_buffers: 0,
            queued: 0,
            streaming: false,
            streamon_pending: false,
            last_dequeued: false,
        })
    }

    /// Forgets completed buffers and stream state (STREAMOFF, REQBUFS(0)).
    fn reset(&mut self) {
        self.done.clear();
        self.queued = 0;
        self.streaming = false;
        self.streamon_pending = false;
        self.last_dequeued = false;
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

/// A USERPTR buffer handed to the device (QBUF/PREPARE_BUF): its pinned planes, kept until
/// the device gives the buffer back (DQBUF, STREAMOFF, REQBUFS) or the session is closed.
struct PinnedBuf {
    /// [`protocol::Queue`] index.
    queue: usize,
    /// `v4l2_buffer.index`.
    index: u32,
    /// `m.userptr` of the buffer (single-planar) or of each plane, as user space gave them:
    /// DQBUF reports them back (the device's DQBUF event carries no pointers).
    userptr: [u64; protocol::MAX_PLANES],
    /// `length` of the buffer (single-planar) or of each plane.
    length: [u32; protocol::MAX_PLANES],
    /// Number of planes (1 for single-planar buffers).
    planes: usize,
    /// Prepared (PREPARE_BUF) and not queued yet: a QBUF of it uses these pages, whatever
    /// pointers it carries (as vb2 does).
    prepared: bool,
    /// The pinned planes, one per plane.
    pins: KVec<UserPages>,
}

/// Most USERPTR buffers pinned per session: V4L2's `VIDEO_MAX_FRAME` (64) per queue.
const MAX_PINNED_BUFS: usize = 128;

/// `v4l2_requestbuffers.count` / `v4l2_create_buffers.index` and `.count` offsets.
mod bufreq {
    pub(super) const COUNT: usize = 0;
    pub(super) const TYPE: usize = 4;
    pub(super) const CREATE_INDEX: usize = 0;
    pub(super) const CREATE_COUNT: usize = 4;
    /// `v4l2_create_buffers.format.type`: `format` is 8-byte aligned (its union holds
    /// pointers), so it starts at 16, after 4 bytes of padding.
    pub(super) const CREATE_TYPE: usize = 16;
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
    /// USERPTR buffers the device holds, [`MAX_PINNED_BUFS`] slots allocated at open.
    /// Process context only (unpinning may sleep).
    #[pin]
    pinned: Mutex<KVec<Option<PinnedBuf>>>,
    /// Held across the whole command (send, wait, state update) of `STREAMON`, `STREAMOFF`,
    /// `REQBUFS` and `CREATE_BUFS`, so that those of one session reach the device and take
    /// effect on the queue state in the same order, whatever threads share the file.
    #[pin]
    queue_ops: Mutex<()>,
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
        let resp_len = core::mem::size_of::<protocol::RespOpen>();
        let mut req = media.request(protocol::CmdOpen::SIZE, resp_len)?;
        protocol::CmdOpen::new()
            .encode(req.out_mut())
            .ok_or(EINVAL)?;
        let req = media.send(req)?;
        let (resp, used) = media.wait(&req, format_args!("OPEN"))?;
        let id = match protocol::check_open_resp(resp, used, resp_len) {
            Ok(Ok(id)) => id,
            Ok(Err(errno)) => return Err(device_error(errno)),
            Err(e) => return Err(media.bad_response("OPEN", e)),
        };
        let media2 = media.clone();
        let (capture_q, output_q, pinned_slots) =
            match (QueueState::new(), QueueState::new(), pinned_slots()) {
                (Ok(c), Ok(o), Ok(p)) => (c, o, p),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    send_close(&media, id);
                    return Err(e);
                }
            };
        let session = Arc::pin_init(
            pin_init!(Session {
                handle <- FileHandle::new(),
                media: media2,
                id,
                state <- new_irq_spinlock!(
                    SessionState {
                        failed: None,
                        fh_live: false,
                        queues: [capture_q, output_q],
                    },
                    "virtio_media:session"
                ),
                pinned <- kernel::new_mutex!(pinned_slots, "virtio_media:pinned"),
                queue_ops <- kernel::new_mutex!((), "virtio_media:queue_ops"),
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

    /// Closes the session (`VIRTIO_MEDIA_CMD_CLOSE`, sent once): takes it out of the device's
    /// session tree (if [`Self::begin_release`] has not already), then unpins its USERPTR
    /// buffers once the device has closed it (or is gone); if the device never answered, they
    /// stay pinned until it is reset.
    ///
    /// Every session [`Self::open`] registered must end here: the tree holds a reference to
    /// the session and the session one to the device state, so a session left in the tree
    /// would keep both alive after the device is removed.
    pub(crate) fn close(&self) {
        self.unroute();
        let closed = send_close(&self.media, self.id);
        let mut slots = self.pinned.lock();
        for slot in slots.iter_mut() {
            if let Some(b) = slot.take() {
                if closed {
                    drop(b);
                } else {
                    self.media.orphan_pins(b.pins);
                }
            }
        }
    }

    /// Unpins the USERPTR buffers of queue `q`: the device has given them all back
    /// (STREAMOFF, REQBUFS answered).
    fn release_pinned(&self, q: usize) {
        let mut slots = self.pinned.lock();
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|b| b.queue == q) {
                drop(slot.take());
            }
        }
    }

    /// Pins the planes of a USERPTR `v4l2_buffer` `b` (`planes` for multi-planar types) for
    /// QBUF/PREPARE_BUF and returns them with their SG list (spec: `virtio_media_sg_entry`s
    /// for each plane in order, after the payload, device-readable only).
    ///
    /// Errors: `EINVAL` (unknown queue, index beyond the buffers the device allocated, no
    /// planes, a plane of 0 bytes or more than 16 MiB, more than
    /// [`protocol::MAX_SG_ENTRIES`] entries), `EFAULT` (memory that cannot be pinned),
    /// `ENOMEM`.
    fn pin_buffer(&self, b: &[u8], planes: &[u8], multi: bool) -> Result<(PinnedBuf, KVec<u8>)> {
        use protocol::{buf, get_u32, get_u64, plane};
        let buf_type = get_u32(b, buf::TYPE).ok_or(EINVAL)?;
        let q = protocol::queue_of(buf_type).ok_or(EINVAL)? as usize;
        let index = get_u32(b, buf::INDEX).ok_or(EINVAL)?;
        if index >= self.state.lock().queues[q].num_buffers {
            return Err(EINVAL);
        }
        let write = q == protocol::Queue::Capture as usize;
        let mut ranges = [(0u64, 0u32); protocol::MAX_PLANES];
        let n = if multi {
            let n = get_u32(b, buf::LENGTH).ok_or(EINVAL)? as usize;
            if n == 0 || n > protocol::MAX_PLANES || planes.len() < n * plane::SIZE {
                return Err(EINVAL);
            }
            for (i, r) in ranges.iter_mut().take(n).enumerate() {
                let p = &planes[i * plane::SIZE..(i + 1) * plane::SIZE];
                *r = (
                    get_u64(p, plane::M).ok_or(EINVAL)?,
                    get_u32(p, plane::LENGTH).ok_or(EINVAL)?,
                );
            }
            n
        } else {
            ranges[0] = (
                get_u64(b, buf::M).ok_or(EINVAL)?,
                get_u32(b, buf::LENGTH).ok_or(EINVAL)?,
            );
            1
        };
        let mut pinned = PinnedBuf {
            queue: q,
            index,
            userptr: [0; protocol::MAX_PLANES],
            length: [0; protocol::MAX_PLANES],
            planes: n,
            prepared: false,
            pins: KVec::with_capacity(n, GFP_KERNEL)?,
        };
        let mut sg = KVec::new();
        for (i, &(addr, len)) in ranges.iter().take(n).enumerate() {
            pinned.userptr[i] = addr;
            pinned.length[i] = len;
            let pages = UserPages::pin(addr as usize, len as usize, write)?;
            append_sg(&mut sg, &pages)?;
            pinned.pins.push(pages, GFP_KERNEL)?;
        }
        Ok((pinned, sg))
    }

    /// QBUF of a USERPTR buffer that was prepared: takes its entry and writes the prepared
    /// `m.userptr`/`length` values into `b` (or its `planes`), so the device is sent the
    /// buffer it prepared, with the same SG lists. `None` if the buffer is not prepared.
    ///
    /// Errors: `EINVAL` if the caller's planes array is shorter than the prepared buffer's,
    /// `ENOMEM` (then the entry stays).
    fn take_prepared(
        &self,
        b: &mut [u8],
        planes: &mut [u8],
        multi: bool,
    ) -> Result<Option<(PinnedBuf, KVec<u8>)>> {
        use protocol::{buf, plane};
        let Some(q) = protocol::get_u32(b, buf::TYPE).and_then(protocol::queue_of) else {
            return Ok(None);
        };
        let index = protocol::get_u32(b, buf::INDEX).unwrap_or(u32::MAX);
        let mut slots = self.pinned.lock();
        let Some(slot) = slots.iter_mut().find(|o| {
            o.as_ref()
                .is_some_and(|o| o.queue == q as usize && o.index == index && o.prepared)
        }) else {
            return Ok(None);
        };
        let Some(p) = slot.as_ref() else {
            return Ok(None);
        };
        if multi && planes.len() < p.planes * plane::SIZE {
            return Err(EINVAL);
        }
        let mut sg = KVec::new();
        for pages in p.pins.iter() {
            append_sg(&mut sg, pages)?;
        }
        let Some(p) = slot.take() else {
            return Ok(None);
        };
        drop(slots);
        if multi {
            let _ = protocol::put_u32(b, buf::LENGTH, p.planes as u32);
            for i in 0..p.planes {
                let _ = protocol::put_u64(planes, i * plane::SIZE + plane::M, p.userptr[i]);
                let _ = protocol::put_u32(planes, i * plane::SIZE + plane::LENGTH, p.length[i]);
            }
        } else {
            let _ = protocol::put_u64(b, buf::M, p.userptr[0]);
            let _ = protocol::put_u32(b, buf::LENGTH, p.length[0]);
        }
        Ok(Some((p, sg)))
    }

    /// Keeps `b` until the device gives the buffer back, replacing an older entry for the
    /// same buffer (the device accepted this one, so it no longer holds that). With every
    /// slot taken, `b` goes to [`VirtioMedia::orphan_pins`] (kept until the device reset).
    fn keep_pinned(&self, b: PinnedBuf) {
        let mut slots = self.pinned.lock();
        let same = slots.iter().position(|o| {
            o.as_ref()
                .is_some_and(|o| o.queue == b.queue && o.index == b.index)
        });
        let free = same.or_else(|| slots.iter().position(|o| o.is_none()));
        match free.and_then(|i| slots.get_mut(i)) {
            Some(slot) => {
                let old = slot.replace(b);
                drop(slots);
                drop(old);
            }
            None => {
                drop(slots);
                self.media.orphan_pins(b.pins);
            }
        }
    }

    /// Takes the pinned entry of buffer `index` of queue `q` (its DQBUF).
    fn take_pinned(&self, q: usize, index: u32) -> Option<PinnedBuf> {
        let mut slots = self.pinned.lock();
        slots
            .iter_mut()
            .find(|o| o.as_ref().is_some_and(|o| o.queue == q && o.index == index))
            .and_then(|o| o.take())
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
            protocol::Event::Dqbuf { buf: dq, .. } => {
                let Some(q) = dq.queue() else {
                    dev_warn_rl!(dev, "DQBUF event with buffer type {} dropped", dq.buf_type);
                    return;
                };
                let mut st = self.state.lock();
                let qs = &mut st.queues[q as usize];
                let known = qs.lengths.get(dq.index as usize);
                if let Err(e) = dq.check(qs.num_buffers, known) {
                    drop(st);
                    dev_warn_rl!(dev, "session {}: bad DQBUF event dropped: {:?}", self.id, e);
                    return;
                }
                if !qs.streaming && !qs.streamon_pending {
                    // Sent before a STREAMOFF/REQBUFS(0) the driver has already processed:
                    // that buffer went back to user space with the STREAMOFF.
                    drop(st);
                    dev_warn_rl!(
                        dev,
                        "session {}: DQBUF event on a stopped queue dropped",
                        self.id
                    );
                    return;
                }
                let src = protocol::DQBUF_BUFFER_OFFSET;
                let Some(ev) = buf.get(src..src + DONE_SIZE) else {
                    return;
                };
                if !qs.done.push(dq, ev) {
                    drop(st);
                    dev_warn_rl!(dev, "session {}: DQBUF event flood, event dropped", self.id);
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
        self.unroute();
    }

    /// Takes the session out of the device's session tree (events for its id are dropped from
    /// now on). Idempotent; the tree's reference is dropped outside the lock.
    fn unroute(&self) {
        let mut sessions = self.media.sessions.lock();
        // The tree may hold another session under this id only if this one was never
        // registered (`open` refused a reused id before inserting it): leave that one alone.
        let ours = sessions
            .get(&self.id)
            .is_some_and(|s| core::ptr::eq(&**s, self));
        let removed = if ours {
            sessions.remove(&self.id)
        } else {
            None
        };
        drop(sessions);
        drop(removed);
    }

    /// Updates the driver-side queue state after a successful ioctl `nr` whose main payload
    /// (as the device answered it) is `p`, and unpins the USERPTR buffers of a queue the
    /// device has given back. Process context.
    fn after_ioctl(&self, nr: u8, p: &[u8]) {
        let get = |off| protocol::get_u32(p, off).unwrap_or(0);
        let queue = |t| protocol::queue_of(t).map(|q| q as usize);
        // A queue whose buffers the device has all given back (REQBUFS, STREAMOFF).
        let mut given_back = None;
        let mut st = self.state.lock();
        match nr {
            protocol::nr::REQBUFS => {
                if let Some(q) = queue(get(bufreq::TYPE)) {
                    given_back = Some(q);
                    let qs = &mut st.queues[q];
                    qs.num_buffers = get(bufreq::COUNT);
                    qs.lengths
                        .iter_mut()
                        .for_each(|l| *l = [0; protocol::MAX_PLANES]);
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
                    st.queues[q].streamon_pending = false;
                    st.queues[q].last_dequeued = false;
                }
            }
            protocol::nr::STREAMOFF => {
                if let Some(q) = queue(get(0)) {
                    given_back = Some(q);
                    st.queues[q].reset();
                }
            }
            // V4L2_DEC_CMD_START / V4L2_ENC_CMD_START (0) restart a drained codec.
            protocol::nr::DECODER_CMD | protocol::nr::ENCODER_CMD if get(0) == 0 => {
                st.queues[protocol::Queue::Capture as usize].last_dequeued = false;
            }
            _ => return,
        }
        drop(st);
        if let Some(q) = given_back {
            self.release_pinned(q);
        }
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
            if !qs.streaming {
                return Err(EINVAL);
            }
            if let Some(front) = qs.done.front() {
                if front.info.buf_type != buf_type {
                    return Err(EINVAL);
                }
                let n = front.info.num_planes as usize;
                if n > user_planes {
                    return Err(EINVAL);
                }
                let Some(d) = qs.done.pop() else {
                    return Err(EINVAL);
                };
                qs.queued = qs.queued.saturating_sub(1);
                if d.info.is_last() {
                    qs.last_dequeued = true;
                }
                drop(st);
                copy_done(&d, b, planes, n);
                self.restore_userptr(q, b, planes, n);
                return Ok(());
            }
            drop(st);
            if nonblock {
                return Err(EAGAIN);
            }
            self.handle.wait_interruptible(|| self.dqbuf_ready(q))?;
        }
    }

    /// After DQBUF of a USERPTR buffer: its pages are the user's again (unpinned), and its
    /// `m.userptr` values (of the buffer, or of its `n` planes) are those user space queued.
    fn restore_userptr(&self, q: usize, b: &mut [u8], planes: &mut [u8], n: usize) {
        use protocol::{buf, plane};
        if protocol::get_u32(b, buf::MEMORY) != Some(protocol::MEMORY_USERPTR) {
            return;
        }
        let index = protocol::get_u32(b, buf::INDEX).unwrap_or(u32::MAX);
        let Some(p) = self.take_pinned(q, index) else {
            return;
        };
        if n == 0 {
            let _ = protocol::put_u64(b, buf::M, p.userptr[0]);
        } else {
            for (i, m) in p.userptr.iter().take(n).enumerate() {
                let _ = protocol::put_u64(planes, i * plane::SIZE + plane::M, *m);
            }
        }
        drop(p);
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
        let cap = &st.queues[protocol::Queue::Capture as usize];
        let out = &st.queues[protocol::Queue::Output as usize];
        let mut mask = 0;
        if capture
            && req & (EPOLLIN | EPOLLRDNORM) != 0
            && (!cap.done.is_empty() || cap.last_dequeued)
        {
            mask |= EPOLLIN | EPOLLRDNORM;
        }
        if output && req & (EPOLLOUT | EPOLLWRNORM) != 0 && !out.done.is_empty() {
            mask |= EPOLLOUT | EPOLLWRNORM;
        }
        // EPOLLERR when no queue of the node can deliver (vb2_core_poll for one queue,
        // v4l2_m2m_poll_for_data for both: only when neither streams).
        let idle = |used: bool, q: &QueueState| !used || !q.streaming;
        if mask == 0 && idle(capture, cap) && idle(output, out) {
            mask |= EPOLLERR;
        }
        mask
    }

    /// Sends ioctl `nr` whose payload is the concatenation of `parts` (the main struct, then
    /// any array the protocol appends), and writes the device's payload back into `parts`.
    ///
    /// What the driver does not implement is refused before the device sees it
    /// ([`protocol::check_request`]), and answers report only what it does
    /// ([`protocol::mask_answer`]).
    ///
    /// Errors: `ENOTTY` for an ioctl the protocol does not carry, `EINVAL` if the parts'
    /// total size does not fit, those of [`protocol::check_request`], the device's errno,
    /// `EIO` for a malformed response, and those of [`VirtioMedia::send`].
    pub(crate) fn ioctl(&self, nr: u8, parts: &mut [&mut [u8]]) -> Result {
        if let Some(main) = parts.first_mut() {
            check_request(nr, main)?;
        }
        let required = parts.iter().map(|p| p.len()).sum::<usize>();
        self.ioctl_min(nr, parts, required)
    }

    /// [`Self::ioctl`] where a success needs to carry only `required` payload bytes (the
    /// device writes appended plane arrays only as far as the buffer has planes); whatever
    /// the device wrote is copied back.
    fn ioctl_min(&self, nr: u8, parts: &mut [&mut [u8]], required: usize) -> Result {
        self.ioctl_ext(nr, parts, required, &[])?
    }

    /// [`Self::ioctl_min`] with `extra` device-readable bytes after the payload (SG lists),
    /// telling apart the device's answer (`Ok(Err(errno))`: the device refused and holds
    /// nothing) from a command without a valid answer (`Err`: interrupted, timed out,
    /// malformed response, device gone; the device may or may not have acted on it).
    fn ioctl_ext(
        &self,
        nr: u8,
        parts: &mut [&mut [u8]],
        required: usize,
        extra: &[u8],
    ) -> Result<Result> {
        self.check_usable()?;
        // Queue-state commands one at a time per session: the order in which they are sent
        // is the order in which the device and `after_ioctl` apply them.
        let _serial = matches!(
            nr,
            protocol::nr::STREAMON
                | protocol::nr::STREAMOFF
                | protocol::nr::REQBUFS
                | protocol::nr::CREATE_BUFS
        )
        .then(|| self.queue_ops.lock());
        let streamon = match parts.first() {
            Some(p) if nr == protocol::nr::STREAMON => {
                protocol::get_u32(p, 0).and_then(protocol::queue_of)
            }
            _ => None,
        };
        if let Some(q) = streamon {
            self.state.lock().queues[q as usize].streamon_pending = true;
        }
        let ret = self.ioctl_send(nr, parts, required, extra);
        if let Some(q) = streamon {
            if !matches!(ret, Ok(Ok(()))) {
                self.state.lock().queues[q as usize].streamon_pending = false;
            }
        }
        ret
    }

    fn ioctl_send(
        &self,
        nr: u8,
        parts: &mut [&mut [u8]],
        required: usize,
        extra: &[u8],
    ) -> Result<Result> {
        let info = protocol::ioctl_info(nr).ok_or(ENOTTY)?;
        let total = parts.iter().map(|p| p.len()).sum::<usize>();
        let layout = protocol::ChainLayout::ioctl(info.dir, total, extra.len()).ok_or(EINVAL)?;
        let mut req = self.media.request(layout.readable, layout.writable)?;
        let out = req.out_mut();
        let cmd_len = protocol::CmdIoctl::SIZE;
        protocol::CmdIoctl::new(self.id, u32::from(nr))
            .encode(out)
            .ok_or(EINVAL)?;
        if info.dir.to_device() {
            let mut off = cmd_len;
            for p in parts.iter() {
                out[off..off + p.len()].copy_from_slice(p);
                off += p.len();
            }
        }
        let extra_at = layout.readable - extra.len();
        out[extra_at..].copy_from_slice(extra);
        let req = self.media.send(req)?;
        let (resp, used) = self
            .media
            .wait(&req, format_args!("session {} ioctl {}", self.id, nr))?;
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
                    protocol::mask_answer(nr, main);
                }
                if let Some(main) = parts.first() {
                    self.after_ioctl(nr, main);
                }
                Ok(Ok(()))
            }
            IoctlOutcome::Err { errno, .. } => Ok(Err(device_error(errno))),
        }
    }

    /// `QBUF`, `QUERYBUF`, `PREPARE_BUF`: the `v4l2_buffer` `b`, followed for multi-planar
    /// types by its `planes` (spec: the planes array follows the struct in both directions).
    /// The `m` values user space passed (`m.planes`, and `m.userptr` of buffer and planes)
    /// come back unchanged; MMAP offsets are the device's.
    ///
    /// USERPTR buffers (QBUF, PREPARE_BUF): every plane's memory is pinned and described to
    /// the device by `virtio_media_sg_entry` lists after the payload (device-readable part
    /// only); the pins are kept until the device gives the buffer back (DQBUF, STREAMOFF,
    /// REQBUFS) or the session is closed, or at once dropped if the device refuses it.
    ///
    /// Errors: `EINVAL` for DMABUF memory (not supported yet) and bad USERPTR buffers,
    /// `EBADR`/`EINVAL` for a buffer of a request (no Request API, [`protocol::check_request`]),
    /// `EFAULT` for USERPTR memory that cannot be pinned (see [`UserPages::pin`]), and those
    /// of [`Self::ioctl`].
    pub(crate) fn buf_ioctl(&self, nr: u8, b: &mut [u8], planes: &mut [u8]) -> Result {
        use protocol::{buf, plane};
        check_request(nr, b)?;
        let memory = protocol::get_u32(b, buf::MEMORY).ok_or(EINVAL)?;
        let userptr = memory == protocol::MEMORY_USERPTR;
        if memory != protocol::MEMORY_MMAP && !userptr && nr != protocol::nr::QUERYBUF {
            return Err(EINVAL);
        }
        let multi = protocol::get_u32(b, buf::TYPE)
            .map(protocol::buf_type_is_multiplanar)
            .unwrap_or(false);
        // A multi-planar buffer has at least one plane: an array of none is the caller's
        // error (EINVAL, as vb2's __verify_planes_array), refused before the device acts on it
        // (it would queue the buffer and report 1 plane, which reads as a device fault: EIO).
        if multi && protocol::get_u32(b, protocol::buf::LENGTH) == Some(0) {
            return Err(EINVAL);
        }
        let planes: &mut [u8] = if multi { planes } else { &mut [] };
        if memory == protocol::MEMORY_MMAP
            && matches!(nr, protocol::nr::QBUF | protocol::nr::PREPARE_BUF)
        {
            self.fill_mmap_lengths(b, planes);
        }
        let prepared = if userptr && nr == protocol::nr::QBUF {
            self.take_prepared(b, planes, multi)?
        } else {
            None
        };
        let (mut pinned, sg) = match prepared {
            Some(p) => (Some(p.0), p.1),
            None if userptr && nr != protocol::nr::QUERYBUF => {
                let (p, sg) = self.pin_buffer(b, planes, multi)?;
                (Some(p), sg)
            }
            None => (None, KVec::new()),
        };
        // A prepared multi-planar buffer is sent with its own plane count.
        let planes: &mut [u8] = match &pinned {
            Some(p) if multi && p.prepared => {
                let n = (p.planes * protocol::plane::SIZE).min(planes.len());
                &mut planes[..n]
            }
            _ => planes,
        };
        let mut saved_m = [0u8; 8];
        saved_m.copy_from_slice(&b[buf::M..buf::M + 8]);
        let mut plane_m = [0u64; protocol::MAX_PLANES];
        for (i, m) in plane_m.iter_mut().enumerate() {
            *m = protocol::get_u64(planes, i * plane::SIZE + plane::M).unwrap_or(0);
        }
        let get = |b: &[u8], off| protocol::get_u32(b, off).unwrap_or(0);
        let (ty, mem, len) = (get(b, buf::TYPE), memory, get(b, buf::LENGTH));
        let ret = self.ioctl_ext(nr, &mut [&mut *b, &mut *planes], buf::SIZE, &sg);
        // The V4L2 core sized the planes array (and its 32-bit compat copy) from the caller's
        // values: the device may not change the type, the memory or, for multi-planar
        // buffers, raise the plane count.
        let bad = get(b, buf::TYPE) != ty
            || (nr != protocol::nr::QUERYBUF && get(b, buf::MEMORY) != mem)
            || (multi && get(b, buf::LENGTH) > len);
        if bad {
            dev_warn_rl!(
                self.media.dev(),
                "ioctl {}: device changed the buffer's type/memory/planes",
                nr
            );
            let _ = protocol::put_u32(b, buf::TYPE, ty);
            let _ = protocol::put_u32(b, buf::MEMORY, mem);
            if multi {
                let _ = protocol::put_u32(b, buf::LENGTH, len);
            }
        }
        if multi || (userptr && nr != protocol::nr::QUERYBUF) {
            b[buf::M..buf::M + 8].copy_from_slice(&saved_m);
        }
        if userptr && nr != protocol::nr::QUERYBUF {
            for (i, m) in plane_m.iter().enumerate() {
                let _ = protocol::put_u64(planes, i * plane::SIZE + plane::M, *m);
            }
        }
        if let Some(p) = pinned.take() {
            match ret {
                // A prepared buffer the device would not queue stays prepared.
                Ok(Err(_)) if p.prepared => self.keep_pinned(p),
                // The device refused the buffer: it holds nothing.
                Ok(Err(_)) => drop(p),
                // Taken, or unknown: keep the pages until the device gives the buffer back.
                _ => {
                    let mut p = p;
                    p.prepared = nr == protocol::nr::PREPARE_BUF && matches!(ret, Ok(Ok(())));
                    self.keep_pinned(p)
                }
            }
        }
        let ret = ret.and_then(|r| r);
        if bad && ret.is_ok() {
            return Err(EIO);
        }
        if ret.is_ok() {
            self.record_lengths(b, planes);
        }
        ret
    }

    /// QBUF/PREPARE_BUF of an MMAP buffer: vb2 takes plane lengths from the buffer, not from
    /// the caller (who may leave them 0); so does the driver, with the sizes the device gave
    /// ([`Self::record_lengths`]), so that the device sees a consistent buffer.
    fn fill_mmap_lengths(&self, b: &mut [u8], planes: &mut [u8]) {
        let get = |b: &[u8], off| protocol::get_u32(b, off).unwrap_or(u32::MAX);
        let Some(q) = protocol::queue_of(get(b, protocol::buf::TYPE)) else {
            return;
        };
        let known = {
            let st = self.state.lock();
            match st.queues[q as usize]
                .lengths
                .get(get(b, protocol::buf::INDEX) as usize)
            {
                Some(k) => *k,
                None => return,
            }
        };
        if planes.is_empty() {
            if known[0] != 0 {
                let _ = protocol::put_u32(b, protocol::buf::LENGTH, known[0]);
            }
            return;
        }
        for (i, &n) in known.iter().enumerate() {
            let off = i * protocol::plane::SIZE + protocol::plane::LENGTH;
            if n != 0 && off + 4 <= planes.len() {
                let _ = protocol::put_u32(planes, off, n);
            }
        }
    }

    /// Remembers the plane sizes the device gave buffer `b` (with `planes`) in a successful
    /// QUERYBUF/QBUF/PREPARE_BUF answer; sizes of 0 (not told) keep what was known.
    fn record_lengths(&self, b: &[u8], planes: &[u8]) {
        let get = |off| protocol::get_u32(b, off).unwrap_or(u32::MAX);
        let Some(q) = protocol::queue_of(get(protocol::buf::TYPE)) else {
            return;
        };
        let new = protocol::buffer_lengths(b, planes);
        let mut st = self.state.lock();
        if let Some(known) = st.queues[q as usize]
            .lengths
            .get_mut(get(protocol::buf::INDEX) as usize)
        {
            for (k, n) in known.iter_mut().zip(new) {
                if n != 0 {
                    *k = n;
                }
            }
        }
    }

    /// `G/S/TRY_EXT_CTRLS`: `head` is the `v4l2_ext_controls`, `controls` its array.
    ///
    /// Controls with a payload (`size > 0`: strings, arrays, compound controls) have their
    /// user memory at `ptr` pinned for the command and described by `virtio_media_sg_entry`
    /// lists after the array (device-readable part only, in the order of the controls); the
    /// `ptr` values come back unchanged. Pins of a command that times out or is interrupted
    /// stay until the device is reset (it may still write them).
    ///
    /// Errors: `EINVAL` for the values of a request (`V4L2_CTRL_WHICH_REQUEST_VAL`: no Request
    /// API), `EFAULT`/`EINVAL` for payloads that cannot be pinned (see [`UserPages::pin`]) or
    /// need more than [`protocol::MAX_SG_ENTRIES`] entries, and those of [`Self::ioctl`].
    pub(crate) fn ext_ctrls(&self, nr: u8, head: &mut [u8], controls: &mut [u8]) -> Result {
        use protocol::ext_ctrl;
        check_request(nr, head)?;
        let size = protocol::V4L2_EXT_CONTROL_SIZE;
        // The device writes G/TRY payloads; S payloads are only read.
        let write = nr != protocol::nr::S_EXT_CTRLS;
        let mut pins = KVec::new();
        let mut sg = KVec::new();
        for c in controls.chunks(size) {
            let len = protocol::get_u32(c, ext_ctrl::SIZE).unwrap_or(0);
            if len == 0 {
                continue;
            }
            let ptr = protocol::get_u64(c, ext_ctrl::PTR).ok_or(EINVAL)?;
            let pages = UserPages::pin(ptr as usize, len as usize, write)?;
            append_sg(&mut sg, &pages)?;
            pins.push(pages, GFP_KERNEL)?;
        }
        if pins.is_empty() {
            let required = head.len() + controls.len();
            return self.ioctl_min(nr, &mut [head, controls], required);
        }
        // The user pointers of the payload controls, to restore after the device's answer.
        let mut ptrs = KVec::with_capacity(controls.len() / size, GFP_KERNEL)?;
        for c in controls.chunks(size) {
            let ptr = match protocol::get_u32(c, ext_ctrl::SIZE) {
                Some(0) | None => None,
                Some(_) => protocol::get_u64(c, ext_ctrl::PTR),
            };
            ptrs.push(ptr, GFP_KERNEL)?;
        }
        let total = head.len() + controls.len();
        let ret = self.ioctl_ext(nr, &mut [head, controls], total, &sg);
        for (c, ptr) in controls.chunks_mut(size).zip(ptrs.iter()) {
            if let Some(ptr) = ptr {
                let _ = protocol::put_u64(c, ext_ctrl::PTR, *ptr);
            }
        }
        match &ret {
            Err(e) if *e == EINTR || *e == ERESTARTSYS || *e == etimedout() => {
                self.media.orphan_pins(pins)
            }
            _ => drop(pins),
        }
        ret.and_then(|r| r)
    }

    /// Forwards an ioctl straight from user memory (used for the standard ioctls the V4L2
    /// core would otherwise rewrite). Returns 0 or a negative errno.
    pub(crate) fn ioctl_user(&self, nr: u8, user: UserSlice) -> i32 {
        let Some(info) = protocol::ioctl_info(nr) else {
            return ENOTTY.to_errno();
        };
        let mut buf = [0u8; 256];
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
        if nr == protocol::nr::S_PARM {
            protocol::sanitize_s_parm(&mut buf[..size]);
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
/// Returns whether the device no longer has the session: it took the CLOSE, or it is gone.
fn send_close(media: &VirtioMedia, id: u32) -> bool {
    let res = media
        .request(protocol::CmdClose::SIZE, 0)
        .and_then(|mut req| {
            protocol::CmdClose::new(id)
                .encode(req.out_mut())
                .ok_or(EINVAL)?;
            let req = media.send(req)?;
            req.wait_release().map(|_| ())
        });
    match res {
        Ok(()) => true,
        Err(e) if e == ENODEV => true,
        Err(e) => {
            dev_warn_rl!(media.dev(), "CLOSE of session {} failed: {:?}", id, e);
            false
        }
    }
}

/// Copies a completed buffer into the caller's `v4l2_buffer` `b` and `n` planes of `planes`,
/// keeping the caller's `m.planes` pointer for multi-planar buffers.
fn copy_done(d: &DoneBuf, b: &mut [u8], planes: &mut [u8], n: usize) {
    let m = protocol::buf::M;
    let mut saved_m = [0u8; 8];
    saved_m.copy_from_slice(&b[m..m + 8]);
    b.copy_from_slice(&d.bytes[..protocol::buf::SIZE]);
    protocol::mask_buffer(b);
    if protocol::buf_type_is_multiplanar(d.info.buf_type) {
        b[m..m + 8].copy_from_slice(&saved_m);
        let len = n * protocol::plane::SIZE;
        planes[..len].copy_from_slice(&d.bytes[protocol::buf::SIZE..protocol::buf::SIZE + len]);
    }
}

/// [`MAX_PINNED_BUFS`] empty slots for a session's USERPTR buffers. Errors: `ENOMEM`.
fn pinned_slots() -> Result<KVec<Option<PinnedBuf>>> {
    let mut v = KVec::with_capacity(MAX_PINNED_BUFS, GFP_KERNEL)?;
    for _ in 0..MAX_PINNED_BUFS {
        v.push(None, GFP_KERNEL)?;
    }
    Ok(v)
}

/// Appends the SG entries of `pages` to `sg`. Errors: `EINVAL` beyond
/// [`protocol::MAX_SG_ENTRIES`] entries in all, `ENOMEM`.
fn append_sg(sg: &mut KVec<u8>, pages: &UserPages) -> Result {
    use protocol::Command;
    let segs = pages.segments()?;
    let size = protocol::SgEntry::SIZE;
    if sg.len() / size + segs.len() > protocol::MAX_SG_ENTRIES {
        return Err(EINVAL);
    }
    let mut e = [0u8; 16];
    for seg in segs.iter() {
        protocol::SgEntry::new(seg.start, seg.len)
            .encode(&mut e)
            .ok_or(EINVAL)?;
        sg.extend_from_slice(&e[..size], GFP_KERNEL)?;
    }
    Ok(())
}
