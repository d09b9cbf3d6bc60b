// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Fault injection: a hostile device for the driver's robustness tests (issue 4).
//!
//! `vmrs-device --profile capture-mplane --fault NAME` serves the honest device of the profile
//! and corrupts what it writes to the driver at the chain/event level, as one fault profile
//! chosen on the command line. Command faults hit one ioctl only ([`TARGET_IOCTL`],
//! `VIDIOC_G_FMT`), so a test can see that ioctl fail while the rest of the device works;
//! event faults add bogus events next to the real ones, so streaming can go on. Every fault
//! the device commits is logged at info level with the prefix `fault:` (RUN/vdm.log).
//!
//! Documentation/test-device.md has the table of faults and of what the driver must do.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use log::info;

/// `_IOC_NR(VIDIOC_G_FMT)`: the ioctl that command faults hit.
pub const TARGET_IOCTL: u32 = 4;
/// Session id no OPEN ever answered (events for it must be dropped as unknown).
pub const UNKNOWN_SESSION: u32 = 0xdead_beef;
/// Bogus events sent before every real DQBUF event by [`Fault::Flood`].
pub const FLOOD_PER_EVENT: usize = 1000;
/// The errno [`Fault::ErrorEvent`] reports (`EPROTO`, 71), distinct from anything else the
/// device answers, so the test can tell where the session's errno came from.
pub const ERROR_EVENT_ERRNO: i32 = 71;
/// [`Fault::ErrorEvent`] sends the ERROR event after this many DQBUF events of a session.
pub const ERROR_AFTER_FRAMES: u32 = 3;
/// `len` of the region the driver is told about (shm.rs `SHM_SIZE`, 4 GiB).
const SHM_SIZE: u64 = crate::shm::SHM_SIZE;

const EVT_ERROR: u32 = 0;
const EVT_DQBUF: u32 = 1;
/// Offsets in a DQBUF event: `v4l2_buffer` at 8, its planes at 8 + 88 (64 bytes each).
const BUF: usize = 8;
const PLANES: usize = BUF + 88;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// Target ioctl: the response is cut to 4 bytes (shorter than the 8-byte header).
    ShortHeader,
    /// Target ioctl: a success whose payload stops after 16 of its bytes.
    ShortPayload,
    /// Target ioctl: status `0xffffffea` (-EINVAL as a device might write it), not an errno.
    BadStatus,
    /// Target ioctl: a used length 64 bytes beyond the device-writable part of the chain.
    LongPayload,
    /// OPEN answers the id of a session that is still open.
    ReuseOpenId,
    /// Target ioctl: never answered (the chain is kept for good).
    Hang,
    /// Target ioctl, first time only: kept unanswered until the next command arrives, then
    /// answered (late, after the driver has timed out).
    Late,
    /// After [`ERROR_AFTER_FRAMES`] DQBUF events of the first streaming session: an ERROR
    /// event (`EPROTO`) for it.
    ErrorEvent,
    /// Before every DQBUF event: a copy with buffer index 1000.
    DqbufBadIndex,
    /// Before every DQBUF event: copies with buffer type 10 (OUTPUT_MPLANE, a queue without
    /// buffers) and 3 (VIDEO_OVERLAY, not a streaming type).
    DqbufBadType,
    /// Before every DQBUF event: a copy claiming 9 planes (> VIRTIO_MEDIA_MAX_PLANES).
    DqbufTooManyPlanes,
    /// Before every DQBUF event: a copy whose plane 0 has `bytesused = length + 1`.
    DqbufBadLength,
    /// Before every DQBUF event: a copy whose plane 0 says `length` = `bytesused` = 1 GiB
    /// (consistent in itself, but not the 460800-byte buffer QUERYBUF described).
    DqbufOversize,
    /// Before every DQBUF event: copies for every session closed so far and for
    /// [`UNKNOWN_SESSION`].
    ClosedSession,
    /// Before every DQBUF event: [`FLOOD_PER_EVENT`] DQBUF events for [`UNKNOWN_SESSION`].
    Flood,
    /// MMAP answers `driver_addr` = region size - 4096 (the buffer ends beyond the region).
    MmapOutside,
    /// MMAP answers, for every buffer, the address of the first buffer mapped.
    MmapOverlap,
    /// The device claims what the driver does not implement, and reports what reaches it of
    /// that: REQBUFS/CREATE_BUFS successes claim every `V4L2_BUF_CAP_*` bit ([`ALL_BUF_CAPS`]:
    /// DMABUF, requests, cache hints, REMOVE_BUFS, ...) and the cache-hint flag; QBUF,
    /// QUERYBUF and PREPARE_BUF answers and DQBUF events put their buffer in request
    /// [`CLAIMED_REQUEST_FD`] (`V4L2_BUF_FLAG_REQUEST_FD | V4L2_BUF_FLAG_IN_REQUEST`). Every
    /// command that reaches the device with a request (`V4L2_BUF_FLAG_REQUEST_FD`, a non-zero
    /// `request_fd`, `V4L2_CTRL_WHICH_REQUEST_VAL`) or an S_FBUF `base` address is logged
    /// (`fault: ... carried ...`); the device then handles it as usual.
    ClaimsUnsupported,
    /// MUNMAP never answered (the chain is kept for good): a stalled device, seen by a
    /// process that unmaps its buffers (under its `mmap_lock`).
    MunmapHang,
}

