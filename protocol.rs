// SPDX-License-Identifier: GPL-2.0

//! The virtio-media wire protocol.
//!
//! Layouts, constants and descriptor-chain rules of the virtio-media device type (VIRTIO 1.4,
//! `device-types/media/description.tex`; the C header is `driver/protocol.h` of
//! chromeos/virtio-media v0.0.8). Every structure on the wire is little-endian with natural
//! alignment and no padding. V4L2 payloads travel in their 64-bit layout
//! (`include/uapi/linux/videodev2.h`), which is the kernel's own layout on the 64-bit
//! little-endian targets this driver builds for.
//!
//! This module is pure `core` Rust with no kernel dependency so that it can be unit-tested on
//! the host with `cargo test` (see `tests/protocol/`). It never trusts its input: every parser
//! takes the bytes the device wrote together with the length the device claims, and returns a
//! [`ProtoError`] for anything short, oversized or out of range.

use core::mem::{offset_of, size_of};

#[cfg(not(all(target_endian = "little", target_pointer_width = "64")))]
compile_error!("virtio-media payloads use the 64-bit little-endian V4L2 layouts");

/// Virtio device ID of virtio-media (`VIRTIO_ID_MEDIA`).
pub const VIRTIO_ID_MEDIA: u32 = 48;

/// Index of the command queue (driver-initiated commands, device writes the response).
pub const COMMANDQ: usize = 0;
/// Index of the event queue (device-initiated events into buffers the driver pre-posts).
pub const EVENTQ: usize = 1;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 2;

/// Command: open a session. Spec: "VIRTIO_MEDIA_CMD_OPEN".
pub const CMD_OPEN: u32 = 1;
/// Command: close a session.
pub const CMD_CLOSE: u32 = 2;
/// Command: perform a V4L2 ioctl in a session.
pub const CMD_IOCTL: u32 = 3;
/// Command: map an MMAP buffer into shared memory region 0.
pub const CMD_MMAP: u32 = 4;
/// Command: unmap a previous [`CMD_MMAP`] mapping.
pub const CMD_MUNMAP: u32 = 5;

/// `flags` bit of [`CmdMmap`]: map read-write (otherwise read-only).
pub const MMAP_FLAG_RW: u32 = 1 << 0;

/// Event: unrecoverable error in a session.
pub const EVT_ERROR: u32 = 0;
/// Event: a buffer is done (implicit `VIDIOC_DQBUF`).
pub const EVT_DQBUF: u32 = 1;
/// Event: a V4L2 event (implicit `VIDIOC_DQEVENT`).
pub const EVT_EVENT: u32 = 2;

/// Maximum number of planes in a DQBUF event (`VIRTIO_MEDIA_MAX_PLANES`, = `VIDEO_MAX_PLANES`).
pub const MAX_PLANES: usize = 8;

/// Shared memory region used for MMAP buffers.
pub const SHM_REGION_MMAP: u8 = 0;

/// Largest errno a device may return in a status field (`EHWPOISON`, the last user-visible
/// errno of `include/uapi/asm-generic/errno.h`). Kernel-internal codes (`ERESTARTSYS` = 512 and
/// up) must never reach user space, so they count as malformed.
pub const MAX_DEVICE_ERRNO: u32 = 133;

// Sizes of the V4L2 structures embedded in events (64-bit layout, videodev2.h).
/// `sizeof(struct v4l2_buffer)`.
pub const V4L2_BUFFER_SIZE: usize = 88;
/// `sizeof(struct v4l2_plane)`.
pub const V4L2_PLANE_SIZE: usize = 64;
/// `sizeof(struct v4l2_event)`.
pub const V4L2_EVENT_SIZE: usize = 136;
/// `sizeof(struct v4l2_ext_control)` (packed).
pub const V4L2_EXT_CONTROL_SIZE: usize = 20;
/// `sizeof(struct v4l2_ext_controls)`.
pub const V4L2_EXT_CONTROLS_SIZE: usize = 32;

/// A little-endian `u32` as stored on the wire.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Le32(u32);

impl Le32 {
    /// Wraps a CPU-order value.
    pub const fn new(v: u32) -> Self {
        Self(v.to_le())
    }
    /// The CPU-order value.
    pub const fn get(self) -> u32 {
        u32::from_le(self.0)
    }
}

/// A little-endian `u64` as stored on the wire.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Le64(u64);

impl Le64 {
    /// Wraps a CPU-order value.
    pub const fn new(v: u64) -> Self {
        Self(v.to_le())
    }
    /// The CPU-order value.
    pub const fn get(self) -> u64 {
        u64::from_le(self.0)
    }
}

/// Reads a little-endian `u32` at `off`, or `None` if `buf` is too short.
pub fn get_u32(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian `u64` at `off`, or `None` if `buf` is too short.
pub fn get_u64(buf: &[u8], off: usize) -> Option<u64> {
    let lo = get_u32(buf, off)?;
    let hi = get_u32(buf, off.checked_add(4)?)?;
    Some(u64::from(lo) | (u64::from(hi) << 32))
}

/// Writes `v` little-endian at `off`. Returns `None` if `buf` is too short.
pub fn put_u32(buf: &mut [u8], off: usize, v: u32) -> Option<()> {
    buf.get_mut(off..off.checked_add(4)?)?
        .copy_from_slice(&v.to_le_bytes());
    Some(())
}

/// Writes `v` little-endian at `off`. Returns `None` if `buf` is too short.
pub fn put_u64(buf: &mut [u8], off: usize, v: u64) -> Option<()> {
    buf.get_mut(off..off.checked_add(8)?)?
        .copy_from_slice(&v.to_le_bytes());
    Some(())
}

/// Structures that are sent to the device as they are.
pub trait Command: Sized {
    /// Size on the wire in bytes.
    const SIZE: usize;
    /// Serialises into the first [`Self::SIZE`] bytes of `out`; `None` if `out` is too short.
    fn encode(&self, out: &mut [u8]) -> Option<()>;
}

/// `struct virtio_media_cmd_header` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdHeader {
    /// One of the `CMD_*` constants.
    pub cmd: Le32,
    /// Must be zero.
    pub reserved: Le32,
}

/// `struct virtio_media_resp_header` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RespHeader {
    /// 0, or a positive errno.
    pub status: Le32,
    /// Written as zero by the device; ignored.
    pub reserved: Le32,
}

/// `struct virtio_media_cmd_open` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdOpen {
    /// `cmd` = [`CMD_OPEN`].
    pub hdr: CmdHeader,
}

/// `struct virtio_media_resp_open` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RespOpen {
    /// Status of the command.
    pub hdr: RespHeader,
    /// Id of the new session, valid if `hdr.status == 0`.
    pub session_id: Le32,
    /// Ignored.
    pub reserved: Le32,
}

/// `struct virtio_media_cmd_close` (16 bytes). The device writes no response.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdClose {
    /// `cmd` = [`CMD_CLOSE`].
    pub hdr: CmdHeader,
    /// Session to close.
    pub session_id: Le32,
    /// Must be zero.
    pub reserved: Le32,
}

/// `struct virtio_media_cmd_ioctl` (16 bytes), followed by the payload for `_IOW`/`_IOWR`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdIoctl {
    /// `cmd` = [`CMD_IOCTL`].
    pub hdr: CmdHeader,
    /// Session the ioctl applies to.
    pub session_id: Le32,
    /// `_IOC_NR()` of the `VIDIOC_*` code.
    pub code: Le32,
}

