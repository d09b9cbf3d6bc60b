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
    fn wait(&self) -> Result<(&[u8], usize)> {
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
    fn send(&self, out: DmaBuf, resp_len: usize) -> Result<Arc<Request>> {
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
    fn bad_response(&self, what: &str, e: protocol::ProtoError) -> Error {
        dev_warn_rl!(self.dev(), "malformed {} response: {:?}", what, e);
        EIO
    }
}

/// `ETIMEDOUT` (110, include/uapi/asm-generic/errno.h), absent from 6.12's `kernel::error::code`.
fn etimedout() -> Error {
    Error::from_errno(-110)
}

/// Maps a positive device errno to an [`Error`] (non-errno values were rejected already).
fn device_error(errno: u32) -> Error {
    Error::from_errno(-(protocol::device_errno(errno) as i32))
}

/// Per-session state that changes after open.
struct SessionState {
    /// Set by an ERROR event or device removal: the errno every later command gets.
    failed: Option<Error>,
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
    pub(crate) fn media(&self) -> &VirtioMedia {
        &self.media
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
                state <- new_irq_spinlock!(SessionState { failed: None }, "virtio_media:session"),
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

    /// Closes the session (`VIRTIO_MEDIA_CMD_CLOSE`, sent once) and stops routing events to it.
    pub(crate) fn close(&self) {
        let removed = self.media.sessions.lock().remove(&self.id);
        drop(removed);
        send_close(&self.media, self.id);
    }

    /// Marks the session failed with `errno`: later commands return it.
    fn fail(&self, err: Error) {
        let mut s = self.state.lock();
        if s.failed.is_none() {
            s.failed = Some(err);
        }
    }

    /// The device was removed: later commands fail with `ENODEV`.
    pub(crate) fn device_gone(&self) {
        self.fail(ENODEV);
    }

    fn check_usable(&self) -> Result {
        match self.state.lock().failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Handles an event routed to this session (bottom-half context). `buf` holds the
    /// event's bytes as validated by [`protocol::parse_event`].
    pub(crate) fn handle_event(&self, ev: protocol::Event, _buf: &[u8]) {
        match ev {
            protocol::Event::Error { errno, .. } => {
                dev_warn_rl!(
                    self.media.dev(),
                    "device reported error {} on session {}",
                    errno,
                    self.id
                );
                self.fail(device_error(errno));
            }
            // Buffers and V4L2 events need streaming support, which this driver does not
            // announce yet (no REQBUFS/SUBSCRIBE_EVENT ops): a device sending them misbehaves.
            other => {
                dev_warn_rl!(
                    self.media.dev(),
                    "unexpected event on session {}: {:?}",
                    self.id,
                    other
                );
            }
        }
    }

    /// Sends ioctl `nr` whose payload is the concatenation of `parts` (the main struct, then
    /// any array the protocol appends), and writes the device's payload back into `parts`.
    ///
    /// Errors: `ENOTTY` for an ioctl the protocol does not carry, `EINVAL` if the parts'
    /// total size does not fit, the device's errno, `EIO` for a malformed response, and those
    /// of [`VirtioMedia::send`].
    pub(crate) fn ioctl(&self, nr: u8, parts: &mut [&mut [u8]]) -> Result {
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
        let payload_len = if info.dir.from_device() { total } else { 0 };
        let outcome = protocol::check_ioctl_resp(resp, used, layout.writable, payload_len)
            .map_err(|e| self.media.bad_response("ioctl", e))?;
        let copy_back = match outcome {
            IoctlOutcome::Ok => payload_len > 0,
            IoctlOutcome::Err {
                payload_written, ..
            } => payload_written,
        };
        if copy_back {
            let mut off = core::mem::size_of::<protocol::RespIoctl>();
            for p in parts.iter_mut() {
                let n = p.len();
                p.copy_from_slice(&resp[off..off + n]);
                off += n;
            }
        }
        if outcome == IoctlOutcome::Ok {
            if let Some(main) = parts.first_mut() {
                if protocol::sanitize_response(nr, main) {
                    dev_warn_rl!(self.media.dev(), "repaired ioctl {} payload", nr);
                }
            }
        }
        match outcome {
            IoctlOutcome::Ok => Ok(()),
            IoctlOutcome::Err { errno, .. } => Err(device_error(errno)),
        }
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