/// `V4L2_BUF_CAP_SUPPORTS_*` bits 0..8 (MMAP ... REMOVE_BUFS): what [`Fault::ClaimsUnsupported`]
/// claims in REQBUFS/CREATE_BUFS answers.
pub const ALL_BUF_CAPS: u32 = 0x1ff;
/// The request fd [`Fault::ClaimsUnsupported`] puts buffers in.
pub const CLAIMED_REQUEST_FD: u32 = 7;
/// `V4L2_BUF_FLAG_IN_REQUEST | V4L2_BUF_FLAG_REQUEST_FD`.
const BUF_FLAGS_REQUEST: u32 = 0x80 | 0x0080_0000;
/// `V4L2_CTRL_WHICH_REQUEST_VAL`.
const WHICH_REQUEST_VAL: u32 = 0x0f01_0000;

/// Every fault: name on the command line, value, one-line summary.
pub const FAULTS: &[(&str, Fault, &str)] = &[
    (
        "short-header",
        Fault::ShortHeader,
        "G_FMT response of 4 bytes",
    ),
    (
        "short-payload",
        Fault::ShortPayload,
        "G_FMT success with 16 payload bytes",
    ),
    (
        "bad-status",
        Fault::BadStatus,
        "G_FMT status 0xffffffea (not an errno)",
    ),
    (
        "long-payload",
        Fault::LongPayload,
        "G_FMT used length 64 bytes beyond the chain",
    ),
    (
        "reuse-open-id",
        Fault::ReuseOpenId,
        "OPEN answers an id still open",
    ),
    ("hang", Fault::Hang, "G_FMT never answered"),
    (
        "late",
        Fault::Late,
        "first G_FMT answered only when the next command comes",
    ),
    (
        "error-event",
        Fault::ErrorEvent,
        "ERROR event (EPROTO) after 3 frames",
    ),
    (
        "dqbuf-bad-index",
        Fault::DqbufBadIndex,
        "extra DQBUF events with index 1000",
    ),
    (
        "dqbuf-bad-type",
        Fault::DqbufBadType,
        "extra DQBUF events with type 10 and 3",
    ),
    (
        "dqbuf-too-many-planes",
        Fault::DqbufTooManyPlanes,
        "extra DQBUF events with 9 planes",
    ),
    (
        "dqbuf-bad-length",
        Fault::DqbufBadLength,
        "extra DQBUF events, bytesused > length",
    ),
    (
        "dqbuf-oversize",
        Fault::DqbufOversize,
        "extra DQBUF events, plane length 1 GiB",
    ),
    (
        "closed-session",
        Fault::ClosedSession,
        "extra DQBUF events for closed/unknown ids",
    ),
    (
        "flood",
        Fault::Flood,
        "1000 events for an unknown id before every DQBUF event",
    ),
    (
        "mmap-outside",
        Fault::MmapOutside,
        "MMAP answers an address at the region's end",
    ),
    (
        "mmap-overlap",
        Fault::MmapOverlap,
        "MMAP answers the first buffer's address for all",
    ),
    (
        "claims-unsupported",
        Fault::ClaimsUnsupported,
        "claims DMABUF/requests/REMOVE_BUFS, logs request fds and S_FBUF base it is sent",
    ),
    ("munmap-hang", Fault::MunmapHang, "MUNMAP never answered"),
];