/// `struct virtio_media_resp_ioctl` (8 bytes), followed by the payload for `_IOR`/`_IOWR`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RespIoctl {
    /// Status of the ioctl.
    pub hdr: RespHeader,
}

/// `struct virtio_media_sg_entry` (16 bytes): guest memory for USERPTR and ext-control `ptr`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct SgEntry {
    /// Guest-physical start address.
    pub start: Le64,
    /// Length in bytes.
    pub len: Le32,
    /// Must be zero.
    pub reserved: Le32,
}

/// `struct virtio_media_cmd_mmap` (20 bytes, no tail padding).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdMmap {
    /// `cmd` = [`CMD_MMAP`].
    pub hdr: CmdHeader,
    /// Session owning the buffer.
    pub session_id: Le32,
    /// [`MMAP_FLAG_RW`] or 0.
    pub flags: Le32,
    /// `mem_offset` of the plane, as QUERYBUF returned it.
    pub offset: Le32,
}

/// `struct virtio_media_resp_mmap` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RespMmap {
    /// Status.
    pub hdr: RespHeader,
    /// Offset of the mapping in shared memory region 0.
    pub driver_addr: Le64,
    /// Length of the mapping (the buffer's length).
    pub len: Le64,
}

/// `struct virtio_media_cmd_munmap` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CmdMunmap {
    /// `cmd` = [`CMD_MUNMAP`].
    pub hdr: CmdHeader,
    /// SHM offset returned by [`CMD_MMAP`].
    pub driver_addr: Le64,
}

/// `struct virtio_media_resp_munmap` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RespMunmap {
    /// Status.
    pub hdr: RespHeader,
}

/// `struct virtio_media_event_header` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct EventHeader {
    /// One of the `EVT_*` constants.
    pub event: Le32,
    /// Session the event is for.
    pub session_id: Le32,
}

/// `struct virtio_media_event_error` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct EventError {
    /// `event` = [`EVT_ERROR`].
    pub hdr: EventHeader,
    /// Positive errno.
    pub errno: Le32,
    /// Ignored.
    pub reserved: Le32,
}

/// Size of `struct virtio_media_event_dqbuf`: header, `v4l2_buffer`, 8 `v4l2_plane`s (608).
pub const EVENT_DQBUF_SIZE: usize = 8 + V4L2_BUFFER_SIZE + MAX_PLANES * V4L2_PLANE_SIZE;
/// Size of `struct virtio_media_event_event`: header and `v4l2_event` (144).
pub const EVENT_EVENT_SIZE: usize = 8 + V4L2_EVENT_SIZE;
/// Size of the largest event, and of each eventq buffer (`VIRTIO_MEDIA_EVENT_MAX_SIZE`).
pub const EVENT_MAX_SIZE: usize = EVENT_DQBUF_SIZE;

/// `struct virtio_media_config` (40 bytes): offsets into the device configuration space.
pub mod config {
    /// `le32 device_caps`: `v4l2_capability.device_caps`.
    pub const DEVICE_CAPS: u32 = 0;
    /// `le32 device_type`: `enum vfl_devnode_type`.
    pub const DEVICE_TYPE: u32 = 4;
    /// `u8 card[32]`: `v4l2_capability.card`, NUL-terminated.
    pub const CARD: u32 = 8;
    /// Length of `card`.
    pub const CARD_LEN: usize = 32;
    /// Size of the configuration space.
    pub const SIZE: usize = 40;
}

// Compile-time checks of every layout against the spec's table.
macro_rules! assert_layout {
    ($t:ty, $size:expr $(, $field:ident @ $off:expr)*) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $(const _: () = assert!(offset_of!($t, $field) == $off);)*
    };
}
assert_layout!(Le32, 4);
assert_layout!(Le64, 8);
assert_layout!(CmdHeader, 8, cmd @ 0, reserved @ 4);
assert_layout!(RespHeader, 8, status @ 0, reserved @ 4);
assert_layout!(CmdOpen, 8, hdr @ 0);
assert_layout!(RespOpen, 16, hdr @ 0, session_id @ 8, reserved @ 12);
assert_layout!(CmdClose, 16, hdr @ 0, session_id @ 8, reserved @ 12);
assert_layout!(CmdIoctl, 16, hdr @ 0, session_id @ 8, code @ 12);
assert_layout!(RespIoctl, 8, hdr @ 0);
assert_layout!(SgEntry, 16, start @ 0, len @ 8, reserved @ 12);
assert_layout!(CmdMmap, 20, hdr @ 0, session_id @ 8, flags @ 12, offset @ 16);
assert_layout!(RespMmap, 24, hdr @ 0, driver_addr @ 8, len @ 16);
assert_layout!(CmdMunmap, 16, hdr @ 0, driver_addr @ 8);
assert_layout!(RespMunmap, 8, hdr @ 0);
assert_layout!(EventHeader, 8, event @ 0, session_id @ 4);
assert_layout!(EventError, 16, hdr @ 0, errno @ 8, reserved @ 12);
const _: () = assert!(EVENT_DQBUF_SIZE == 608);
const _: () = assert!(EVENT_EVENT_SIZE == 144);

macro_rules! impl_command {
    ($t:ty { $($field:ident : $kind:ident),* }) => {
        impl Command for $t {
            const SIZE: usize = size_of::<$t>();
            fn encode(&self, out: &mut [u8]) -> Option<()> {
                let out = out.get_mut(..Self::SIZE)?;
                $(impl_command!(@put $kind, out, offset_of!($t, $field), self.$field);)*
                Some(())
            }
        }
    };
    (@put hdr, $out:ident, $off:expr, $v:expr) => {{
        put_u32($out, $off, $v.cmd.get())?;
        put_u32($out, $off + 4, $v.reserved.get())?;
    }};
    (@put u32, $out:ident, $off:expr, $v:expr) => { put_u32($out, $off, $v.get())? };
    (@put u64, $out:ident, $off:expr, $v:expr) => { put_u64($out, $off, $v.get())? };
}
impl_command!(CmdOpen { hdr: hdr });
impl_command!(CmdClose {
    hdr: hdr,
    session_id: u32,
    reserved: u32
});
impl_command!(CmdIoctl {
    hdr: hdr,
    session_id: u32,
    code: u32
});
impl_command!(CmdMmap {
    hdr: hdr,
    session_id: u32,
    flags: u32,
    offset: u32
});
impl_command!(CmdMunmap {
    hdr: hdr,
    driver_addr: u64
});
impl_command!(SgEntry {
    start: u64,
    len: u32,
    reserved: u32
});

impl SgEntry {
    /// An entry for `len` bytes of guest memory at guest-physical address `start`.
    pub const fn new(start: u64, len: u32) -> Self {
        Self {
            start: Le64::new(start),
            len: Le32::new(len),
            reserved: Le32::new(0),
        }
    }
}

impl CmdHeader {
    /// A header for command `cmd`.
    pub const fn new(cmd: u32) -> Self {
        Self {
            cmd: Le32::new(cmd),
            reserved: Le32::new(0),
        }
    }
}

impl CmdOpen {
    /// `VIRTIO_MEDIA_CMD_OPEN`.
    pub const fn new() -> Self {
        Self {
            hdr: CmdHeader::new(CMD_OPEN),
        }
    }
}

impl CmdClose {
    /// `VIRTIO_MEDIA_CMD_CLOSE` for `session_id`.
    pub const fn new(session_id: u32) -> Self {
        Self {
            hdr: CmdHeader::new(CMD_CLOSE),
            session_id: Le32::new(session_id),
            reserved: Le32::new(0),
        }
    }
}