static FAULT: OnceLock<Fault> = OnceLock::new();
static STATE: Mutex<State> = Mutex::new(State {
    open: BTreeSet::new(),
    closed: BTreeSet::new(),
    frames: 0,
    error_session: None,
    late_done: false,
    first_mmap: None,
    flood_sent: 0,
});

struct State {
    /// Sessions opened (as the device answered) and not closed.
    open: BTreeSet<u32>,
    /// Sessions closed.
    closed: BTreeSet<u32>,
    /// DQBUF events of `error_session` so far.
    frames: u32,
    /// The session [`Fault::ErrorEvent`] picked (the first with a DQBUF event).
    error_session: Option<u32>,
    /// [`Fault::Late`] held its command already.
    late_done: bool,
    /// [`Fault::MmapOverlap`]: the first MMAP answer's address.
    first_mmap: Option<u64>,
    /// [`Fault::Flood`]: bogus events queued so far.
    flood_sent: u64,
}

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Selects the fault by name (once, from the command line); `false` for an unknown name.
pub fn set(name: &str) -> bool {
    match FAULTS.iter().find(|(n, _, _)| *n == name) {
        Some((_, f, _)) => {
            let _ = FAULT.set(*f);
            true
        }
        None => false,
    }
}

fn active() -> Option<Fault> {
    FAULT.get().copied()
}