impl CmdIoctl {
    /// `VIRTIO_MEDIA_CMD_IOCTL` of ioctl number `code` (`_IOC_NR`) in `session_id`.
    pub const fn new(session_id: u32, code: u32) -> Self {
        Self {
            hdr: CmdHeader::new(CMD_IOCTL),
            session_id: Le32::new(session_id),
            code: Le32::new(code),
        }
    }
}

/// Why something the device wrote was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProtoError {
    /// Fewer bytes than the fixed part of the structure (used length, needed length).
    Short(usize, usize),
    /// The device claims to have written more than the buffer it was given (used, available).
    Overflow(usize, usize),
    /// A status that is neither 0 nor a user-visible errno.
    BadStatus(u32),
    /// An event type this driver does not know.
    UnknownEvent(u32),
    /// A DQBUF event whose plane count exceeds [`MAX_PLANES`].
    TooManyPlanes(u32),
}

/// Checks the response header of any command.
///
/// `used` is the used length the device reported for the chain, `avail` the size of the
/// device-writable part the driver posted, `resp` that part. Returns the device's status:
/// `Ok(0)` on success, `Ok(errno)` (positive, `1..=`[`MAX_DEVICE_ERRNO`]) on a device error.
pub fn check_resp_header(resp: &[u8], used: usize, avail: usize) -> Result<u32, ProtoError> {
    if used > avail || used > resp.len() {
        return Err(ProtoError::Overflow(used, avail.min(resp.len())));
    }
    if used < size_of::<RespHeader>() {
        return Err(ProtoError::Short(used, size_of::<RespHeader>()));
    }
    let status = get_u32(resp, 0).ok_or(ProtoError::Short(used, 4))?;
    if status > MAX_DEVICE_ERRNO {
        return Err(ProtoError::BadStatus(status));
    }
    Ok(status)
}

/// Outcome of a well-formed ioctl response.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IoctlOutcome {
    /// Success; the payload after the response header is valid (if the ioctl has one).
    Ok,
    /// The device failed the ioctl with this positive errno. `payload_written` tells whether
    /// the device also wrote the whole payload (which the driver must then return to the
    /// caller, e.g. `error_idx` of `G_EXT_CTRLS`), else it is unchanged.
    Err {
        /// Positive errno.
        errno: u32,
        /// Whether the response payload was written in full.
        payload_written: bool,
    },
}

/// Validates an ioctl response of `used` bytes in a device-writable area of `avail` bytes,
/// where a successful response must carry `payload_len` bytes after the 8-byte header.
pub fn check_ioctl_resp(
    resp: &[u8],
    used: usize,
    avail: usize,
    payload_len: usize,
) -> Result<IoctlOutcome, ProtoError> {
    check_ioctl_resp_min(resp, used, avail, payload_len, payload_len).map(|(o, _)| o)
}

/// Like [`check_ioctl_resp`], for payloads whose tail is optional: a success must carry at
/// least `required` of the `payload_len` payload bytes (e.g. a `v4l2_buffer` whose appended
/// planes the device writes only as far as it has planes). Also returns how many payload
/// bytes the device wrote (at most `payload_len`).
pub fn check_ioctl_resp_min(
    resp: &[u8],
    used: usize,
    avail: usize,
    payload_len: usize,
    required: usize,
) -> Result<(IoctlOutcome, usize), ProtoError> {
    let status = check_resp_header(resp, used, avail)?;
    let hdr = size_of::<RespIoctl>();
    let written = (used - hdr).min(payload_len);
    if status == 0 {
        if used < hdr + required {
            return Err(ProtoError::Short(used, hdr + required));
        }
        Ok((IoctlOutcome::Ok, written))
    } else {
        let full = payload_len > 0 && written == payload_len;
        Ok((
            IoctlOutcome::Err {
                errno: status,
                payload_written: full,
            },
            if full { written } else { 0 },
        ))
    }
}

/// Validates the response to [`CMD_OPEN`]: `Ok(Ok(session_id))` or `Ok(Err(errno))`.
pub fn check_open_resp(
    resp: &[u8],
    used: usize,
    avail: usize,
) -> Result<Result<u32, u32>, ProtoError> {
    let status = check_resp_header(resp, used, avail)?;
    if status != 0 {
        return Ok(Err(status));
    }
    if used < size_of::<RespOpen>() {
        return Err(ProtoError::Short(used, size_of::<RespOpen>()));
    }
    let id = get_u32(resp, offset_of!(RespOpen, session_id))
        .ok_or(ProtoError::Short(used, size_of::<RespOpen>()))?;
    Ok(Ok(id))
}

/// Direction of an ioctl's payload, from the `_IOC_DIR` bits of its code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// `_IO`: no payload.
    None,
    /// `_IOR`: payload only in the device-writable part.
    Read,
    /// `_IOW`: payload only in the device-readable part.
    Write,
    /// `_IOWR`: payload in both parts.
    ReadWrite,
}

impl Dir {
    /// Whether the driver sends the payload to the device.
    pub const fn to_device(self) -> bool {
        matches!(self, Dir::Write | Dir::ReadWrite)
    }
    /// Whether the device returns the payload.
    pub const fn from_device(self) -> bool {
        matches!(self, Dir::Read | Dir::ReadWrite)
    }
}

/// An ioctl the protocol forwards: number, direction and payload size (64-bit layout).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IoctlInfo {
    /// `_IOC_NR` of the `VIDIOC_*` code, sent as [`CmdIoctl::code`].
    pub nr: u8,
    /// Payload direction.
    pub dir: Dir,
    /// Payload size in bytes (`_IOC_SIZE`).
    pub size: u16,
}

/// `_IOC_NR` values of the V4L2 ioctls the driver forwards or handles (videodev2.h).
#[allow(missing_docs)]
pub mod nr {
    pub const QUERYCAP: u8 = 0;
    pub const ENUM_FMT: u8 = 2;
    pub const G_FMT: u8 = 4;
    pub const S_FMT: u8 = 5;
    pub const REQBUFS: u8 = 8;
    pub const QUERYBUF: u8 = 9;
    pub const G_FBUF: u8 = 10;
    pub const S_FBUF: u8 = 11;
    pub const OVERLAY: u8 = 14;
    pub const QBUF: u8 = 15;
    pub const EXPBUF: u8 = 16;
    pub const DQBUF: u8 = 17;
    pub const STREAMON: u8 = 18;
    pub const STREAMOFF: u8 = 19;
    pub const G_PARM: u8 = 21;
    pub const S_PARM: u8 = 22;
    pub const G_STD: u8 = 23;
    pub const S_STD: u8 = 24;
    pub const ENUMSTD: u8 = 25;
    pub const ENUMINPUT: u8 = 26;
    pub const G_CTRL: u8 = 27;
    pub const S_CTRL: u8 = 28;
    pub const G_TUNER: u8 = 29;
    pub const S_TUNER: u8 = 30;
    pub const G_AUDIO: u8 = 33;
    pub const S_AUDIO: u8 = 34;
    pub const QUERYCTRL: u8 = 36;
    pub const QUERYMENU: u8 = 37;
    pub const G_INPUT: u8 = 38;
    pub const S_INPUT: u8 = 39;
    pub const G_EDID: u8 = 40;
    pub const S_EDID: u8 = 41;
    pub const G_OUTPUT: u8 = 46;
    pub const S_OUTPUT: u8 = 47;
    pub const ENUMOUTPUT: u8 = 48;
    pub const G_AUDOUT: u8 = 49;
    pub const S_AUDOUT: u8 = 50;
    pub const G_MODULATOR: u8 = 54;
    pub const S_MODULATOR: u8 = 55;
    pub const G_FREQUENCY: u8 = 56;
    pub const S_FREQUENCY: u8 = 57;
    pub const CROPCAP: u8 = 58;
    pub const G_CROP: u8 = 59;
    pub const S_CROP: u8 = 60;
    pub const G_JPEGCOMP: u8 = 61;
    pub const S_JPEGCOMP: u8 = 62;
    pub const QUERYSTD: u8 = 63;
    pub const TRY_FMT: u8 = 64;
    pub const ENUMAUDIO: u8 = 65;
    pub const ENUMAUDOUT: u8 = 66;
    pub const G_PRIORITY: u8 = 67;
    pub const S_PRIORITY: u8 = 68;
    pub const G_SLICED_VBI_CAP: u8 = 69;
    pub const LOG_STATUS: u8 = 70;
    pub const G_EXT_CTRLS: u8 = 71;
    pub const S_EXT_CTRLS: u8 = 72;
    pub const TRY_EXT_CTRLS: u8 = 73;
    pub const ENUM_FRAMESIZES: u8 = 74;
    pub const ENUM_FRAMEINTERVALS: u8 = 75;
    pub const G_ENC_INDEX: u8 = 76;
    pub const ENCODER_CMD: u8 = 77;
    pub const TRY_ENCODER_CMD: u8 = 78;
    pub const S_HW_FREQ_SEEK: u8 = 82;
    pub const S_DV_TIMINGS: u8 = 87;
    pub const G_DV_TIMINGS: u8 = 88;
    pub const DQEVENT: u8 = 89;
    pub const SUBSCRIBE_EVENT: u8 = 90;
    pub const UNSUBSCRIBE_EVENT: u8 = 91;
    pub const CREATE_BUFS: u8 = 92;
    pub const PREPARE_BUF: u8 = 93;
    pub const G_SELECTION: u8 = 94;
    pub const S_SELECTION: u8 = 95;
    pub const DECODER_CMD: u8 = 96;
    pub const TRY_DECODER_CMD: u8 = 97;
    pub const ENUM_DV_TIMINGS: u8 = 98;
    pub const QUERY_DV_TIMINGS: u8 = 99;
    pub const DV_TIMINGS_CAP: u8 = 100;
    pub const ENUM_FREQ_BANDS: u8 = 101;
    pub const QUERY_EXT_CTRL: u8 = 103;
}

/// The ioctls sent to the device as `VIRTIO_MEDIA_CMD_IOCTL`, with their UAPI direction and
/// 64-bit payload size (spec "Ioctls"; sizes as in `shared/notes/protocol.md`). Ioctls the
/// protocol answers in the guest (QUERYCAP, DQBUF, DQEVENT, LOG_STATUS, JPEGCOMP) are absent.
pub const IOCTLS: &[IoctlInfo] = {
    use Dir::*;
    const fn i(nr: u8, dir: Dir, size: u16) -> IoctlInfo {
        IoctlInfo { nr, dir, size }
    }
    &[
        i(nr::ENUM_FMT, ReadWrite, 64),
        i(nr::G_FMT, ReadWrite, 208),
        i(nr::S_FMT, ReadWrite, 208),
        i(nr::REQBUFS, ReadWrite, 20),
        i(nr::QUERYBUF, ReadWrite, 88),
        i(nr::G_FBUF, Read, 48),
        i(nr::S_FBUF, Write, 48),
        i(nr::OVERLAY, Write, 4),
        i(nr::QBUF, ReadWrite, 88),
        i(nr::EXPBUF, ReadWrite, 64),
        i(nr::STREAMON, Write, 4),
        i(nr::STREAMOFF, Write, 4),
        i(nr::G_PARM, ReadWrite, 204),
        i(nr::S_PARM, ReadWrite, 204),
        i(nr::G_STD, Read, 8),
        i(nr::S_STD, Write, 8),
        i(nr::ENUMSTD, ReadWrite, 72),
        i(nr::ENUMINPUT, ReadWrite, 80),
        i(nr::G_CTRL, ReadWrite, 8),
        i(nr::S_CTRL, ReadWrite, 8),
        i(nr::G_TUNER, ReadWrite, 84),
        i(nr::S_TUNER, Write, 84),
        i(nr::G_AUDIO, Read, 52),
        i(nr::S_AUDIO, Write, 52),
        i(nr::QUERYCTRL, ReadWrite, 68),
        i(nr::QUERYMENU, ReadWrite, 44),
        i(nr::G_INPUT, Read, 4),
        i(nr::S_INPUT, ReadWrite, 4),
        i(nr::G_OUTPUT, Read, 4),
        i(nr::S_OUTPUT, ReadWrite, 4),
        i(nr::ENUMOUTPUT, ReadWrite, 72),
        i(nr::G_AUDOUT, Read, 52),
        i(nr::S_AUDOUT, Write, 52),
        i(nr::G_MODULATOR, ReadWrite, 68),
        i(nr::S_MODULATOR, Write, 68),
        i(nr::G_FREQUENCY, ReadWrite, 44),
        i(nr::S_FREQUENCY, Write, 44),
        i(nr::CROPCAP, ReadWrite, 44),
        i(nr::G_CROP, ReadWrite, 20),
        i(nr::S_CROP, Write, 20),
        i(nr::QUERYSTD, Read, 8),
        i(nr::TRY_FMT, ReadWrite, 208),
        i(nr::ENUMAUDIO, ReadWrite, 52),
        i(nr::ENUMAUDOUT, ReadWrite, 52),
        i(nr::G_PRIORITY, Read, 4),
        i(nr::S_PRIORITY, Write, 4),
        i(nr::G_SLICED_VBI_CAP, ReadWrite, 116),
        i(nr::G_EXT_CTRLS, ReadWrite, 32),
        i(nr::S_EXT_CTRLS, ReadWrite, 32),
        i(nr::TRY_EXT_CTRLS, ReadWrite, 32),
        i(nr::ENUM_FRAMESIZES, ReadWrite, 44),
        i(nr::ENUM_FRAMEINTERVALS, ReadWrite, 52),
        i(nr::G_ENC_INDEX, Read, 2072),
        i(nr::ENCODER_CMD, ReadWrite, 40),
        i(nr::TRY_ENCODER_CMD, ReadWrite, 40),
        i(nr::S_HW_FREQ_SEEK, Write, 48),
        i(nr::S_DV_TIMINGS, ReadWrite, 132),
        i(nr::G_DV_TIMINGS, ReadWrite, 132),
        i(nr::SUBSCRIBE_EVENT, Write, 32),
        i(nr::UNSUBSCRIBE_EVENT, Write, 32),
        i(nr::CREATE_BUFS, ReadWrite, 256),
        i(nr::PREPARE_BUF, ReadWrite, 88),
        i(nr::G_SELECTION, ReadWrite, 64),
        i(nr::S_SELECTION, ReadWrite, 64),
        i(nr::DECODER_CMD, ReadWrite, 72),
        i(nr::TRY_DECODER_CMD, ReadWrite, 72),
        i(nr::ENUM_DV_TIMINGS, ReadWrite, 148),
        i(nr::QUERY_DV_TIMINGS, Read, 132),
        i(nr::DV_TIMINGS_CAP, ReadWrite, 144),
        i(nr::ENUM_FREQ_BANDS, ReadWrite, 64),
        i(nr::QUERY_EXT_CTRL, ReadWrite, 232),
    ]
};