fn word(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

fn put(b: &mut [u8], off: usize, v: u32) {
    if let Some(w) = b.get_mut(off..off + 4) {
        w.copy_from_slice(&v.to_le_bytes());
    }
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    if let Some(w) = b.get_mut(off..off + 8) {
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// What the command path does with a response after [`on_response`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Write the (possibly altered) response; report `extra` bytes more than the
    /// device-writable part of the chain as used length if `extra > 0`.
    Answer { extra: u32 },
    /// Do not answer now; `release`: answer when the next command arrives, else never.
    Hold { release: bool },
}

/// Applies the active fault to the response `resp` of command `cmd` (the device-readable
/// bytes of the chain).
pub fn on_response(cmd: &[u8], resp: &mut Vec<u8>) -> Verdict {
    let answer = Verdict::Answer { extra: 0 };
    let Some(fault) = active() else {
        return answer;
    };
    let ok = word(resp, 0) == Some(0);
    match (word(cmd, 0), fault) {
        (Some(1), _) if ok => {
            let Some(id) = word(resp, 8) else {
                return answer;
            };
            let mut st = state();
            if fault == Fault::ReuseOpenId {
                if let Some(&old) = st.open.iter().next() {
                    info!("fault: OPEN of session {id} answered with open session {old}");
                    put(resp, 8, old);
                    return answer;
                }
            }
            st.open.insert(id);
            info!("fault: OPEN -> session {id}");
        }
        (Some(2), _) => {
            let id = word(cmd, 8).unwrap_or(u32::MAX);
            let mut st = state();
            st.open.remove(&id);
            st.closed.insert(id);
            info!("fault: CLOSE session {id}");
        }
        (Some(3), _) if word(cmd, 12) == Some(TARGET_IOCTL) => {
            let s = word(cmd, 8).unwrap_or(u32::MAX);
            match fault {
                Fault::ShortHeader => {
                    resp.truncate(4);
                    info!("fault: session {s} G_FMT response cut to 4 bytes");
                }
                Fault::ShortPayload if ok => {
                    resp.truncate(8 + 16);
                    info!("fault: session {s} G_FMT response cut to 24 bytes");
                }
                Fault::BadStatus => {
                    put(resp, 0, (-libc::EINVAL) as u32);
                    info!("fault: session {s} G_FMT status 0xffffffea");
                }
                Fault::LongPayload => {
                    info!("fault: session {s} G_FMT used length 64 bytes beyond the chain");
                    return Verdict::Answer { extra: 64 };
                }
                Fault::Hang => {
                    info!("fault: session {s} G_FMT held, never answered");
                    return Verdict::Hold { release: false };
                }
                Fault::Late => {
                    let mut st = state();
                    if !st.late_done {
                        st.late_done = true;
                        info!("fault: session {s} G_FMT held until the next command");
                        return Verdict::Hold { release: true };
                    }
                }
                _ => {}
            }
        }
        (Some(3), Fault::ClaimsUnsupported) => claims_unsupported(cmd, resp, ok),
        (Some(5), Fault::MunmapHang) => {
            info!(
                "fault: MUNMAP of {:#x} held, never answered",
                read64(cmd, 8)
            );
            return Verdict::Hold { release: false };
        }
        (Some(4), Fault::MmapOutside) if ok => {
            let addr = SHM_SIZE - 4096;
            info!(
                "fault: MMAP answered at {addr:#x} instead of {:#x}",
                read64(resp, 8)
            );
            put64(resp, 8, addr);
        }
        (Some(4), Fault::MmapOverlap) if ok => {
            let real = read64(resp, 8);
            let mut st = state();
            let first = *st.first_mmap.get_or_insert(real);
            if first != real {
                info!("fault: MMAP answered at {first:#x} (another buffer's) instead of {real:#x}");
                put64(resp, 8, first);
            }
        }
        _ => {}
    }
    answer
}

/// [`Fault::ClaimsUnsupported`] for an IOCTL command `cmd` (header 16 bytes, then the
/// payload) and its response `resp` (header 8 bytes, then the payload), `ok` if a success.
fn claims_unsupported(cmd: &[u8], resp: &mut [u8], ok: bool) {
    const P: usize = 16;
    const R: usize = 8;
    let s = word(cmd, 8).unwrap_or(u32::MAX);
    let code = word(cmd, 12).unwrap_or(u32::MAX);
    match code {
        // QUERYBUF, QBUF, PREPARE_BUF: v4l2_buffer flags @12, request_fd @80.
        9 | 15 | 93 => {
            let flags = word(cmd, P + 12).unwrap_or(0);
            let fd = word(cmd, P + 80).unwrap_or(0);
            if flags & 0x0080_0000 != 0 || fd != 0 {
                info!("fault: session {s} ioctl {code} carried request_fd {fd} (flags {flags:#x})");
            }
            if ok {
                let f = word(resp, R + 12).unwrap_or(0);
                put(resp, R + 12, f | BUF_FLAGS_REQUEST);
                put(resp, R + 80, CLAIMED_REQUEST_FD);
            }
        }
        // G/S/TRY_EXT_CTRLS: v4l2_ext_controls which @0, request_fd @12.
        71..=73 => {
            let which = word(cmd, P).unwrap_or(0);
            let fd = word(cmd, P + 12).unwrap_or(0);
            if which == WHICH_REQUEST_VAL || fd != 0 {
                info!("fault: session {s} ioctl {code} carried request_fd {fd} (which {which:#x})");
            }
        }
        // S_FBUF: v4l2_framebuffer base @8.
        11 => {
            let base = read64(cmd, P + 8);
            if base != 0 {
                info!("fault: session {s} S_FBUF carried base {base:#x}");
            }
        }
        // REQBUFS: capabilities @12, flags (u8) @16; CREATE_BUFS: @224, @228.
        8 | 92 if ok => {
            let (caps, flags) = if code == 8 { (12, 16) } else { (224, 228) };
            put(resp, R + caps, ALL_BUF_CAPS);
            if let Some(f) = resp.get_mut(R + flags) {
                *f = 1;
            }
            info!("fault: session {s} ioctl {code} claims capabilities {ALL_BUF_CAPS:#x}");
        }
        _ => {}
    }
}

fn read64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

/// Applies the active fault to an event the device is about to send; returns the events to
/// send instead, in order (the real one included unless the fault replaces it).
pub fn on_event(ev: Vec<u8>) -> Vec<Vec<u8>> {
    let Some(fault) = active() else {
        return vec![ev];
    };
    if word(&ev, 0) != Some(EVT_DQBUF) {
        return vec![ev];
    }
    let session = word(&ev, 4).unwrap_or(0);
    if fault == Fault::ClaimsUnsupported {
        let mut ev = ev;
        let f = word(&ev, BUF + 12).unwrap_or(0);
        put(&mut ev, BUF + 12, f | BUF_FLAGS_REQUEST);
        put(&mut ev, BUF + 80, CLAIMED_REQUEST_FD);
        info!("fault: session {session}'s DQBUF event in request {CLAIMED_REQUEST_FD}");
        return vec![ev];
    }
    let variant = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut c = ev.clone();
        f(&mut c);
        c
    };
    let mut out = Vec::new();
    match fault {
        Fault::ErrorEvent => {
            let mut st = state();
            let target = *st.error_session.get_or_insert(session);
            if target == session {
                st.frames += 1;
                if st.frames == ERROR_AFTER_FRAMES {
                    info!("fault: ERROR event ({ERROR_EVENT_ERRNO}) for session {session}");
                    let mut e = Vec::with_capacity(16);
                    e.extend_from_slice(&EVT_ERROR.to_le_bytes());
                    e.extend_from_slice(&session.to_le_bytes());
                    e.extend_from_slice(&ERROR_EVENT_ERRNO.to_le_bytes());
                    e.extend_from_slice(&0u32.to_le_bytes());
                    return vec![ev, e];
                }
            }
        }
        Fault::DqbufBadIndex => out.push(variant(&|c| put(c, BUF, 1000))),
        Fault::DqbufBadType => {
            out.push(variant(&|c| put(c, BUF + 4, 10)));
            out.push(variant(&|c| put(c, BUF + 4, 3)));
        }
        Fault::DqbufTooManyPlanes => out.push(variant(&|c| put(c, BUF + 72, 9))),
        Fault::DqbufBadLength => out.push(variant(&|c| {
            let len = word(c, PLANES + 4).unwrap_or(0);
            put(c, PLANES, len.wrapping_add(1));
        })),
        Fault::DqbufOversize => out.push(variant(&|c| {
            put(c, PLANES, 1 << 30);
            put(c, PLANES + 4, 1 << 30);
        })),
        Fault::ClosedSession => {
            let closed: Vec<u32> = state().closed.iter().copied().take(4).collect();
            for id in closed.into_iter().chain([UNKNOWN_SESSION]) {
                out.push(variant(&|c| put(c, 4, id)));
            }
        }
        Fault::Flood => {
            let bogus = variant(&|c| put(c, 4, UNKNOWN_SESSION));
            out.extend(std::iter::repeat_n(bogus, FLOOD_PER_EVENT));
            let mut st = state();
            st.flood_sent += FLOOD_PER_EVENT as u64;
            info!("fault: flood, {} bogus events queued so far", st.flood_sent);
        }
        _ => {}
    }
    if !out.is_empty() {
        info!(
            "fault: {} bogus event(s) before session {session}'s DQBUF",
            out.len()
        );
    }
    out.push(ev);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, (n, _, _)) in FAULTS.iter().enumerate() {
            assert!(FAULTS[i + 1..].iter().all(|(m, _, _)| m != n), "{n}");
        }
    }
}