/// Looks up a forwarded ioctl by `_IOC_NR`. `None` for ioctls the protocol does not carry.
pub const fn ioctl_info(nr: u8) -> Option<IoctlInfo> {
    let mut i = 0;
    while i < IOCTLS.len() {
        if IOCTLS[i].nr == nr {
            return Some(IOCTLS[i]);
        }
        i += 1;
    }
    None
}

/// Sizes of the two halves of an ioctl's descriptor chain (spec "Device Operation: ioctls").
///
/// ```text
/// _IOR : cmd_ioctl            == resp_ioctl | payload
/// _IOW : cmd_ioctl | payload  == resp_ioctl
/// _IOWR: cmd_ioctl | payload  == resp_ioctl | payload
/// ```
/// `payload` is the main struct plus any array the protocol appends to it (the planes of a
/// `v4l2_buffer`, the controls of `v4l2_ext_controls`); `readable_extra` is what follows only
/// in the device-readable part (SG lists of user memory).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChainLayout {
    /// Bytes the device reads: command header, payload if `_IOW`/`_IOWR`, extra.
    pub readable: usize,
    /// Bytes the device may write: response header, payload if `_IOR`/`_IOWR`.
    pub writable: usize,
}

impl ChainLayout {
    /// Layout of an ioctl chain. `None` on arithmetic overflow.
    pub fn ioctl(dir: Dir, payload: usize, readable_extra: usize) -> Option<Self> {
        let mut readable = size_of::<CmdIoctl>();
        if dir.to_device() {
            readable = readable.checked_add(payload)?;
        }
        readable = readable.checked_add(readable_extra)?;
        let mut writable = size_of::<RespIoctl>();
        if dir.from_device() {
            writable = writable.checked_add(payload)?;
        }
        Some(Self { readable, writable })
    }
}

/// A validated event from the eventq.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// [`EVT_ERROR`]: the session is unusable; the device's errno (not range-checked: it is
    /// mapped by [`device_errno`] when returned to user space).
    Error {
        /// Session id.
        session_id: u32,
        /// Errno reported by the device.
        errno: u32,
    },
    /// [`EVT_DQBUF`]: a buffer is done. The bytes of the `v4l2_buffer` and planes are at
    /// [`DQBUF_BUFFER_OFFSET`] / [`DQBUF_PLANES_OFFSET`]; `buf` is what the driver uses of
    /// them, decoded once.
    Dqbuf {
        /// Session id.
        session_id: u32,
        /// The buffer's fields, checked against the queue with [`Dqbuf::check`].
        buf: Dqbuf,
    },
    /// [`EVT_EVENT`]: a V4L2 event; the `v4l2_event` is at [`EVENT_V4L2_OFFSET`].
    V4l2 {
        /// Session id.
        session_id: u32,
        /// `v4l2_event.type`.
        event_type: u32,
    },
}

/// One plane of a DQBUF event's buffer (for a single-planar buffer: the buffer itself, with
/// `data_offset` 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DqbufPlane {
    /// `bytesused`.
    pub bytesused: u32,
    /// `length`.
    pub length: u32,
    /// `data_offset` (multi-planar only).
    pub data_offset: u32,
}

/// The buffer of a DQBUF event as [`parse_event`] decoded it: every field the driver uses,
/// read once from the device's bytes. Context-free checks are done at parsing (the plane
/// count); what depends on the queue's state is done by [`Dqbuf::check`].
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Dqbuf {
    /// `v4l2_buffer.index`.
    pub index: u32,
    /// `v4l2_buffer.type`.
    pub buf_type: u32,
    /// Number of planes: `v4l2_buffer.length` for multi-planar types (at most
    /// [`MAX_PLANES`]), else 0.
    pub num_planes: u32,
    /// `v4l2_buffer.flags`.
    pub flags: u32,
    /// Planes `0..num_planes` (multi-planar), or entry 0 (single-planar); the rest zero.
    planes: [DqbufPlane; MAX_PLANES],
}

impl core::fmt::Debug for Dqbuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dqbuf")
            .field("index", &self.index)
            .field("buf_type", &self.buf_type)
            .field("num_planes", &self.num_planes)
            .field("flags", &self.flags)
            .finish()
    }
}

impl Dqbuf {
    /// Decodes the `v4l2_buffer` `b` (88 bytes) and its `planes` array of a DQBUF event.
    fn parse(b: &[u8], planes: &[u8]) -> Result<Self, ProtoError> {
        let field = |buf: &[u8], off| get_u32(buf, off).unwrap_or(0);
        let buf_type = field(b, buf::TYPE);
        let mut d = Dqbuf {
            index: field(b, buf::INDEX),
            buf_type,
            num_planes: 0,
            flags: field(b, buf::FLAGS),
            planes: [DqbufPlane::default(); MAX_PLANES],
        };
        if buf_type_is_multiplanar(buf_type) {
            let n = field(b, buf::LENGTH);
            if n as usize > MAX_PLANES {
                return Err(ProtoError::TooManyPlanes(n));
            }
            d.num_planes = n;
            for (i, p) in d.planes.iter_mut().take(n as usize).enumerate() {
                let at = i * plane::SIZE;
                *p = DqbufPlane {
                    bytesused: field(planes, at + plane::BYTESUSED),
                    length: field(planes, at + plane::LENGTH),
                    data_offset: field(planes, at + plane::DATA_OFFSET),
                };
            }
        } else {
            d.planes[0] = DqbufPlane {
                bytesused: field(b, buf::BYTESUSED),
                length: field(b, buf::LENGTH),
                data_offset: 0,
            };
        }
        Ok(d)
    }

    /// The queue of the buffer's type, `None` if the type does not stream.
    pub fn queue(&self) -> Option<Queue> {
        queue_of(self.buf_type)
    }

    /// Whether the buffer is flagged `V4L2_BUF_FLAG_LAST`.
    pub fn is_last(&self) -> bool {
        self.flags & buf::FLAG_LAST != 0
    }

    /// The buffer's plane sizes (single-planar: entry 0), as [`buffer_lengths`] gives them.
    pub fn lengths(&self) -> PlaneLengths {
        let mut out = [0u32; MAX_PLANES];
        for (o, p) in out.iter_mut().zip(self.planes.iter()) {
            *o = p.length;
        }
        out
    }

    /// Checks the buffer against what the driver knows of its queue: `num_buffers`
    /// allocated, and `known`, the plane sizes the device gave this buffer before (0 =
    /// unknown; `None` if not tracked). A streaming type, an index below `num_buffers`, 1..8
    /// planes for multi-planar types, each plane's `bytesused` within its `length` and its
    /// `data_offset` before `bytesused` (videodev2.h's rule), and no plane size other than the
    /// one the buffer was described with (the device must not return a buffer larger than the
    /// one user space mapped).
    pub fn check(&self, num_buffers: u32, known: Option<&PlaneLengths>) -> Result<(), DqbufError> {
        if self.queue().is_none() {
            return Err(DqbufError::BadType(self.buf_type));
        }
        if self.index >= num_buffers {
            return Err(DqbufError::BadIndex(self.index, num_buffers));
        }
        if buf_type_is_multiplanar(self.buf_type) {
            if self.num_planes == 0 {
                return Err(DqbufError::BadPlanes(0));
            }
            let n = self.num_planes as usize;
            for (i, p) in self.planes.iter().take(n).enumerate() {
                if p.bytesused > p.length || (p.bytesused > 0 && p.data_offset >= p.bytesused) {
                    return Err(DqbufError::BadLength(i as u32, p.bytesused, p.length));
                }
            }
        } else {
            let p = &self.planes[0];
            if p.bytesused > p.length {
                return Err(DqbufError::BadLength(0, p.bytesused, p.length));
            }
        }
        if let Some(known) = known {
            for (i, (&g, &k)) in self.lengths().iter().zip(known.iter()).enumerate() {
                if k != 0 && g != k {
                    return Err(DqbufError::LengthChanged(i as u32, g, k));
                }
            }
        }
        Ok(())
    }
}

/// Offset of the `v4l2_buffer` in a DQBUF event.
pub const DQBUF_BUFFER_OFFSET: usize = 8;
/// Offset of the planes array in a DQBUF event.
pub const DQBUF_PLANES_OFFSET: usize = 8 + V4L2_BUFFER_SIZE;
/// Offset of the `v4l2_event` in an EVENT event.
pub const EVENT_V4L2_OFFSET: usize = 8;

/// Whether a `v4l2_buf_type` is multi-planar (`V4L2_TYPE_IS_MULTIPLANAR`).
pub const fn buf_type_is_multiplanar(t: u32) -> bool {
    // V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE = 9, V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE = 10.
    t == 9 || t == 10
}

/// Parses one event of `used` bytes (the device's used length) out of an eventq buffer.
pub fn parse_event(buf: &[u8], used: usize) -> Result<Event, ProtoError> {
    if used > buf.len() {
        return Err(ProtoError::Overflow(used, buf.len()));
    }
    let buf = &buf[..used];
    let event = get_u32(buf, 0).ok_or(ProtoError::Short(used, size_of::<EventHeader>()))?;
    let session_id = get_u32(buf, 4).ok_or(ProtoError::Short(used, size_of::<EventHeader>()))?;
    let need = |n: usize| {
        if used < n {
            Err(ProtoError::Short(used, n))
        } else {
            Ok(())
        }
    };
    match event {
        EVT_ERROR => {
            need(size_of::<EventError>())?;
            let errno = get_u32(buf, offset_of!(EventError, errno)).unwrap_or(0);
            Ok(Event::Error { session_id, errno })
        }
        EVT_DQBUF => {
            need(EVENT_DQBUF_SIZE)?;
            let short = ProtoError::Short(used, EVENT_DQBUF_SIZE);
            let b = buf
                .get(DQBUF_BUFFER_OFFSET..DQBUF_PLANES_OFFSET)
                .ok_or(short)?;
            let planes = buf.get(DQBUF_PLANES_OFFSET..).ok_or(short)?;
            Ok(Event::Dqbuf {
                session_id,
                buf: Dqbuf::parse(b, planes)?,
            })
        }
        EVT_EVENT => {
            need(EVENT_EVENT_SIZE)?;
            let event_type = get_u32(buf, EVENT_V4L2_OFFSET).unwrap_or(0);
            Ok(Event::V4l2 {
                session_id,
                event_type,
            })
        }
        other => Err(ProtoError::UnknownEvent(other)),
    }
}

/// Maps a device status to the errno returned to user space: the status itself if it is a
/// user-visible errno, else `EIO` (5).
pub const fn device_errno(status: u32) -> u32 {
    if status >= 1 && status <= MAX_DEVICE_ERRNO {
        status
    } else {
        5
    }
}

/// Checks the configuration space's `card` field: it must hold a NUL within its 32 bytes
/// (`v4l2_capability.card` is a C string). Returns the length before the NUL.
pub fn card_len(card: &[u8; config::CARD_LEN]) -> Option<usize> {
    card.iter().position(|&b| b == 0)
}

/// `V4L2_MODE_HIGHQUALITY`, the only capture/output mode flag (videodev2.h).
pub const MODE_HIGHQUALITY: u32 = 1;

/// `VIDIOC_S_PARM` argument clean-up the V4L2 core's `v4l_s_parm()` does before a driver sees
/// it, for the nodes where the driver forwards S_PARM itself (M2M: see `ffi::fop_ioctl`): in
/// the 204-byte `v4l2_streamparm`, `parm.{capture,output}` has `capturemode`/`outputmode` at
/// 8 (masked to [`MODE_HIGHQUALITY`]), `extendedmode` at 20 (zeroed) and `reserved[4]` at 28
/// (zeroed); both union members have the same layout.
pub fn sanitize_s_parm(parm: &mut [u8]) {
    if let Some(mode) = get_u32(parm, 8) {
        let _ = put_u32(parm, 8, mode & MODE_HIGHQUALITY);
    }
    let _ = put_u32(parm, 20, 0);
    if let Some(r) = parm.get_mut(28..44) {
        r.fill(0);
    }
}

/// Repairs what the V4L2 core itself would choke on in a successful response payload.
///
/// `ENUM_FMT`: the core's `v4l_fill_fmtdesc()` `WARN`s on an unknown `pixelformat` whose
/// `description` is empty, so a device could splat the guest at will. The description is
/// NUL-terminated at its last byte and, if empty, set to the fourcc's characters. Returns
/// whether anything was changed.
pub fn sanitize_response(nr: u8, payload: &mut [u8]) -> bool {
    // struct v4l2_fmtdesc: index@0 type@4 flags@8 description[32]@12 pixelformat@44.
    const DESC: usize = 12;
    const DESC_LEN: usize = 32;
    const PIXFMT: usize = 44;
    if nr != nr::ENUM_FMT || payload.len() < PIXFMT + 4 {
        return false;
    }
    let mut changed = false;
    if payload[DESC + DESC_LEN - 1] != 0 {
        payload[DESC + DESC_LEN - 1] = 0;
        changed = true;
    }
    if payload[DESC] == 0 {
        let mut cc = [0u8; 4];
        cc.copy_from_slice(&payload[PIXFMT..PIXFMT + 4]);
        for (i, c) in cc.iter().enumerate() {
            payload[DESC + i] = if c.is_ascii_graphic() { *c } else { b'?' };
        }
        changed = true;
    }
    changed
}

/// `EINVAL`, the errno of a request the driver refuses as malformed or unsupported.
pub const EINVAL: u32 = 22;
/// `EBADR`, what V4L2 answers for a request (`V4L2_BUF_FLAG_REQUEST_FD`, a request's control
/// values) on a node without the Request API (vb2's `vb2_queue_or_prepare_buf`,
/// `media_request_get_by_fd`).
pub const EBADR: u32 = 53;

/// `V4L2_BUF_CAP_*` bits the driver implements, the only ones REQBUFS/CREATE_BUFS report
/// (whatever the device claims): MMAP and USERPTR memory, orphaned buffers (the device keeps
/// a mapped buffer until MUNMAP) and `max_num_buffers` (a field the device fills in).
/// DMABUF memory, the Request API (`SUPPORTS_REQUESTS`, `SUPPORTS_M2M_HOLD_CAPTURE_BUF`),
/// cache hints (`SUPPORTS_MMAP_CACHE_HINTS`) and `VIDIOC_REMOVE_BUFS` are not implemented.
pub const BUF_CAPS_SUPPORTED: u32 =
    bufcap::MMAP | bufcap::USERPTR | bufcap::ORPHANED_BUFS | bufcap::MAX_NUM_BUFFERS;

/// `V4L2_BUF_CAP_SUPPORTS_*` (videodev2.h).
pub mod bufcap {
    /// `V4L2_BUF_CAP_SUPPORTS_MMAP`.
    pub const MMAP: u32 = 1 << 0;
    /// `V4L2_BUF_CAP_SUPPORTS_USERPTR`.
    pub const USERPTR: u32 = 1 << 1;
    /// `V4L2_BUF_CAP_SUPPORTS_DMABUF`.
    pub const DMABUF: u32 = 1 << 2;
    /// `V4L2_BUF_CAP_SUPPORTS_REQUESTS`.
    pub const REQUESTS: u32 = 1 << 3;
    /// `V4L2_BUF_CAP_SUPPORTS_ORPHANED_BUFS`.
    pub const ORPHANED_BUFS: u32 = 1 << 4;
    /// `V4L2_BUF_CAP_SUPPORTS_M2M_HOLD_CAPTURE_BUF`.
    pub const M2M_HOLD_CAPTURE_BUF: u32 = 1 << 5;
    /// `V4L2_BUF_CAP_SUPPORTS_MMAP_CACHE_HINTS`.
    pub const MMAP_CACHE_HINTS: u32 = 1 << 6;
    /// `V4L2_BUF_CAP_SUPPORTS_MAX_NUM_BUFFERS`.
    pub const MAX_NUM_BUFFERS: u32 = 1 << 7;
    /// `V4L2_BUF_CAP_SUPPORTS_REMOVE_BUFS`.
    pub const REMOVE_BUFS: u32 = 1 << 8;
}

/// Offsets in `struct v4l2_requestbuffers` (20 bytes) and `struct v4l2_create_buffers` (256
/// bytes; its `format` is 8-byte aligned, at 16).
pub mod bufreq {
    /// `v4l2_requestbuffers.memory`.
    pub const MEMORY: usize = 8;
    /// `v4l2_requestbuffers.capabilities`.
    pub const CAPABILITIES: usize = 12;
    /// `v4l2_requestbuffers.flags` (one byte: `V4L2_MEMORY_FLAG_NON_COHERENT`).
    pub const FLAGS: usize = 16;
    /// `v4l2_create_buffers.memory`.
    pub const CREATE_MEMORY: usize = 8;
    /// `v4l2_create_buffers.capabilities`.
    pub const CREATE_CAPABILITIES: usize = 224;
    /// `v4l2_create_buffers.flags` (`__u32`).
    pub const CREATE_FLAGS: usize = 228;
}

/// Offsets in `struct v4l2_ext_controls` (32 bytes).
pub mod ext_ctrls {
    /// `which` (or the old `ctrl_class`).
    pub const WHICH: usize = 0;
    /// `request_fd`, meaningful only with [`WHICH_REQUEST_VAL`].
    pub const REQUEST_FD: usize = 12;
    /// `V4L2_CTRL_WHICH_REQUEST_VAL`: the control values of a request.
    pub const WHICH_REQUEST_VAL: u32 = 0x0f01_0000;
}

/// Checks and cleans up, in the guest, the argument `payload` of ioctl `nr` (the main struct
/// as the V4L2 core copied it in) before it goes to the device: what the driver does not
/// implement is refused with the errno V4L2 gives for it, and fields that only mean something
/// with such a feature are cleared, so the device never sees a guest file descriptor.
///
/// * `REQBUFS`/`CREATE_BUFS`: memory other than MMAP/USERPTR (DMABUF, not implemented; or
///   unknown) is `EINVAL`, as vb2 answers for memory a queue does not support; the cache-hint
///   flag is cleared (no `SUPPORTS_MMAP_CACHE_HINTS`).
/// * `QBUF`/`PREPARE_BUF` with `V4L2_BUF_FLAG_REQUEST_FD`: `EBADR` / `EINVAL` (vb2 on a queue
///   without requests); `request_fd` is cleared for every buffer ioctl.
/// * `G/S/TRY_EXT_CTRLS`: `request_fd` is cleared. `V4L2_CTRL_WHICH_REQUEST_VAL` is `EINVAL`
///   (the control framework's answer without a request to name); the 6.12 V4L2 core already
///   refuses it before the driver (`check_ext_ctrls`), this keeps it from the device whatever
///   the core does.
///
/// (`S_FBUF`'s `base` needs nothing here: the V4L2 core sets it to NULL before the driver
/// sees it, `v4l_s_fbuf`.)
///
/// Returns the errno of a refusal.
pub fn check_request(nr: u8, payload: &mut [u8]) -> Result<(), u32> {
    let memory_ok = |m: Option<u32>| matches!(m, Some(MEMORY_MMAP) | Some(MEMORY_USERPTR));
    match nr {
        nr::REQBUFS => {
            if !memory_ok(get_u32(payload, bufreq::MEMORY)) {
                return Err(EINVAL);
            }
            if let Some(f) = payload.get_mut(bufreq::FLAGS) {
                *f = 0;
            }
        }
        nr::CREATE_BUFS => {
            if !memory_ok(get_u32(payload, bufreq::CREATE_MEMORY)) {
                return Err(EINVAL);
            }
            let _ = put_u32(payload, bufreq::CREATE_FLAGS, 0);
        }
        nr::QBUF | nr::PREPARE_BUF | nr::QUERYBUF => {
            let flags = get_u32(payload, buf::FLAGS).ok_or(EINVAL)?;
            if nr != nr::QUERYBUF && flags & buf::FLAG_REQUEST_FD != 0 {
                return Err(if nr == nr::QBUF { EBADR } else { EINVAL });
            }
            put_u32(payload, buf::REQUEST_FD, 0).ok_or(EINVAL)?;
        }
        nr::G_EXT_CTRLS | nr::S_EXT_CTRLS | nr::TRY_EXT_CTRLS => {
            let which = get_u32(payload, ext_ctrls::WHICH).ok_or(EINVAL)?;
            if which == ext_ctrls::WHICH_REQUEST_VAL {
                return Err(EINVAL);
            }
            put_u32(payload, ext_ctrls::REQUEST_FD, 0).ok_or(EINVAL)?;
        }
        _ => {}
    }
    Ok(())
}

/// Cleans up a successful answer `payload` of ioctl `nr` (its main struct) so that user space
/// is told only of what the driver implements: REQBUFS/CREATE_BUFS report only
/// [`BUF_CAPS_SUPPORTED`] and no cache-hint flag, and a `v4l2_buffer` (QBUF, QUERYBUF,
/// PREPARE_BUF) is never part of a request. Not a repair of a faulty device (a device may
/// honestly support more than this driver), so the caller does not warn.
pub fn mask_answer(nr: u8, payload: &mut [u8]) {
    match nr {
        nr::REQBUFS => {
            if let Some(c) = get_u32(payload, bufreq::CAPABILITIES) {
                let _ = put_u32(payload, bufreq::CAPABILITIES, c & BUF_CAPS_SUPPORTED);
            }
            if let Some(f) = payload.get_mut(bufreq::FLAGS) {
                *f = 0;
            }
        }
        nr::CREATE_BUFS => {
            if let Some(c) = get_u32(payload, bufreq::CREATE_CAPABILITIES) {
                let _ = put_u32(payload, bufreq::CREATE_CAPABILITIES, c & BUF_CAPS_SUPPORTED);
            }
            let _ = put_u32(payload, bufreq::CREATE_FLAGS, 0);
        }
        nr::QBUF | nr::QUERYBUF | nr::PREPARE_BUF => mask_buffer(payload),
        _ => {}
    }
}

/// Clears what would tie the `v4l2_buffer` `b` (88 bytes) the device describes to a request
/// (`V4L2_BUF_FLAG_REQUEST_FD`, `V4L2_BUF_FLAG_IN_REQUEST`, `request_fd`): the driver has no
/// Request API, and a file descriptor number from the device means nothing in the guest.
pub fn mask_buffer(b: &mut [u8]) {
    if let Some(f) = get_u32(b, buf::FLAGS) {
        let _ = put_u32(
            b,
            buf::FLAGS,
            f & !(buf::FLAG_REQUEST_FD | buf::FLAG_IN_REQUEST),
        );
    }
    let _ = put_u32(b, buf::REQUEST_FD, 0);
}

/// Validates the response to [`CMD_MMAP`]: `Ok(Ok((shm_offset, len)))` or `Ok(Err(errno))`.
pub fn check_mmap_resp(
    resp: &[u8],
    used: usize,
    avail: usize,
) -> Result<Result<(u64, u64), u32>, ProtoError> {
    let status = check_resp_header(resp, used, avail)?;
    if status != 0 {
        return Ok(Err(status));
    }
    if used < size_of::<RespMmap>() {
        return Err(ProtoError::Short(used, size_of::<RespMmap>()));
    }
    let short = ProtoError::Short(used, size_of::<RespMmap>());
    let addr = get_u64(resp, offset_of!(RespMmap, driver_addr)).ok_or(short)?;
    let len = get_u64(resp, offset_of!(RespMmap, len)).ok_or(short)?;
    Ok(Ok((addr, len)))
}

/// Offsets in `struct v4l2_buffer` (64-bit layout, 88 bytes).
pub mod buf {
    /// `__u32 index`.
    pub const INDEX: usize = 0;
    /// `__u32 type`.
    pub const TYPE: usize = 4;
    /// `__u32 bytesused`.
    pub const BYTESUSED: usize = 8;
    /// `__u32 flags`.
    pub const FLAGS: usize = 12;
    /// `__u32 memory`.
    pub const MEMORY: usize = 60;
    /// `union m` (offset, userptr, planes pointer or fd), 8 bytes.
    pub const M: usize = 64;
    /// `__u32 length`: buffer size, or number of planes for multi-planar types.
    pub const LENGTH: usize = 72;
    /// Size of the struct.
    pub const SIZE: usize = super::V4L2_BUFFER_SIZE;
    /// `V4L2_BUF_FLAG_LAST`: the last buffer of a stream (codecs, after a drain).
    pub const FLAG_LAST: u32 = 0x0010_0000;
    /// `V4L2_BUF_FLAG_IN_REQUEST`: the buffer is queued in a request.
    pub const FLAG_IN_REQUEST: u32 = 0x0000_0080;
    /// `V4L2_BUF_FLAG_REQUEST_FD`: `request_fd` names the request to queue the buffer in.
    pub const FLAG_REQUEST_FD: u32 = 0x0080_0000;
    /// `__s32 request_fd` (a union with `reserved`).
    pub const REQUEST_FD: usize = 80;
}

/// Offsets in `struct v4l2_plane` (64 bytes).
pub mod plane {
    /// `__u32 bytesused`.
    pub const BYTESUSED: usize = 0;
    /// `__u32 length`.
    pub const LENGTH: usize = 4;
    /// `union m` (mem_offset, userptr or fd), 8 bytes.
    pub const M: usize = 8;
    /// `__u32 data_offset`.
    pub const DATA_OFFSET: usize = 16;
    /// Size of the struct.
    pub const SIZE: usize = super::V4L2_PLANE_SIZE;
}

/// `V4L2_MEMORY_MMAP`.
pub const MEMORY_MMAP: u32 = 1;
/// `V4L2_MEMORY_USERPTR` (the spec's `VIRTIO_MEDIA_SHARED_PAGES`): user memory, sent to the
/// device as [`SgEntry`] lists after the payload, in the device-readable part only.
pub const MEMORY_USERPTR: u32 = 2;

/// Most [`SgEntry`]s one command carries: 4096 (64 KiB of device-readable bytes; 16 MiB of
/// memory even when no two pages are physically contiguous).
pub const MAX_SG_ENTRIES: usize = 4096;

/// Offsets in the packed 20-byte `struct v4l2_ext_control`.
pub mod ext_ctrl {
    /// `__u32 size`: payload size in bytes; non-zero means `ptr` points at the payload.
    pub const SIZE: usize = 4;
    /// The `value`/`value64`/`ptr` union, 8 bytes.
    pub const PTR: usize = 12;
}

/// Queue a buffer type belongs to, for types that stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Queue {
    /// Device-to-driver: capture, VBI/SDR/meta capture.
    Capture = 0,
    /// Driver-to-device: output, VBI/SDR/meta output.
    Output = 1,
}

/// The queue of a streaming `v4l2_buf_type`, `None` for overlays and unknown types.
pub const fn queue_of(buf_type: u32) -> Option<Queue> {
    match buf_type {
        // VIDEO_CAPTURE, VBI_CAPTURE, SLICED_VBI_CAPTURE, VIDEO_CAPTURE_MPLANE, SDR_CAPTURE,
        // META_CAPTURE.
        1 | 4 | 6 | 9 | 11 | 13 => Some(Queue::Capture),
        // VIDEO_OUTPUT, VBI_OUTPUT, SLICED_VBI_OUTPUT, VIDEO_OUTPUT_MPLANE, SDR_OUTPUT,
        // META_OUTPUT.
        2 | 5 | 7 | 10 | 12 | 14 => Some(Queue::Output),
        _ => None,
    }
}

/// Plane sizes of one buffer, as the device described it in earlier QUERYBUF/QBUF/PREPARE_BUF
/// answers (bytes; `0` = not known), indexed by plane. Single-planar buffers use entry 0.
pub type PlaneLengths = [u32; MAX_PLANES];

/// The plane sizes a `v4l2_buffer` `b` (88 bytes) describes: `b.length` for single-planar
/// types, else the `length` of each of the `b.length` planes present in `planes` (64 bytes
/// each, at most [`MAX_PLANES`]). Missing fields read as 0 (unknown).
pub fn buffer_lengths(b: &[u8], planes: &[u8]) -> PlaneLengths {
    let mut out = [0u32; MAX_PLANES];
    let buf_type = get_u32(b, buf::TYPE).unwrap_or(0);
    if buf_type_is_multiplanar(buf_type) {
        let n = (get_u32(b, buf::LENGTH).unwrap_or(0) as usize).min(MAX_PLANES);
        for (i, l) in out.iter_mut().enumerate().take(n) {
            *l = get_u32(planes, i * plane::SIZE + plane::LENGTH).unwrap_or(0);
        }
    } else {
        out[0] = get_u32(b, buf::LENGTH).unwrap_or(0);
    }
    out
}

/// Why a DQBUF event was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DqbufError {
    /// Shorter than a DQBUF event.
    Short,
    /// Not a streaming buffer type.
    BadType(u32),
    /// Buffer index (index, number of buffers allocated).
    BadIndex(u32, u32),
    /// Plane count 0 or above [`MAX_PLANES`].
    BadPlanes(u32),
    /// A plane (or the buffer) with `bytesused` beyond `length`: (plane, bytesused, length).
    BadLength(u32, u32, u32),
    /// A plane whose `length` differs from what the device said of the buffer before:
    /// (plane, length in the event, length known).
    LengthChanged(u32, u32, u32),
}
