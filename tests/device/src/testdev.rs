// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! `TestDevice`: the project's own configurable virtio-media device (capture, output, loopback
//! M2M; single- or multi-planar; MMAP and USERPTR), built on the `virtio-media` crate's traits
//! (`VirtioMediaDevice`, `VirtioMediaIoctlHandler` + `virtio_media_dispatch_ioctl`,
//! `MmapMappingManager`, `VirtioMediaGuestMemoryMapper`). Documentation/test-device.md describes
//! the profiles, the capture pattern and the USERPTR handling.
//!
//! Buffers follow vb2's rules as far as a device can see them: a queue of at most 32 buffers of
//! one memory type, QBUF of a queued buffer is `EINVAL`, STREAMOFF returns every buffer, a queue
//! with buffers cannot change its format (`EBUSY`). Capture and output devices let one session
//! own the buffers at a time (`EBUSY` for the others, as hardware does); M2M sessions are
//! independent contexts.
//!
//! Nothing the driver sends makes the device panic: every problem is an errno.

use std::collections::{BTreeMap, VecDeque};
use std::io::Result as IoResult;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use log::{info, warn};
use virtio_media::io::WriteToDescriptorChain;
use virtio_media::ioctl::{virtio_media_dispatch_ioctl, IoctlResult, VirtioMediaIoctlHandler};
use virtio_media::memfd::MemFdBuffer;
use virtio_media::mmap::MmapMappingManager;
use virtio_media::protocol::{
    DequeueBufferEvent, SessionEvent, SgEntry, V4l2Event, V4l2Ioctl, VIRTIO_MEDIA_MMAP_FLAG_RW,
};
use virtio_media::v4l2r::bindings::{self, v4l2_fmtdesc, v4l2_format, v4l2_requestbuffers};
use virtio_media::v4l2r::ioctl::{
    BufferCapabilities, BufferField, BufferFlags, CtrlWhich, EventType, MemoryConsistency,
    SelectionFlags, SelectionTarget, SelectionType, SubscribeEventFlags, UncheckedV4l2Buffer,
    V4l2Buffer, V4l2PlanesWithBackingMut,
};
use virtio_media::v4l2r::memory::MemoryType;
use virtio_media::v4l2r::{PixelFormat, QueueDirection, QueueType};
use virtio_media::{
    VirtioMediaDevice, VirtioMediaDeviceSession, VirtioMediaEventQueue,
    VirtioMediaGuestMemoryMapper, VirtioMediaHostMemoryMapper,
};

use crate::chain::{CmdReader, CmdWriter};
use crate::guestmem::GuestMapper;

#[path = "decoder.rs"]
mod decoder;

/// Most buffers per queue (vb2's `VIDEO_MAX_FRAME`).
pub const MAX_BUFFERS: u32 = 32;
/// Largest plane the device allocates (CREATE_BUFS) or looks at (USERPTR), in bytes: 64 MiB.
pub const MAX_PLANE: u32 = 64 << 20;
/// Frame interval advertised by capture and output profiles: 1/30 s.
const FPS: u32 = 30;

/// What the device does with its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One CAPTURE queue: every queued buffer is filled with the pattern (`pattern_byte`).
    Capture,
    /// One OUTPUT queue: every queued buffer is consumed (its CRC-32 logged) and returned.
    Output,
    /// Loopback memory-to-memory: each OUTPUT buffer's payload is copied into the next CAPTURE
    /// buffer of the same session.
    M2m,
    /// Stateful H.264 decoder (M2M, multi-planar): H.264 byte stream on OUTPUT, NV12/YU12
    /// frames on CAPTURE, decoded with libavcodec (`decoder.rs`).
    Decoder,
}

/// A device configuration (one per profile).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub kind: Kind,
    /// Multi-planar buffer types (`*_MPLANE`) instead of single-planar ones.
    pub mplane: bool,
    /// Pixel formats (fourccs) in ENUM_FMT order; the first is the default.
    pub formats: &'static [[u8; 4]],
    /// Discrete frame sizes in ENUM_FRAMESIZES order; the first is the default.
    pub sizes: &'static [(u32, u32)],
}

impl Spec {
    /// The V4L2 `device_caps` that describe exactly the queues this device accepts.
    pub fn device_caps(&self) -> u32 {
        let io = match (self.kind, self.mplane) {
            (Kind::Capture, false) => bindings::V4L2_CAP_VIDEO_CAPTURE,
            (Kind::Capture, true) => bindings::V4L2_CAP_VIDEO_CAPTURE_MPLANE,
            (Kind::Output, false) => bindings::V4L2_CAP_VIDEO_OUTPUT,
            (Kind::Output, true) => bindings::V4L2_CAP_VIDEO_OUTPUT_MPLANE,
            (Kind::M2m, false) => bindings::V4L2_CAP_VIDEO_M2M,
            (Kind::M2m, true) | (Kind::Decoder, _) => bindings::V4L2_CAP_VIDEO_M2M_MPLANE,
        };
        io | bindings::V4L2_CAP_STREAMING
    }

    fn capture_type(&self) -> Option<QueueType> {
        match (self.kind, self.mplane) {
            (Kind::Output, _) => None,
            (Kind::Decoder, _) => Some(QueueType::VideoCaptureMplane),
            (_, false) => Some(QueueType::VideoCapture),
            (_, true) => Some(QueueType::VideoCaptureMplane),
        }
    }

    fn output_type(&self) -> Option<QueueType> {
        match (self.kind, self.mplane) {
            (Kind::Capture, _) => None,
            (Kind::Decoder, _) => Some(QueueType::VideoOutputMplane),
            (_, false) => Some(QueueType::VideoOutput),
            (_, true) => Some(QueueType::VideoOutputMplane),
        }
    }

    fn default_format(&self) -> Format {
        let (width, height) = self.sizes.first().copied().unwrap_or((640, 480));
        Format {
            fourcc: self.formats.first().copied().unwrap_or(*b"YUYV"),
            width,
            height,
            color: Colorimetry::default(),
        }
    }

    /// The format the device would use for a request: the fourcc if supported (else the
    /// default one), the listed size nearest to the requested one.
    fn adjust(&self, fourcc: u32, width: u32, height: u32) -> Format {
        let fourcc = self
            .formats
            .iter()
            .copied()
            .find(|f| u32::from_le_bytes(*f) == fourcc)
            .unwrap_or(self.default_format().fourcc);
        let dist = |&(w, h): &(u32, u32)| w.abs_diff(width) as u64 + h.abs_diff(height) as u64;
        let (width, height) = self
            .sizes
            .iter()
            .min_by_key(|s| dist(s))
            .copied()
            .unwrap_or((640, 480));
        Format {
            fourcc,
            width,
            height,
            color: Colorimetry::default(),
        }
    }
}

/// A configured format: fourcc, frame size and colorimetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    pub color: Colorimetry,
}

/// `colorspace`, `xfer_func`, `ycbcr_enc`, `quantization` of a format. Fixed (sRGB, the rest
/// default) except on M2M queues, where OUTPUT takes what S_FMT asks and CAPTURE follows it
/// (a loopback does not convert).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Colorimetry {
    pub colorspace: u32,
    pub xfer_func: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
}

impl Default for Colorimetry {
    fn default() -> Self {
        Self {
            colorspace: bindings::v4l2_colorspace_V4L2_COLORSPACE_SRGB,
            xfer_func: 0,
            ycbcr_enc: 0,
            quantization: 0,
        }
    }
}

/// One plane of a format: bytes per line and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneLayout {
    pub bytesperline: u32,
    pub sizeimage: u32,
}

/// The planes (memory buffers) of `fourcc` at `w`x`h` (even sizes); `None` for an unknown fourcc.
///
/// Single-buffer formats (YUYV, RGB3, NV12, YU12) have one plane holding every component;
/// NM12 (NV12M) has 2 (Y, CbCr) and YM12 (YUV420M) 3 (Y, Cb, Cr).
pub fn layout(fourcc: &[u8; 4], w: u32, h: u32) -> Option<Vec<PlaneLayout>> {
    let p = |bytesperline, sizeimage| PlaneLayout {
        bytesperline,
        sizeimage,
    };
    Some(match fourcc {
        b"YUYV" => vec![p(2 * w, 2 * w * h)],
        b"RGB3" => vec![p(3 * w, 3 * w * h)],
        b"NV12" | b"YU12" => vec![p(w, w * h * 3 / 2)],
        b"NM12" => vec![p(w, w * h), p(w, w * h / 2)],
        b"YM12" => vec![p(w, w * h), p(w / 2, w * h / 4), p(w / 2, w * h / 4)],
        b"YM16" => vec![p(w, w * h), p(w / 2, w * h / 2), p(w / 2, w * h / 2)],
        b"H264" => vec![p(0, decoder::coded_buffer_size(w, h))],
        _ => return None,
    })
}

/// The kernel's description of a fourcc (v4l2-ioctl.c `v4l_fill_fmtdesc`).
fn description(fourcc: &[u8; 4]) -> &'static [u8] {
    match fourcc {
        b"YUYV" => b"YUYV 4:2:2",
        b"RGB3" => b"24-bit RGB 8-8-8",
        b"NV12" => b"Y/UV 4:2:0",
        b"YU12" => b"Planar YUV 4:2:0",
        b"NM12" => b"Y/UV 4:2:0 (N-C)",
        b"YM12" => b"Planar YUV 4:2:0 (N-C)",
        b"YM16" => b"Planar YUV 4:2:2 (N-C)",
        b"H264" => b"H.264",
        _ => b"",
    }
}

/// Byte `i` of plane `plane` of the capture frame with sequence number `seq`:
/// `(seq + 3 * plane + i) mod 251`. 251 is prime, so the pattern does not repeat with any
/// power-of-two line or plane length; tests compute it on their own.
#[cfg_attr(not(test), allow(dead_code))]
pub fn pattern_byte(seq: u32, plane: usize, i: usize) -> u8 {
    ((seq as u64 + 3 * plane as u64 + i as u64) % 251) as u8
}

/// Fills `buf` with plane `plane` of frame `seq` of the pattern.
pub fn fill_pattern(buf: &mut [u8], seq: u32, plane: usize) {
    let mut v = ((seq as u64 + 3 * plane as u64) % 251) as u8;
    for b in buf {
        *b = v;
        v = if v == 250 { 0 } else { v + 1 };
    }
}

/// CRC-32 (IEEE 802.3, the one of zlib and Python's `zlib.crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, e) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// A `V4l2Buffer` of `sizes.len()` planes. (v4l2r 0.0.7's `set_num_planes` panics when it
/// grows a buffer, so the planes are set on the raw struct.)
fn new_buffer(
    t: QueueType,
    index: u32,
    memory: MemoryType,
    sizes: &[u32],
) -> Result<V4l2Buffer, i32> {
    let mut raw = bindings::v4l2_buffer {
        index,
        type_: t as u32,
        memory: memory as u32,
        ..Default::default()
    };
    let planes = if t.is_multiplanar() {
        if sizes.is_empty() || sizes.len() >= bindings::VIDEO_MAX_PLANES as usize {
            return Err(libc::EINVAL);
        }
        raw.length = sizes.len() as u32;
        let mut planes: [bindings::v4l2_plane; bindings::VIDEO_MAX_PLANES as usize] =
            Default::default();
        for (p, &s) in planes.iter_mut().zip(sizes) {
            p.length = s;
        }
        Some(planes)
    } else {
        raw.length = *sizes.first().ok_or(libc::EINVAL)?;
        None
    };
    V4l2Buffer::try_from(UncheckedV4l2Buffer(raw, planes)).map_err(|_| libc::EINVAL)
}

/// What an M2M OUTPUT queue accepts: any colorspace of videodev2.h (else sRGB), transfer
/// function, Y'CbCr encoding and quantization within their enums (else default, 0).
fn sane_colorimetry(c: Colorimetry) -> Colorimetry {
    // V4L2_COLORSPACE_SMPTE170M (1) ..= V4L2_COLORSPACE_DCI_P3 (12); XFER_FUNC up to SMPTE2084
    // (7); YCBCR_ENC up to SMPTE240M (8); QUANTIZATION up to LIM_RANGE (2).
    let ok = |v: u32, max: u32| if v <= max { v } else { 0 };
    Colorimetry {
        colorspace: if (1..=12).contains(&c.colorspace) {
            c.colorspace
        } else {
            bindings::v4l2_colorspace_V4L2_COLORSPACE_SRGB
        },
        xfer_func: ok(c.xfer_func, 7),
        ycbcr_enc: ok(c.ycbcr_enc, 8),
        quantization: ok(c.quantization, 2),
    }
}

/// The format a decoder queue takes for a S_FMT/TRY_FMT request: OUTPUT is H.264 of any even
/// size up to the decoder's limits (the coded size, before the stream says otherwise); CAPTURE
/// is NV12 or YU12 at the CAPTURE queue's current size (the stream's, once known).
fn decoder_format(
    s: &TestSession,
    capture_formats: &'static [[u8; 4]],
    t: QueueType,
    fourcc: u32,
    w: u32,
    h: u32,
) -> Format {
    let formats = if is_capture(t) {
        capture_formats
    } else {
        decoder::OUTPUT_FORMATS
    };
    let fourcc = formats
        .iter()
        .copied()
        .find(|f| u32::from_le_bytes(*f) == fourcc)
        .unwrap_or(formats[0]);
    let (width, height) = match (is_capture(t), s.capture.as_ref()) {
        (true, Some(q)) => (q.fmt.width, q.fmt.height),
        _ => (
            w.clamp(16, decoder::MAX_WIDTH) & !1,
            h.clamp(16, decoder::MAX_HEIGHT) & !1,
        ),
    };
    Format {
        fourcc,
        width,
        height,
        color: Colorimetry::default(),
    }
}

/// Cuts an SG list to its first `size` bytes.
fn trim_sgs(sgs: &mut Vec<SgEntry>, size: u32) {
    let mut total = 0u32;
    let mut keep = 0;
    for sg in sgs.iter_mut() {
        if total >= size {
            break;
        }
        sg.len = sg.len.min(size - total);
        total += sg.len;
        keep += 1;
    }
    sgs.truncate(keep);
}

fn is_capture(t: QueueType) -> bool {
    t.direction() == QueueDirection::Capture
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufState {
    /// Owned by user space (new, dequeued or returned by STREAMOFF).
    Idle,
    /// PREPARE_BUF done, not queued yet.
    Prepared,
    /// Queued, waiting for the device.
    Queued,
}

/// Backing of one plane.
enum Backing {
    /// A memfd registered with the MMAP manager at `offset`.
    Mmap { fd: MemFdBuffer, offset: u32 },
    /// Guest pages of the last QBUF/PREPARE_BUF (consumed when the buffer is processed).
    User(Vec<SgEntry>),
}

struct Buf {
    state: BufState,
    /// Plane sizes given at allocation (the format's, or CREATE_BUFS'): what a capture frame
    /// fills, and the least a USERPTR plane must hold.
    sizes: Vec<u32>,
    /// What QUERYBUF reports and DQBUF events carry.
    v4l2: V4l2Buffer,
    planes: Vec<Backing>,
}

struct Queue {
    qtype: QueueType,
    memory: MemoryType,
    bufs: Vec<Buf>,
    queued: VecDeque<usize>,
    streaming: bool,
    sequence: u32,
    /// Format of M2M queues (per session); capture/output devices keep theirs device-wide.
    fmt: Format,
}

impl Queue {
    fn new(qtype: QueueType, fmt: Format) -> Self {
        Self {
            qtype,
            memory: MemoryType::Mmap,
            bufs: Vec::new(),
            queued: VecDeque::new(),
            streaming: false,
            sequence: 0,
            fmt,
        }
    }

    /// STREAMOFF: every buffer goes back to user space, unprepared.
    fn stop(&mut self) {
        self.streaming = false;
        self.queued.clear();
        for b in &mut self.bufs {
            b.state = BufState::Idle;
            b.v4l2
                .clear_flags(BufferFlags::QUEUED | BufferFlags::PREPARED | BufferFlags::DONE);
            for p in &mut b.planes {
                if let Backing::User(sgs) = p {
                    sgs.clear();
                }
            }
        }
    }
}

/// Session (open file) state.
pub struct TestSession {
    id: u32,
    capture: Option<Queue>,
    output: Option<Queue>,
    /// The decoder profile's codec state.
    codec: Option<decoder::Codec>,
}

impl VirtioMediaDeviceSession for TestSession {
    fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

impl TestSession {
    fn queue(&self, t: QueueType) -> Result<&Queue, i32> {
        [&self.capture, &self.output]
            .into_iter()
            .flatten()
            .find(|q| q.qtype == t)
            .ok_or(libc::EINVAL)
    }

    fn queue_mut(&mut self, t: QueueType) -> Result<&mut Queue, i32> {
        [&mut self.capture, &mut self.output]
            .into_iter()
            .flatten()
            .find(|q| q.qtype == t)
            .ok_or(libc::EINVAL)
    }
}

pub struct TestDevice<Q: VirtioMediaEventQueue, HM: VirtioMediaHostMemoryMapper> {
    spec: Spec,
    evt: Q,
    mmap: MmapMappingManager<HM>,
    guest: GuestMapper,
    /// Formats of a capture/output device (shared by its sessions): [capture, output].
    shared_fmt: [Format; 2],
    /// Capture/output devices: the session that owns buffers (one at a time, like hardware).
    owner: Option<u32>,
    start: Instant,
    /// Last timestamp handed out, in µs since `start` (strictly increasing).
    last_us: u64,
    /// The "Label" string control ([`LABEL_CID`]) if the profile has it: a payload control
    /// whose value travels through SG lists of guest memory (`ext-control ptr payloads`).
    label: Option<Vec<u8>>,
    /// Sessions subscribed to `V4L2_EVENT_CTRL` of the label, with their subscription flags.
    label_subs: BTreeMap<u32, SubscribeEventFlags>,
}

/// The "Label" string control: a driver-specific id of the user class
/// (`V4L2_CID_USER_BASE + 0x1100`), at most [`LABEL_MAX`] characters.
pub const LABEL_CID: u32 = 0x0098_0900 + 0x1100;
/// Longest label, in characters (the payload is one more, for the NUL).
pub const LABEL_MAX: u32 = 31;
/// `V4L2_CTRL_FLAG_NEXT_CTRL`, `V4L2_CTRL_FLAG_NEXT_COMPOUND`.
const CTRL_NEXT_CTRL: u32 = 0x8000_0000;
const CTRL_NEXT_COMPOUND: u32 = 0x4000_0000;
/// `V4L2_CTRL_ID_MASK`: the id without the flag bits.
const CTRL_ID_MASK: u32 = 0x0fff_ffff;
/// `V4L2_CTRL_FLAG_HAS_PAYLOAD`: the value is in memory at `ptr` (strings, arrays, compound).
const CTRL_FLAG_HAS_PAYLOAD: u32 = 0x0100;
/// `V4L2_CTRL_CLASS_USER`, the label's class (`V4L2_CTRL_ID2WHICH(LABEL_CID)`).
const CTRL_CLASS_USER: u32 = 0x0098_0000;
/// `V4L2_CTRL_TYPE_STRING`.
const CTRL_TYPE_STRING: u32 = 7;

impl<Q, HM> TestDevice<Q, HM>
where
    Q: VirtioMediaEventQueue,
    HM: VirtioMediaHostMemoryMapper,
{
    pub fn new(spec: Spec, evt: Q, host: HM, guest: GuestMapper) -> Self {
        let f = spec.default_format();
        Self {
            spec,
            evt,
            mmap: MmapMappingManager::from(host),
            guest,
            shared_fmt: [f, f],
            owner: None,
            start: Instant::now(),
            last_us: 0,
            label: None,
            label_subs: BTreeMap::new(),
        }
    }

    /// Gives the device the "Label" string control ([`LABEL_CID`]), initially `initial`.
    pub fn with_label(mut self, initial: &str) -> Self {
        self.label = Some(initial.as_bytes().to_vec());
        self
    }

    /// QUERYCTRL (68-byte `v4l2_queryctrl`) and QUERY_EXT_CTRL (232-byte
    /// `v4l2_query_ext_ctrl`) of the label control, answered from the raw little-endian
    /// bytes (v4l2r's `CtrlId` does not expose the id the NEXT flags enumerate from).
    fn query_label(
        &self,
        ext: bool,
        reader: &mut CmdReader,
        writer: &mut CmdWriter,
    ) -> IoResult<()> {
        let size = if ext { 232 } else { 68 };
        let pos = reader.position() as usize;
        let Some(arg) = reader.get_ref().get(pos..pos + size).map(|a| a.to_vec()) else {
            return writer.write_err_response(libc::EINVAL);
        };
        let raw = u32::from_le_bytes([arg[0], arg[1], arg[2], arg[3]]);
        let id = raw & CTRL_ID_MASK;
        // As the kernel's v4l2_query_ext_ctrl: NEXT_CTRL alone enumerates the controls that are
        // not compound, NEXT_COMPOUND alone the compound ones (arrays and types >=
        // V4L2_CTRL_COMPOUND_TYPES), both every control. A string has a payload but is not
        // compound, so NEXT_COMPOUND alone never finds the label.
        let found = match raw & (CTRL_NEXT_CTRL | CTRL_NEXT_COMPOUND) {
            0 => id == LABEL_CID,
            CTRL_NEXT_COMPOUND => false,
            _ => id < LABEL_CID,
        };
        if !found {
            return writer.write_err_response(libc::EINVAL);
        }
        let mut out = vec![0u8; size];
        let put32 =
            |o: &mut [u8], at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut out, 0, LABEL_CID);
        put32(&mut out, 4, CTRL_TYPE_STRING);
        out[8..13].copy_from_slice(b"Label");
        if ext {
            // minimum 0 (s64), maximum, step 1 (u64), default 0, flags, elem_size, elems 1.
            out[48..56].copy_from_slice(&i64::from(LABEL_MAX).to_le_bytes());
            out[56..64].copy_from_slice(&1u64.to_le_bytes());
            put32(&mut out, 72, CTRL_FLAG_HAS_PAYLOAD);
            put32(&mut out, 76, LABEL_MAX + 1);
            put32(&mut out, 80, 1);
        } else {
            // minimum 0, maximum, step 1, default 0, flags (the kernel copies them from
            // QUERY_EXT_CTRL, HAS_PAYLOAD included).
            put32(&mut out, 44, LABEL_MAX);
            put32(&mut out, 48, 1);
            put32(&mut out, 56, CTRL_FLAG_HAS_PAYLOAD);
        }
        writer.write_response(virtio_media::protocol::RespHeader::ok())?;
        writer.extend_from_slice(&out);
        Ok(())
    }

    /// G/S/TRY_EXT_CTRLS of the label control for session `sid`, as the kernel's control
    /// framework does them (v4l2-ctrls-api.c). The payload of each control with `size > 0` is
    /// in guest memory described by `regions` (one SG list per such control, in order).
    ///
    /// - `which`: the current value, the user class, or (G only) `V4L2_CTRL_WHICH_DEF_VAL`, the
    ///   default value: `minimum` (0) spaces, i.e. "". Anything else is `EINVAL`.
    /// - An unknown id is `EINVAL` with `error_idx` = `count` (G, S) or its index (TRY).
    /// - G: a `size` below the string's length + 1 is `ENOSPC` with `size` set to the
    ///   control's `elem_size` (32: the kernel's `ptr_to_user`), `error_idx` its index; on
    ///   success the string and its NUL are written and `size` is left as the caller set it.
    /// - S/TRY: `size` 0 is `ERANGE`; at most `maximum + 1` bytes are read and the last one
    ///   read becomes the NUL (`user_to_new`): a string of more than `maximum` characters is
    ///   `ERANGE`. TRY writes the value back (the kernel's `new_to_user`; S payloads are
    ///   pinned read-only by the driver). S of a new value sends `V4L2_EVENT_CTRL`
    ///   (`CH_VALUE`) to the subscribed sessions, the setter only with `ALLOW_FEEDBACK`.
    fn label_ctrls(
        &mut self,
        op: u8,
        sid: u32,
        which: CtrlWhich,
        ctrls: &mut bindings::v4l2_ext_controls,
        ctrl_array: &mut [bindings::v4l2_ext_control],
        regions: Vec<Vec<SgEntry>>,
    ) -> IoctlResult<()> {
        let Some(label) = self.label.clone() else {
            return Err(libc::ENOTTY);
        };
        let count = ctrl_array.len() as u32;
        let bad_id_idx = |i: usize| if op == b'T' { i as u32 } else { count };
        let default = match which {
            CtrlWhich::Current => false,
            CtrlWhich::Class(c) if c == CTRL_CLASS_USER => false,
            CtrlWhich::Default if op == b'G' => true,
            CtrlWhich::Class(_) => {
                ctrls.error_idx = bad_id_idx(0);
                return Err(libc::EINVAL);
            }
            _ => {
                ctrls.error_idx = count;
                return Err(libc::EINVAL);
            }
        };
        if let Some(i) = ctrl_array.iter().position(|c| c.id != LABEL_CID) {
            ctrls.error_idx = bad_id_idx(i);
            return Err(libc::EINVAL);
        }
        let mut regions = regions.into_iter();
        let mut new_label = None;
        for (i, c) in ctrl_array.iter_mut().enumerate() {
            let sgs = if c.size > 0 { regions.next() } else { None };
            ctrls.error_idx = i as u32;
            match op {
                b'G' => {
                    let value: &[u8] = if default { b"" } else { &label };
                    let needed = value.len() as u32 + 1;
                    if c.size < needed {
                        c.size = LABEL_MAX + 1;
                        return Err(libc::ENOSPC);
                    }
                    let sgs = sgs.ok_or(libc::EFAULT)?;
                    let mut m = self.guest.new_mapping(sgs).map_err(|_| libc::EFAULT)?;
                    let dst = m
                        .data_mut()
                        .get_mut(..needed as usize)
                        .ok_or(libc::EFAULT)?;
                    dst[..value.len()].copy_from_slice(value);
                    dst[value.len()] = 0;
                }
                _ => {
                    if c.size == 0 {
                        return Err(libc::ERANGE);
                    }
                    let size = c.size.min(LABEL_MAX + 1) as usize;
                    let sgs = sgs.ok_or(libc::EFAULT)?;
                    let mut m = self.guest.new_mapping(sgs).map_err(|_| libc::EFAULT)?;
                    let mut data = m.data().get(..size).ok_or(libc::EFAULT)?.to_vec();
                    let last = data[size - 1];
                    data[size - 1] = 0;
                    let len = data.iter().position(|&b| b == 0).unwrap_or(size - 1);
                    if len as u32 == LABEL_MAX && last != 0 {
                        return Err(libc::ERANGE);
                    }
                    if op == b'T' {
                        if let Some(dst) = m.data_mut().get_mut(..=len) {
                            dst.copy_from_slice(&data[..=len]);
                        }
                    }
                    new_label = Some(data[..len].to_vec());
                }
            }
        }
        ctrls.error_idx = count;
        if op == b'S' {
            if let Some(l) = new_label.filter(|l| *l != label) {
                info!("label control set to {:?}", String::from_utf8_lossy(&l));
                self.label = Some(l);
                let to: Vec<u32> = self
                    .label_subs
                    .iter()
                    .filter(|(s, f)| **s != sid || f.contains(SubscribeEventFlags::ALLOW_FEEDBACK))
                    .map(|(s, _)| *s)
                    .collect();
                for s in to {
                    self.send_label_event(s, bindings::V4L2_EVENT_CTRL_CH_VALUE);
                }
            }
        }
        Ok(())
    }

    /// A `V4L2_EVENT_CTRL` of the label for session `sid`, filled as the kernel's
    /// `fill_event`: type, flags (HAS_PAYLOAD), range; `value64` 0 for a payload control.
    fn send_label_event(&mut self, sid: u32, changes: u32) {
        let mut ev = bindings::v4l2_event {
            type_: bindings::V4L2_EVENT_CTRL,
            id: LABEL_CID,
            ..Default::default()
        };
        // SAFETY: `ctrl` is the union member of V4L2_EVENT_CTRL; every bit pattern is valid.
        let c = unsafe { &mut ev.u.ctrl };
        c.changes = changes;
        c.type_ = CTRL_TYPE_STRING;
        c.flags = CTRL_FLAG_HAS_PAYLOAD;
        c.minimum = 0;
        c.maximum = LABEL_MAX as i32;
        c.step = 1;
        c.default_value = 0;
        self.evt
            .send_event(V4l2Event::Event(SessionEvent::new(sid, ev)));
    }

    /// SUBSCRIBE_EVENT `V4L2_EVENT_CTRL` of control `id` (the kernel's `v4l2_ctrl_add_event`):
    /// `EINVAL` for a control the device does not have; `SEND_INITIAL` queues an event with
    /// `CH_VALUE | CH_FLAGS` before the answer. Subscribing again changes nothing (as
    /// `v4l2_event_subscribe`: no second initial event).
    fn subscribe_label(
        &mut self,
        sid: u32,
        id: u32,
        flags: SubscribeEventFlags,
    ) -> IoctlResult<()> {
        if self.label.is_none() || id != LABEL_CID {
            return Err(libc::EINVAL);
        }
        if self.label_subs.contains_key(&sid) {
            return Ok(());
        }
        self.label_subs.insert(sid, flags);
        if flags.contains(SubscribeEventFlags::SEND_INITIAL) {
            self.send_label_event(
                sid,
                bindings::V4L2_EVENT_CTRL_CH_VALUE | bindings::V4L2_EVENT_CTRL_CH_FLAGS,
            );
        }
        Ok(())
    }

    fn is_m2m(&self) -> bool {
        matches!(self.spec.kind, Kind::M2m | Kind::Decoder)
    }

    fn is_decoder(&self) -> bool {
        self.spec.kind == Kind::Decoder
    }

    /// The formats queue `t` lists in ENUM_FMT.
    fn formats_of(&self, t: QueueType) -> &'static [[u8; 4]] {
        match (self.is_decoder(), is_capture(t)) {
            (true, true) => self.spec.formats,
            (true, false) => decoder::OUTPUT_FORMATS,
            _ => self.spec.formats,
        }
    }

    fn fmt_of(&self, s: &TestSession, t: QueueType) -> Result<Format, i32> {
        let q = s.queue(t)?;
        Ok(if self.is_m2m() {
            q.fmt
        } else {
            self.shared_fmt[usize::from(!is_capture(t))]
        })
    }

    /// Monotonic capture timestamp: time since the device started plus 1 s, never repeated.
    fn next_timestamp(&mut self) -> bindings::timeval {
        let now = self.start.elapsed().as_micros() as u64 + 1_000_000;
        self.last_us = now.max(self.last_us + 1);
        bindings::timeval {
            tv_sec: (self.last_us / 1_000_000) as bindings::__time_t,
            tv_usec: (self.last_us % 1_000_000) as bindings::__suseconds_t,
        }
    }

    fn timestamp_flags(&self, t: QueueType) -> BufferFlags {
        if self.spec.kind == Kind::Capture || (is_capture(t) && !self.is_m2m()) {
            BufferFlags::TIMESTAMP_MONOTONIC
        } else {
            BufferFlags::TIMESTAMP_COPY
        }
    }

    /// `v4l2_format` of `fmt` for buffer type `t`.
    fn v4l2_format(&self, t: QueueType, fmt: Format) -> Result<v4l2_format, i32> {
        let planes = layout(&fmt.fourcc, fmt.width, fmt.height).ok_or(libc::EINVAL)?;
        let pixelformat = u32::from_le_bytes(fmt.fourcc);
        let mut out = v4l2_format {
            type_: t as u32,
            ..Default::default()
        };
        if t.is_multiplanar() {
            let mut pix = bindings::v4l2_pix_format_mplane {
                width: fmt.width,
                height: fmt.height,
                pixelformat,
                field: bindings::v4l2_field_V4L2_FIELD_NONE,
                colorspace: fmt.color.colorspace,
                num_planes: planes.len() as u8,
                __bindgen_anon_1: bindings::v4l2_pix_format_mplane__bindgen_ty_1 {
                    ycbcr_enc: fmt.color.ycbcr_enc as u8,
                },
                quantization: fmt.color.quantization as u8,
                xfer_func: fmt.color.xfer_func as u8,
                ..Default::default()
            };
            for (dst, src) in pix.plane_fmt.iter_mut().zip(&planes) {
                dst.bytesperline = src.bytesperline;
                dst.sizeimage = src.sizeimage;
            }
            out.fmt.pix_mp = pix;
        } else {
            let p = planes.first().ok_or(libc::EINVAL)?;
            out.fmt.pix = bindings::v4l2_pix_format {
                width: fmt.width,
                height: fmt.height,
                pixelformat,
                field: bindings::v4l2_field_V4L2_FIELD_NONE,
                bytesperline: p.bytesperline,
                sizeimage: p.sizeimage,
                colorspace: fmt.color.colorspace,
                __bindgen_anon_1: bindings::v4l2_pix_format__bindgen_ty_1 {
                    ycbcr_enc: fmt.color.ycbcr_enc,
                },
                quantization: fmt.color.quantization,
                xfer_func: fmt.color.xfer_func,
                ..Default::default()
            };
        }
        Ok(out)
    }

    /// The format the device picks for a S_FMT/TRY_FMT request.
    fn try_format(&self, s: &TestSession, t: QueueType, f: &v4l2_format) -> Format {
        let (pixfmt, w, h, asked) = if t.is_multiplanar() {
            // SAFETY: an MPLANE buffer type selects the `pix_mp` member (the crate checked `t`
            // against `f.type_`); every bit pattern is valid for these integers (also for the
            // `ycbcr_enc`/`hsv_enc` union of two u8).
            let p = unsafe { f.fmt.pix_mp };
            let ycbcr = unsafe { p.__bindgen_anon_1.ycbcr_enc };
            let c = Colorimetry {
                colorspace: p.colorspace,
                xfer_func: p.xfer_func.into(),
                ycbcr_enc: ycbcr.into(),
                quantization: p.quantization.into(),
            };
            (p.pixelformat, p.width, p.height, c)
        } else {
            // SAFETY: a single-planar video type selects the `pix` member; plain integers (the
            // union is two u32).
            let p = unsafe { f.fmt.pix };
            let ycbcr = unsafe { p.__bindgen_anon_1.ycbcr_enc };
            let c = Colorimetry {
                colorspace: p.colorspace,
                xfer_func: p.xfer_func,
                ycbcr_enc: ycbcr,
                quantization: p.quantization,
            };
            (p.pixelformat, p.width, p.height, c)
        };
        let mut fmt = if self.is_decoder() {
            decoder_format(s, self.spec.formats, t, pixfmt, w, h)
        } else {
            self.spec.adjust(pixfmt, w, h)
        };
        if self.is_m2m() {
            fmt.color = if is_capture(t) {
                // CAPTURE follows OUTPUT.
                s.output.as_ref().map(|q| q.fmt.color).unwrap_or_default()
            } else {
                sane_colorimetry(asked)
            };
        }
        fmt
    }

    /// Whether queue `t` of session `s` may change its format or buffers (else `EBUSY`).
    fn check_owner(&self, s: &TestSession) -> Result<(), i32> {
        match self.owner {
            Some(o) if !self.is_m2m() && o != s.id => Err(libc::EBUSY),
            _ => Ok(()),
        }
    }

    fn unregister(&mut self, q: &mut Queue) {
        for b in q.bufs.drain(..) {
            for p in b.planes {
                if let Backing::Mmap { offset, .. } = p {
                    self.mmap.unregister_buffer(offset);
                }
            }
        }
        q.queued.clear();
    }

    /// Allocates buffers `first..first + count` of queue `q` with plane sizes `sizes`.
    fn alloc(
        &mut self,
        q: &mut Queue,
        memory: MemoryType,
        count: u32,
        sizes: &[u32],
    ) -> Result<u32, i32> {
        let first = q.bufs.len() as u32;
        let count = count.min(MAX_BUFFERS.saturating_sub(first));
        let tflags = self.timestamp_flags(q.qtype);
        for index in first..first + count {
            let mut v4l2 = new_buffer(q.qtype, index, memory, sizes)?;
            v4l2.set_field(BufferField::None);
            v4l2.set_flags(tflags);
            let mut planes = Vec::with_capacity(sizes.len());
            for &size in sizes {
                planes.push(match memory {
                    MemoryType::Mmap => {
                        let fd = MemFdBuffer::new(size as u64).map_err(|e| {
                            warn!("cannot allocate a {size}-byte MMAP buffer: {e:#}");
                            libc::ENOMEM
                        })?;
                        let offset = self
                            .mmap
                            .register_buffer(None, size)
                            .map_err(|_| libc::ENOMEM)?;
                        Backing::Mmap { fd, offset }
                    }
                    _ => Backing::User(Vec::new()),
                });
            }
            match v4l2.planes_with_backing_iter_mut() {
                V4l2PlanesWithBackingMut::Mmap(it) => {
                    for ((mut p, size), b) in it.zip(sizes).zip(&planes) {
                        *p.length = *size;
                        if let Backing::Mmap { offset, .. } = b {
                            p.set_mem_offset(*offset);
                        }
                    }
                }
                V4l2PlanesWithBackingMut::UserPtr(it) => {
                    for (mut p, size) in it.zip(sizes) {
                        *p.length = *size;
                    }
                }
                _ => return Err(libc::EINVAL),
            }
            q.bufs.push(Buf {
                state: BufState::Idle,
                sizes: sizes.to_vec(),
                v4l2,
                planes,
            });
        }
        q.memory = memory;
        Ok(count)
    }

    fn buf_caps() -> u32 {
        (BufferCapabilities::SUPPORTS_MMAP
            | BufferCapabilities::SUPPORTS_USERPTR
            | BufferCapabilities::SUPPORTS_ORPHANED_BUFS)
            .bits()
    }

    /// Checks a QBUF/PREPARE_BUF request against the buffer and takes what it brings: for
    /// USERPTR the guest pages of each plane (at least the plane's size, else `EINVAL`), for
    /// OUTPUT queues bytesused (0 means the whole plane), data_offset and the timestamp.
    fn accept(
        &mut self,
        s: &mut TestSession,
        buffer: &V4l2Buffer,
        regions: Vec<Vec<SgEntry>>,
        prepare: bool,
    ) -> Result<usize, i32> {
        let t = buffer.queue();
        let q = s.queue_mut(t)?;
        let index = buffer.index() as usize;
        if buffer.memory() != q.memory {
            return Err(libc::EINVAL);
        }
        let b = q.bufs.get_mut(index).ok_or(libc::EINVAL)?;
        match (b.state, prepare) {
            (BufState::Queued, _) | (BufState::Prepared, true) => return Err(libc::EINVAL),
            _ => (),
        }
        let nplanes = b.planes.len();
        if buffer.num_planes() < nplanes {
            return Err(libc::EINVAL);
        }
        let sizes = b.sizes.clone();
        // What an OUTPUT plane may carry: its size (MMAP) or the user's buffer (USERPTR).
        let mut caps = sizes.clone();
        // QBUF of a prepared buffer uses what PREPARE_BUF took (vb2 ignores the new pointers).
        let prepared = !prepare && b.state == BufState::Prepared;
        if q.memory == MemoryType::UserPtr && !prepared {
            // The crate reads an SG list for each plane of non-zero length, in plane order.
            let lens: Vec<u32> = buffer.planes_iter().map(|p| *p.length).collect();
            if lens.iter().take(nplanes).any(|&l| l == 0) || regions.len() < nplanes {
                return Err(libc::EINVAL);
            }
            let mut regions = regions;
            for (p, sgs) in regions.iter_mut().enumerate().take(nplanes) {
                let total: u64 = sgs.iter().map(|sg| u64::from(sg.len)).sum();
                // Only the plane's bytes (at most MAX_PLANE) are ever mapped.
                let cap = total.min(u64::from(lens[p])).min(u64::from(MAX_PLANE)) as u32;
                trim_sgs(sgs, cap);
                caps[p] = cap;
                if lens[p] < sizes[p] || total < u64::from(sizes[p]) {
                    warn!(
                        "USERPTR plane {p}: {} bytes in {} SG entries, length {}, needs {}",
                        total,
                        sgs.len(),
                        lens[p],
                        sizes[p]
                    );
                    return Err(libc::EINVAL);
                }
            }
            for (backing, sgs) in b.planes.iter_mut().zip(regions) {
                *backing = Backing::User(sgs);
            }
            // Echo the user's pointers and lengths back, as vb2 does.
            let mut v = buffer.clone();
            v.set_flags(b.v4l2.flags());
            v.set_field(BufferField::None);
            // Shrinks only (num_planes >= nplanes was checked above).
            v.set_num_planes(nplanes).map_err(|_| libc::EINVAL)?;
            b.v4l2 = v;
        }
        if !is_capture(t) && !prepared {
            let mut used = Vec::with_capacity(nplanes);
            for (p, src) in buffer.planes_iter().take(nplanes).enumerate() {
                let len = caps[p];
                let bytesused = if *src.bytesused == 0 {
                    len
                } else {
                    *src.bytesused
                };
                let off = src.data_offset.copied().unwrap_or(0);
                if bytesused > len || (off != 0 && off >= bytesused) {
                    return Err(libc::EINVAL);
                }
                used.push((bytesused, off));
            }
            for (dst, (bytesused, off)) in b.v4l2.planes_iter_mut().zip(used) {
                *dst.bytesused = bytesused;
                if let Some(d) = dst.data_offset {
                    *d = off;
                }
            }
        }
        // Not done yet: no sequence; a timestamp only on a queued OUTPUT buffer (copied to the
        // buffers it produces), as vb2 reports them.
        b.v4l2.set_sequence(0);
        let ts = if !is_capture(t) && !prepare {
            buffer.timestamp()
        } else {
            bindings::timeval::default()
        };
        b.v4l2.set_timestamp(ts);
        Ok(index)
    }

    /// Reads the payload (bytesused bytes) of each plane of OUTPUT buffer `b`.
    fn read_planes(&self, b: &mut Buf) -> Result<Vec<Vec<u8>>, i32> {
        let used: Vec<u32> = b.v4l2.planes_iter().map(|p| *p.bytesused).collect();
        let mut out = Vec::with_capacity(b.planes.len());
        for (backing, n) in b.planes.iter_mut().zip(used) {
            let mut data = vec![0u8; n as usize];
            match backing {
                Backing::Mmap { fd, .. } => {
                    fd.as_file().read_exact_at(&mut data, 0).map_err(|e| {
                        warn!("reading an MMAP buffer: {e}");
                        libc::EIO
                    })?;
                }
                Backing::User(sgs) => {
                    let m = self.guest.new_mapping(std::mem::take(sgs)).map_err(|e| {
                        warn!("reading USERPTR guest pages: {e:#}");
                        libc::EFAULT
                    })?;
                    let src = m.data().get(..n as usize).ok_or(libc::EINVAL)?;
                    data.copy_from_slice(src);
                }
            }
            out.push(data);
        }
        Ok(out)
    }

    /// Writes plane payloads into CAPTURE buffer `b` (each cut to its plane) and sets bytesused.
    fn write_planes(&self, b: &mut Buf, data: &[Vec<u8>]) -> Result<(), i32> {
        let mut used = Vec::with_capacity(b.planes.len());
        for (p, backing) in b.planes.iter_mut().enumerate() {
            let src: &[u8] = data.get(p).map(|d| d.as_slice()).unwrap_or(&[]);
            let cap = match backing {
                Backing::Mmap { .. } => b.sizes.get(p).copied().unwrap_or(0) as usize,
                Backing::User(sgs) => sgs.iter().map(|sg| sg.len as usize).sum(),
            };
            let n = src.len().min(cap);
            match backing {
                Backing::Mmap { fd, .. } => {
                    fd.as_file().write_all_at(&src[..n], 0).map_err(|e| {
                        warn!("writing an MMAP buffer: {e}");
                        libc::EIO
                    })?;
                }
                Backing::User(sgs) => {
                    let mut m = self.guest.new_mapping(std::mem::take(sgs)).map_err(|e| {
                        warn!("mapping USERPTR guest pages: {e:#}");
                        libc::EFAULT
                    })?;
                    let dst = m.data_mut().get_mut(..n).ok_or(libc::EINVAL)?;
                    dst.copy_from_slice(&src[..n]);
                    // Dropping `m` writes the pages back.
                }
            }
            used.push(n as u32);
        }
        for (dst, n) in b.v4l2.planes_iter_mut().zip(used) {
            *dst.bytesused = n;
            if let Some(d) = dst.data_offset {
                *d = 0;
            }
        }
        Ok(())
    }

    /// Hands buffer `b` back to the driver with a DQBUF event.
    fn complete(evt: &mut Q, session: u32, b: &mut Buf, seq: u32, error: bool) {
        b.state = BufState::Idle;
        b.v4l2
            .clear_flags(BufferFlags::QUEUED | BufferFlags::PREPARED | BufferFlags::DONE);
        if error {
            b.v4l2.add_flags(BufferFlags::ERROR);
        }
        b.v4l2.set_sequence(seq);
        b.v4l2.set_field(BufferField::None);
        let out = b.v4l2.clone();
        b.v4l2.clear_flags(BufferFlags::ERROR | BufferFlags::LAST);
        evt.send_event(V4l2Event::DequeueBuffer(DequeueBufferEvent::new(
            session, out,
        )));
    }

    /// Runs whatever the session's queues allow now.
    fn process(&mut self, s: &mut TestSession) {
        match self.spec.kind {
            Kind::Capture => self.process_capture(s),
            Kind::Output => self.process_output(s),
            Kind::M2m => self.process_m2m(s),
            Kind::Decoder => self.process_decoder(s),
        }
    }

    fn process_capture(&mut self, s: &mut TestSession) {
        let Some(q) = s.capture.as_mut() else { return };
        if !q.streaming {
            return;
        }
        while let Some(i) = q.queued.pop_front() {
            let seq = q.sequence;
            q.sequence = q.sequence.wrapping_add(1);
            let ts = self.next_timestamp();
            let Some(b) = q.bufs.get_mut(i) else { continue };
            let res = self.fill_capture(b, seq);
            b.v4l2.set_timestamp(ts);
            Self::complete(&mut self.evt, s.id, b, seq, res.is_err());
        }
    }

    /// Fills capture buffer `b` with frame `seq` of the pattern (every plane, its whole
    /// allocated size) and sets its bytesused: the frame generator of the capture profiles, also
    /// what `--produce-rate` runs ([`produce_rate`]).
    fn fill_capture(&self, b: &mut Buf, seq: u32) -> Result<(), i32> {
        let data: Vec<Vec<u8>> = b
            .sizes
            .iter()
            .enumerate()
            .map(|(p, &size)| {
                let mut v = vec![0u8; size as usize];
                fill_pattern(&mut v, seq, p);
                v
            })
            .collect();
        self.write_planes(b, &data)
    }

    fn process_output(&mut self, s: &mut TestSession) {
        let Some(q) = s.output.as_mut() else { return };
        if !q.streaming {
            return;
        }
        while let Some(i) = q.queued.pop_front() {
            let seq = q.sequence;
            q.sequence = q.sequence.wrapping_add(1);
            let Some(b) = q.bufs.get_mut(i) else { continue };
            let res = self.read_planes(b);
            match &res {
                Ok(planes) => {
                    let all: Vec<u8> = planes.concat();
                    info!(
                        "output frame {seq} bytesused {} crc32 {:08x}",
                        all.len(),
                        crc32(&all)
                    );
                }
                Err(e) => warn!("output frame {seq}: cannot read it (errno {e})"),
            }
            Self::complete(&mut self.evt, s.id, b, seq, res.is_err());
        }
    }

    fn process_m2m(&mut self, s: &mut TestSession) {
        let (Some(out), Some(cap)) = (s.output.as_mut(), s.capture.as_mut()) else {
            return;
        };
        if !out.streaming || !cap.streaming {
            return;
        }
        while !out.queued.is_empty() && !cap.queued.is_empty() {
            let (Some(oi), Some(ci)) = (out.queued.pop_front(), cap.queued.pop_front()) else {
                break;
            };
            let oseq = out.sequence;
            out.sequence = out.sequence.wrapping_add(1);
            let cseq = cap.sequence;
            cap.sequence = cap.sequence.wrapping_add(1);
            let (Some(ob), Some(cb)) = (out.bufs.get_mut(oi), cap.bufs.get_mut(ci)) else {
                continue;
            };
            let res = self
                .read_planes(ob)
                .and_then(|data| self.write_planes(cb, &data));
            cb.v4l2.set_timestamp(ob.v4l2.timestamp());
            Self::complete(&mut self.evt, s.id, ob, oseq, false);
            Self::complete(&mut self.evt, s.id, cb, cseq, res.is_err());
        }
    }
}

// `v4l2_buffer` (64-bit layout, 88 bytes) and `v4l2_plane` (64 bytes) offsets.
const BUF_INDEX: usize = 0;
const BUF_TYPE: usize = 4;
const BUF_BYTESUSED: usize = 8;
const BUF_SIZE: usize = 88;
const PLANE_BYTESUSED: usize = 0;
const PLANE_DATA_OFFSET: usize = 16;
const PLANE_SIZE: usize = 64;

impl<Q, HM> TestDevice<Q, HM>
where
    Q: VirtioMediaEventQueue,
    HM: VirtioMediaHostMemoryMapper,
{
    /// QBUF of a PREPARED buffer: vb2 ignores the payload fields (the prepared values stand),
    /// but the crate's parser refuses `bytesused > length` before we see the buffer; put the
    /// prepared values into the request so that it parses.
    fn fix_prepared_qbuf(&self, s: &TestSession, reader: &mut CmdReader) {
        let pos = reader.position() as usize;
        let data = reader.get_mut();
        let word = |d: &[u8], o: usize| {
            d.get(pos + o..pos + o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(index), Some(t)) = (word(data, BUF_INDEX), word(data, BUF_TYPE)) else {
            return;
        };
        let Some(t) = QueueType::n(t) else { return };
        let Ok(q) = s.queue(t) else { return };
        let Some(b) = q.bufs.get(index as usize) else {
            return;
        };
        if b.state != BufState::Prepared {
            return;
        }
        let mut put = |o: usize, v: u32| {
            if let Some(d) = data.get_mut(pos + o..pos + o + 4) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        };
        if t.is_multiplanar() {
            for (i, p) in b.v4l2.planes_iter().enumerate() {
                let base = BUF_SIZE + i * PLANE_SIZE;
                put(base + PLANE_BYTESUSED, *p.bytesused);
                put(
                    base + PLANE_DATA_OFFSET,
                    p.data_offset.copied().unwrap_or(0),
                );
            }
        } else {
            put(BUF_BYTESUSED, *b.v4l2.get_first_plane().bytesused);
        }
    }
}

impl<Q, HM> VirtioMediaDevice<CmdReader, CmdWriter> for TestDevice<Q, HM>
where
    Q: VirtioMediaEventQueue,
    HM: VirtioMediaHostMemoryMapper,
{
    type Session = TestSession;

    fn new_session(&mut self, id: u32) -> Result<TestSession, i32> {
        let f = self.spec.default_format();
        let (codec, out_fmt) = if self.is_decoder() {
            let coded = Format {
                fourcc: decoder::OUTPUT_FORMATS[0],
                ..f
            };
            (Some(decoder::Codec::new()?), coded)
        } else {
            (None, f)
        };
        Ok(TestSession {
            id,
            capture: self.spec.capture_type().map(|t| Queue::new(t, f)),
            output: self.spec.output_type().map(|t| Queue::new(t, out_fmt)),
            codec,
        })
    }

    fn close_session(&mut self, mut s: TestSession) {
        if self.owner == Some(s.id) {
            self.owner = None;
        }
        self.label_subs.remove(&s.id);
        for q in [s.capture.take(), s.output.take()].into_iter().flatten() {
            let mut q = q;
            self.unregister(&mut q);
        }
    }

    fn do_ioctl(
        &mut self,
        session: &mut TestSession,
        ioctl: V4l2Ioctl,
        reader: &mut CmdReader,
        writer: &mut CmdWriter,
    ) -> IoResult<()> {
        if ioctl == V4l2Ioctl::VIDIOC_QBUF {
            self.fix_prepared_qbuf(session, reader);
        }
        match ioctl {
            // The crate's dispatcher unwraps the event type and flags (quirks.rs).
            V4l2Ioctl::VIDIOC_SUBSCRIBE_EVENT
                if (self.is_decoder() || self.label.is_some())
                    && crate::quirks::subscription_panics_crate(
                        reader
                            .get_ref()
                            .get(usize::try_from(reader.position()).unwrap_or(usize::MAX)..)
                            .unwrap_or(&[]),
                    ) =>
            {
                writer.write_err_response(libc::EINVAL)
            }
            // No events but the decoder's and the label's.
            V4l2Ioctl::VIDIOC_SUBSCRIBE_EVENT | V4l2Ioctl::VIDIOC_UNSUBSCRIBE_EVENT
                if !self.is_decoder() && self.label.is_none() =>
            {
                writer.write_err_response(libc::ENOTTY)
            }
            // An M2M device that is not a stateful encoder has no G/S_PARM at all: ENOTTY for
            // every buffer type (the crate's dispatcher answers EINVAL for an unknown type
            // before the handler is asked).
            V4l2Ioctl::VIDIOC_G_PARM | V4l2Ioctl::VIDIOC_S_PARM if self.is_m2m() => {
                writer.write_err_response(libc::ENOTTY)
            }
            V4l2Ioctl::VIDIOC_QUERYCTRL | V4l2Ioctl::VIDIOC_QUERY_EXT_CTRL if self.is_decoder() => {
                decoder::query_ctrl_ioctl(ioctl == V4l2Ioctl::VIDIOC_QUERY_EXT_CTRL, reader, writer)
            }
            V4l2Ioctl::VIDIOC_QUERYCTRL if self.label.is_some() => {
                self.query_label(false, reader, writer)
            }
            V4l2Ioctl::VIDIOC_QUERY_EXT_CTRL if self.label.is_some() => {
                self.query_label(true, reader, writer)
            }
            _ => virtio_media_dispatch_ioctl(self, session, ioctl, reader, writer),
        }
    }

    fn do_mmap(
        &mut self,
        session: &mut TestSession,
        flags: u32,
        offset: u32,
    ) -> Result<(u64, u64), i32> {
        let rw = flags & VIRTIO_MEDIA_MMAP_FLAG_RW != 0;
        let fd = [&session.capture, &session.output]
            .into_iter()
            .flatten()
            .flat_map(|q| q.bufs.iter())
            .flat_map(|b| b.planes.iter())
            .find_map(|p| match p {
                Backing::Mmap { fd, offset: o } if *o == offset => Some(fd),
                _ => None,
            })
            .ok_or(libc::EINVAL)?;
        self.mmap
            .create_mapping(offset, fd.as_file().as_fd(), rw)
            .map_err(|_| libc::EINVAL)
    }

    fn do_munmap(&mut self, guest_addr: u64) -> Result<(), i32> {
        self.mmap
            .remove_mapping(guest_addr)
            .map(|_| ())
            .map_err(|_| libc::EINVAL)
    }
}

fn name32(s: &[u8]) -> [u8; 32] {
    let mut n = [0u8; 32];
    let l = s.len().min(31);
    n[..l].copy_from_slice(&s[..l]);
    n
}

impl<Q, HM> VirtioMediaIoctlHandler for TestDevice<Q, HM>
where
    Q: VirtioMediaEventQueue,
    HM: VirtioMediaHostMemoryMapper,
{
    type Session = TestSession;

    /// VIDIOC_G_CTRL/S_CTRL: the label is a string, which the kernel refuses with `EINVAL`
    /// there (`v4l2_g_ctrl`/`v4l2_s_ctrl`: only integer-valued controls), as any unknown id.
    /// The decoder's controls are integers, answered by decoder.rs.
    fn g_ctrl(&mut self, s: &TestSession, id: u32) -> IoctlResult<bindings::v4l2_control> {
        if let Some(c) = s.codec.as_ref() {
            return c.g_ctrl(id);
        }
        Err(if self.label.is_some() {
            libc::EINVAL
        } else {
            libc::ENOTTY
        })
    }

    fn s_ctrl(
        &mut self,
        s: &mut TestSession,
        id: u32,
        _value: i32,
    ) -> IoctlResult<bindings::v4l2_control> {
        if let Some(c) = s.codec.as_ref() {
            return c.s_ctrl(id);
        }
        Err(if self.label.is_some() {
            libc::EINVAL
        } else {
            libc::ENOTTY
        })
    }

    fn g_ext_ctrls(
        &mut self,
        s: &TestSession,
        which: CtrlWhich,
        ctrls: &mut bindings::v4l2_ext_controls,
        ctrl_array: &mut Vec<bindings::v4l2_ext_control>,
        regions: Vec<Vec<SgEntry>>,
    ) -> IoctlResult<()> {
        if let Some(c) = s.codec.as_ref() {
            return c.ext_ctrls(b'G', which, ctrls, ctrl_array);
        }
        self.label_ctrls(b'G', s.id, which, ctrls, ctrl_array, regions)
    }

    fn s_ext_ctrls(
        &mut self,
        s: &mut TestSession,
        which: CtrlWhich,
        ctrls: &mut bindings::v4l2_ext_controls,
        ctrl_array: &mut Vec<bindings::v4l2_ext_control>,
        regions: Vec<Vec<SgEntry>>,
    ) -> IoctlResult<()> {
        if let Some(c) = s.codec.as_ref() {
            return c.ext_ctrls(b'S', which, ctrls, ctrl_array);
        }
        self.label_ctrls(b'S', s.id, which, ctrls, ctrl_array, regions)
    }

    fn try_ext_ctrls(
        &mut self,
        s: &TestSession,
        which: CtrlWhich,
        ctrls: &mut bindings::v4l2_ext_controls,
        ctrl_array: &mut Vec<bindings::v4l2_ext_control>,
        regions: Vec<Vec<SgEntry>>,
    ) -> IoctlResult<()> {
        if let Some(c) = s.codec.as_ref() {
            return c.ext_ctrls(b'T', which, ctrls, ctrl_array);
        }
        self.label_ctrls(b'T', s.id, which, ctrls, ctrl_array, regions)
    }

    fn enum_fmt(&mut self, s: &TestSession, t: QueueType, index: u32) -> IoctlResult<v4l2_fmtdesc> {
        s.queue(t)?;
        let f = self.formats_of(t).get(index as usize).ok_or(libc::EINVAL)?;
        let mut d = v4l2_fmtdesc {
            index,
            type_: t as u32,
            pixelformat: PixelFormat::from_fourcc(f).to_u32(),
            ..Default::default()
        };
        if f == b"H264" {
            d.flags = bindings::V4L2_FMT_FLAG_COMPRESSED
                | bindings::V4L2_FMT_FLAG_CONTINUOUS_BYTESTREAM
                | bindings::V4L2_FMT_FLAG_DYN_RESOLUTION;
        }
        let name = description(f);
        d.description[..name.len()].copy_from_slice(name);
        Ok(d)
    }

    fn g_fmt(&mut self, s: &TestSession, t: QueueType) -> IoctlResult<v4l2_format> {
        let f = self.fmt_of(s, t)?;
        self.v4l2_format(t, f)
    }

    fn try_fmt(
        &mut self,
        s: &TestSession,
        t: QueueType,
        f: v4l2_format,
    ) -> IoctlResult<v4l2_format> {
        s.queue(t)?;
        let f = self.try_format(s, t, &f);
        self.v4l2_format(t, f)
    }

    fn s_fmt(
        &mut self,
        s: &mut TestSession,
        t: QueueType,
        f: v4l2_format,
    ) -> IoctlResult<v4l2_format> {
        let new = self.try_format(s, t, &f);
        let m2m = self.is_m2m();
        let busy = {
            let q = s.queue(t)?;
            !q.bufs.is_empty() || q.streaming
        };
        // Another session's buffers pin a capture/output device's format too.
        let other_owner = !m2m && matches!(self.owner, Some(o) if o != s.id);
        if busy || other_owner {
            if self.fmt_of(s, t)? == new {
                return self.v4l2_format(t, new);
            }
            return Err(libc::EBUSY);
        }
        if m2m {
            s.queue_mut(t)?.fmt = new;
            if !is_capture(t) {
                // CAPTURE's colorimetry follows OUTPUT's.
                if let Some(c) = s.capture.as_mut() {
                    c.fmt.color = new.color;
                    // A decoder's CAPTURE size follows the coded size until the stream
                    // announces its own (dev-decoder.rst, Initialization).
                    let known = s.codec.as_ref().is_some_and(|c| c.stream_known());
                    if self.is_decoder() && !known && c.bufs.is_empty() {
                        c.fmt.width = new.width;
                        c.fmt.height = new.height;
                    }
                }
            }
        } else {
            self.shared_fmt[usize::from(!is_capture(t))] = new;
        }
        self.v4l2_format(t, new)
    }

    fn enum_framesizes(
        &mut self,
        _s: &TestSession,
        index: u32,
        pixel_format: u32,
    ) -> IoctlResult<bindings::v4l2_frmsizeenum> {
        if self.is_decoder() {
            return decoder::frame_sizes(index, pixel_format, self.spec.formats);
        }
        if !self
            .spec
            .formats
            .iter()
            .any(|f| u32::from_le_bytes(*f) == pixel_format)
        {
            return Err(libc::EINVAL);
        }
        let &(width, height) = self.spec.sizes.get(index as usize).ok_or(libc::EINVAL)?;
        Ok(bindings::v4l2_frmsizeenum {
            index,
            pixel_format,
            type_: bindings::v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE,
            __bindgen_anon_1: bindings::v4l2_frmsizeenum__bindgen_ty_1 {
                discrete: bindings::v4l2_frmsize_discrete { width, height },
            },
            ..Default::default()
        })
    }

    fn enum_frameintervals(
        &mut self,
        _s: &TestSession,
        index: u32,
        pixel_format: u32,
        width: u32,
        height: u32,
    ) -> IoctlResult<bindings::v4l2_frmivalenum> {
        if self.is_m2m() {
            // M2M devices other than encoders have no frame intervals (v4l2-compliance).
            return Err(libc::ENOTTY);
        }
        if index > 0
            || !self
                .spec
                .formats
                .iter()
                .any(|f| u32::from_le_bytes(*f) == pixel_format)
            || !self.spec.sizes.contains(&(width, height))
        {
            return Err(libc::EINVAL);
        }
        Ok(bindings::v4l2_frmivalenum {
            index,
            pixel_format,
            width,
            height,
            type_: bindings::v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_DISCRETE,
            __bindgen_anon_1: bindings::v4l2_frmivalenum__bindgen_ty_1 {
                discrete: bindings::v4l2_fract {
                    numerator: 1,
                    denominator: FPS,
                },
            },
            ..Default::default()
        })
    }

    fn g_parm(&mut self, s: &TestSession, t: QueueType) -> IoctlResult<bindings::v4l2_streamparm> {
        if self.is_m2m() {
            return Err(libc::ENOTTY);
        }
        s.queue(t)?;
        let mut parm = bindings::v4l2_streamparm {
            type_: t as u32,
            ..Default::default()
        };
        let tpf = bindings::v4l2_fract {
            numerator: 1,
            denominator: FPS,
        };
        if is_capture(t) {
            parm.parm.capture = bindings::v4l2_captureparm {
                capability: bindings::V4L2_CAP_TIMEPERFRAME,
                timeperframe: tpf,
                readbuffers: 0,
                ..Default::default()
            };
        } else {
            parm.parm.output = bindings::v4l2_outputparm {
                capability: bindings::V4L2_CAP_TIMEPERFRAME,
                timeperframe: tpf,
                ..Default::default()
            };
        }
        Ok(parm)
    }

    fn s_parm(
        &mut self,
        s: &mut TestSession,
        parm: bindings::v4l2_streamparm,
    ) -> IoctlResult<bindings::v4l2_streamparm> {
        // A fixed frame rate: S_PARM answers what G_PARM says.
        let t = QueueType::n(parm.type_).ok_or(libc::EINVAL)?;
        self.g_parm(s, t)
    }

    fn enuminput(&mut self, _s: &TestSession, index: u32) -> IoctlResult<bindings::v4l2_input> {
        if self.spec.kind != Kind::Capture || index > 0 {
            return Err(if self.spec.kind != Kind::Capture {
                libc::ENOTTY
            } else {
                libc::EINVAL
            });
        }
        Ok(bindings::v4l2_input {
            index,
            name: name32(b"Pattern"),
            type_: bindings::V4L2_INPUT_TYPE_CAMERA,
            ..Default::default()
        })
    }

    fn g_input(&mut self, _s: &TestSession) -> IoctlResult<i32> {
        if self.spec.kind != Kind::Capture {
            return Err(libc::ENOTTY);
        }
        Ok(0)
    }

    fn s_input(&mut self, _s: &mut TestSession, input: i32) -> IoctlResult<i32> {
        match (self.spec.kind, input) {
            (Kind::Capture, 0) => Ok(0),
            (Kind::Capture, _) => Err(libc::EINVAL),
            _ => Err(libc::ENOTTY),
        }
    }

    fn enumoutput(&mut self, _s: &TestSession, index: u32) -> IoctlResult<bindings::v4l2_output> {
        if self.spec.kind != Kind::Output {
            return Err(libc::ENOTTY);
        }
        if index > 0 {
            return Err(libc::EINVAL);
        }
        Ok(bindings::v4l2_output {
            index,
            name: name32(b"Sink"),
            type_: bindings::V4L2_OUTPUT_TYPE_ANALOG,
            ..Default::default()
        })
    }

    fn g_output(&mut self, _s: &TestSession) -> IoctlResult<i32> {
        if self.spec.kind != Kind::Output {
            return Err(libc::ENOTTY);
        }
        Ok(0)
    }

    fn s_output(&mut self, _s: &mut TestSession, output: i32) -> IoctlResult<i32> {
        match (self.spec.kind, output) {
            (Kind::Output, 0) => Ok(0),
            (Kind::Output, _) => Err(libc::EINVAL),
            _ => Err(libc::ENOTTY),
        }
    }

    fn reqbufs(
        &mut self,
        s: &mut TestSession,
        t: QueueType,
        memory: MemoryType,
        count: u32,
        _flags: MemoryConsistency,
    ) -> IoctlResult<v4l2_requestbuffers> {
        if !matches!(memory, MemoryType::Mmap | MemoryType::UserPtr) {
            return Err(libc::EINVAL);
        }
        let fmt = self.fmt_of(s, t)?;
        if s.queue(t)?.streaming {
            return Err(libc::EBUSY);
        }
        self.check_owner(s)?;
        let sizes: Vec<u32> = layout(&fmt.fourcc, fmt.width, fmt.height)
            .ok_or(libc::EINVAL)?
            .iter()
            .map(|p| p.sizeimage)
            .collect();
        let mut q = std::mem::replace(s.queue_mut(t)?, Queue::new(t, fmt));
        self.unregister(&mut q);
        q.memory = memory;
        let res = if count == 0 {
            Ok(0)
        } else {
            self.alloc(&mut q, memory, count, &sizes)
        };
        let has_bufs = !q.bufs.is_empty();
        *s.queue_mut(t)? = q;
        if is_capture(t) {
            if let Some(c) = s.codec.as_mut() {
                c.capture_allocated(has_bufs.then_some(&fmt));
            }
        }
        let count = res?;
        if !self.is_m2m() {
            let any = [&s.capture, &s.output]
                .into_iter()
                .flatten()
                .any(|q| !q.bufs.is_empty());
            self.owner = if has_bufs || any { Some(s.id) } else { None };
        }
        Ok(v4l2_requestbuffers {
            count,
            type_: t as u32,
            memory: memory as u32,
            capabilities: Self::buf_caps(),
            flags: 0,
            ..Default::default()
        })
    }

    fn create_bufs(
        &mut self,
        s: &mut TestSession,
        count: u32,
        t: QueueType,
        memory: MemoryType,
        format: v4l2_format,
    ) -> IoctlResult<bindings::v4l2_create_buffers> {
        if !matches!(memory, MemoryType::Mmap | MemoryType::UserPtr) {
            return Err(libc::EINVAL);
        }
        let fmt = self.fmt_of(s, t)?;
        self.check_owner(s)?;
        let need: Vec<u32> = layout(&fmt.fourcc, fmt.width, fmt.height)
            .ok_or(libc::EINVAL)?
            .iter()
            .map(|p| p.sizeimage)
            .collect();
        // The sizes asked for: at least the current format's (vb2 queue_setup rule).
        let sizes: Vec<u32> = if t.is_multiplanar() {
            // SAFETY: MPLANE type (checked against `format.type_` by the crate): `pix_mp`.
            let p = unsafe { format.fmt.pix_mp };
            if p.num_planes as usize != need.len() {
                return Err(libc::EINVAL);
            }
            p.plane_fmt[..need.len()]
                .iter()
                .map(|f| f.sizeimage)
                .collect()
        } else {
            // SAFETY: single-planar video type: `pix`.
            vec![unsafe { format.fmt.pix }.sizeimage]
        };
        if sizes
            .iter()
            .zip(&need)
            .any(|(s, n)| s < n || *s > MAX_PLANE)
        {
            return Err(libc::EINVAL);
        }
        let mut q = std::mem::replace(s.queue_mut(t)?, Queue::new(t, fmt));
        if !q.bufs.is_empty() && q.memory != memory {
            *s.queue_mut(t)? = q;
            return Err(libc::EINVAL);
        }
        let index = q.bufs.len() as u32;
        let res = if count == 0 {
            Ok(0)
        } else {
            self.alloc(&mut q, memory, count, &sizes)
        };
        let has_bufs = !q.bufs.is_empty();
        *s.queue_mut(t)? = q;
        if is_capture(t) && index == 0 {
            if let Some(c) = s.codec.as_mut() {
                c.capture_allocated(has_bufs.then_some(&fmt));
            }
        }
        let count = res?;
        if !self.is_m2m() && has_bufs {
            self.owner = Some(s.id);
        }
        Ok(bindings::v4l2_create_buffers {
            index,
            count,
            memory: memory as u32,
            format,
            capabilities: Self::buf_caps(),
            ..Default::default()
        })
    }

    fn querybuf(&mut self, s: &TestSession, t: QueueType, index: u32) -> IoctlResult<V4l2Buffer> {
        let q = s.queue(t)?;
        let b = q.bufs.get(index as usize).ok_or(libc::EINVAL)?;
        Ok(b.v4l2.clone())
    }

    fn prepare_buf(
        &mut self,
        s: &mut TestSession,
        buffer: V4l2Buffer,
        regions: Vec<Vec<SgEntry>>,
    ) -> IoctlResult<V4l2Buffer> {
        let i = self.accept(s, &buffer, regions, true)?;
        let q = s.queue_mut(buffer.queue())?;
        let b = q.bufs.get_mut(i).ok_or(libc::EINVAL)?;
        b.state = BufState::Prepared;
        b.v4l2.add_flags(BufferFlags::PREPARED);
        Ok(b.v4l2.clone())
    }

    fn qbuf(
        &mut self,
        s: &mut TestSession,
        buffer: V4l2Buffer,
        regions: Vec<Vec<SgEntry>>,
    ) -> IoctlResult<V4l2Buffer> {
        let i = self.accept(s, &buffer, regions, false)?;
        let q = s.queue_mut(buffer.queue())?;
        let b = q.bufs.get_mut(i).ok_or(libc::EINVAL)?;
        b.state = BufState::Queued;
        b.v4l2
            .clear_flags(BufferFlags::PREPARED | BufferFlags::DONE);
        b.v4l2.add_flags(BufferFlags::QUEUED);
        let answer = b.v4l2.clone();
        q.queued.push_back(i);
        self.process(s);
        Ok(answer)
    }

    fn streamon(&mut self, s: &mut TestSession, t: QueueType) -> IoctlResult<()> {
        let q = s.queue_mut(t)?;
        if q.bufs.is_empty() {
            return Err(libc::EINVAL);
        }
        if !q.streaming {
            q.streaming = true;
            q.sequence = 0;
        }
        if self.is_decoder() {
            self.decoder_streamon(s);
        }
        self.process(s);
        Ok(())
    }

    fn streamoff(&mut self, s: &mut TestSession, t: QueueType) -> IoctlResult<()> {
        let q = s.queue_mut(t)?;
        let was_streaming = q.streaming;
        q.stop();
        if self.is_decoder() {
            self.decoder_streamoff(s, t, was_streaming);
            self.process(s);
        }
        Ok(())
    }

    fn subscribe_event(
        &mut self,
        s: &mut TestSession,
        event: EventType,
        flags: SubscribeEventFlags,
    ) -> IoctlResult<()> {
        if let EventType::Ctrl(id) = event {
            if self.is_decoder() {
                return self.decoder_subscribe_ctrl(s, id, flags);
            }
            return self.subscribe_label(s.id, id, flags);
        }
        let Some(codec) = s.codec.as_mut() else {
            // A device with controls has SUBSCRIBE_EVENT, for them only.
            return Err(if self.label.is_some() {
                libc::EINVAL
            } else {
                libc::ENOTTY
            });
        };
        match event {
            EventType::SourceChange(0) => codec.subscription(decoder::EVENT_SOURCE_CHANGE, true),
            EventType::Eos => codec.subscription(decoder::EVENT_EOS, true),
            _ => Err(libc::EINVAL),
        }
    }

    fn unsubscribe_event(
        &mut self,
        s: &mut TestSession,
        event: bindings::v4l2_event_subscription,
    ) -> IoctlResult<()> {
        // As v4l2_event_unsubscribe: removing what is not subscribed succeeds.
        if event.type_ == bindings::V4L2_EVENT_ALL
            || (event.type_ == bindings::V4L2_EVENT_CTRL && event.id == LABEL_CID)
        {
            self.label_subs.remove(&s.id);
        }
        if event.type_ == bindings::V4L2_EVENT_CTRL && self.label.is_some() {
            return Ok(());
        }
        let Some(codec) = s.codec.as_mut() else {
            return if self.label.is_some() {
                Ok(())
            } else {
                Err(libc::ENOTTY)
            };
        };
        codec.unsubscribe(event.type_, event.id)
    }

    fn try_decoder_cmd(
        &mut self,
        s: &TestSession,
        cmd: bindings::v4l2_decoder_cmd,
    ) -> IoctlResult<bindings::v4l2_decoder_cmd> {
        if s.codec.is_none() {
            return Err(libc::ENOTTY);
        }
        Self::try_dec_cmd(&cmd)
    }

    fn decoder_cmd(
        &mut self,
        s: &mut TestSession,
        cmd: bindings::v4l2_decoder_cmd,
    ) -> IoctlResult<bindings::v4l2_decoder_cmd> {
        // Not a decoder: no decoder commands at all (ENOTTY, as for TRY_DECODER_CMD).
        if s.codec.is_none() {
            return Err(libc::ENOTTY);
        }
        self.dec_cmd(s, &cmd)
    }

    fn g_selection(
        &mut self,
        s: &TestSession,
        sel_type: SelectionType,
        target: SelectionTarget,
    ) -> IoctlResult<bindings::v4l2_rect> {
        // A decoder's CAPTURE compose rectangle: the visible frame, which here is the whole
        // format (the device gives frames cropped to the stream's visible size).
        let q = s
            .capture
            .as_ref()
            .filter(|_| self.is_decoder())
            .ok_or(libc::ENOTTY)?;
        match (sel_type, target) {
            (
                SelectionType::Capture,
                SelectionTarget::Compose
                | SelectionTarget::ComposeDefault
                | SelectionTarget::ComposeBounds
                | SelectionTarget::ComposePadded,
            ) => Ok(bindings::v4l2_rect {
                left: 0,
                top: 0,
                width: q.fmt.width,
                height: q.fmt.height,
            }),
            _ => Err(libc::EINVAL),
        }
    }

    fn s_selection(
        &mut self,
        s: &mut TestSession,
        sel_type: SelectionType,
        target: SelectionTarget,
        _rect: bindings::v4l2_rect,
        _flags: SelectionFlags,
    ) -> IoctlResult<bindings::v4l2_rect> {
        // The decoder neither crops nor scales: COMPOSE is read-only, setting it answers the
        // visible rectangle (as kernel decoders without a scaler do).
        if target != SelectionTarget::Compose {
            return Err(if self.is_decoder() {
                libc::EINVAL
            } else {
                libc::ENOTTY
            });
        }
        self.g_selection(s, sel_type, target)
    }
}

/// Event queue and shared-memory mapper of a device with no front end (`--produce-rate`,
/// unit tests): events are dropped, every mapping fails with `ENODEV`.
pub(crate) struct Detached;

impl VirtioMediaEventQueue for Detached {
    fn send_event(&mut self, _event: V4l2Event) {}
}

impl VirtioMediaHostMemoryMapper for Detached {
    fn add_mapping(
        &mut self,
        _: std::os::fd::BorrowedFd,
        _: u64,
        _: u64,
        _: bool,
    ) -> Result<u64, i32> {
        Err(libc::ENODEV)
    }
    fn remove_mapping(&mut self, _: u64) -> Result<(), i32> {
        Err(libc::ENODEV)
    }
}

/// The device's production rate (`vmrs-device --produce-rate`): runs the capture frame
/// generator ([`TestDevice::fill_capture`], what every buffer queued on a streaming capture
/// queue goes through) `frames` times into one MMAP buffer (a memfd, as REQBUFS allocates it) of
/// `fourcc` at `width`x`height`, with no guest. One untimed frame first puts the memfd's pages
/// in place (a streaming buffer has them after its first frame). Returns the time of the
/// `frames` timed ones.
pub fn produce_rate(
    spec: Spec,
    fourcc: [u8; 4],
    width: u32,
    height: u32,
    frames: u32,
) -> Result<std::time::Duration, String> {
    let name = String::from_utf8_lossy(&fourcc).into_owned();
    let qtype = match spec.kind {
        Kind::Capture => spec.capture_type().ok_or("no capture queue")?,
        k => return Err(format!("{k:?} profiles have no capture frame generator")),
    };
    if !spec.formats.contains(&fourcc) {
        return Err(format!("the profile has no format {name}"));
    }
    if !spec.sizes.contains(&(width, height)) {
        return Err(format!("the profile has no size {width}x{height}"));
    }
    let sizes: Vec<u32> = layout(&fourcc, width, height)
        .ok_or(format!("no layout for {name}"))?
        .iter()
        .map(|p| p.sizeimage)
        .collect();
    let mem = vm_memory::GuestMemoryAtomic::new(vm_memory::GuestMemoryMmap::new());
    let mut dev = TestDevice::new(spec, Detached, Detached, GuestMapper::new(mem));
    let fmt = spec.adjust(u32::from_le_bytes(fourcc), width, height);
    let mut q = Queue::new(qtype, fmt);
    dev.alloc(&mut q, MemoryType::Mmap, 1, &sizes)
        .map_err(|e| format!("cannot allocate the buffer (errno {e})"))?;
    let b = q.bufs.first_mut().ok_or("no buffer")?;
    let fill = |b: &mut Buf, seq| {
        dev.fill_capture(b, seq)
            .map_err(|e| format!("frame {seq}: errno {e}"))
    };
    fill(b, 0)?;
    let t = Instant::now();
    for seq in 1..=frames {
        fill(b, seq)?;
    }
    Ok(t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use virtio_media::io::ReadFromDescriptorChain;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<usize>>);
    impl VirtioMediaEventQueue for Events {
        fn send_event(&mut self, _event: V4l2Event) {
            *self.0.lock().unwrap() += 1;
        }
    }

    // No shared memory: every mapping fails (the produce-rate mode's mapper).
    use super::Detached as NoShm;

    type Dev = TestDevice<Events, NoShm>;

    /// YUYV 16x8: one plane of 256 bytes.
    const TINY: &[(u32, u32)] = &[(16, 8)];
    const YUYV: &[[u8; 4]] = &[*b"YUYV"];

    fn setup(kind: Kind) -> (Dev, TestSession, Events, GuestMemoryAtomic<GuestMemoryMmap>) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap(),
        );
        let spec = Spec {
            kind,
            mplane: false,
            formats: YUYV,
            sizes: TINY,
        };
        let ev = Events::default();
        let mut dev = TestDevice::new(spec, ev.clone(), NoShm, GuestMapper::new(mem.clone()));
        let s = <Dev as VirtioMediaDevice<CmdReader, CmdWriter>>::new_session(&mut dev, 1).unwrap();
        (dev, s, ev, mem)
    }

    fn sg(start: u64, len: u32) -> SgEntry {
        let mut b = start.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        std::io::Cursor::new(b).read_obj::<SgEntry>().unwrap()
    }

    fn userptr_buf(t: QueueType, bytesused: u32) -> V4l2Buffer {
        let mut b = new_buffer(t, 0, MemoryType::UserPtr, &[256]).unwrap();
        *b.get_first_plane_mut().bytesused = bytesused;
        b
    }

    #[test]
    fn userptr_capture_writes_the_pattern_into_guest_pages() {
        let (mut dev, mut s, ev, mem) = setup(Kind::Capture);
        let t = QueueType::VideoCapture;
        let r = dev.reqbufs(
            &mut s,
            t,
            MemoryType::UserPtr,
            1,
            MemoryConsistency::empty(),
        );
        assert_eq!(r.unwrap().count, 1);
        dev.streamon(&mut s, t).unwrap();
        // Two guest ranges, 100 + 156 bytes, as the driver's SG list of one plane.
        dev.qbuf(
            &mut s,
            userptr_buf(t, 0),
            vec![vec![sg(0x1000, 100), sg(0x3000, 156)]],
        )
        .unwrap();
        assert_eq!(*ev.0.lock().unwrap(), 1);
        let mut a = [0u8; 100];
        let mut b = [0u8; 156];
        mem.memory()
            .read_slice(&mut a, GuestAddress(0x1000))
            .unwrap();
        mem.memory()
            .read_slice(&mut b, GuestAddress(0x3000))
            .unwrap();
        let got: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        // Frame 0, plane 0: byte i = i mod 251.
        let want: Vec<u8> = (0..256).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
        // The second frame is sequence 1.
        dev.qbuf(&mut s, userptr_buf(t, 0), vec![vec![sg(0x5000, 256)]])
            .unwrap();
        let mut c = [0u8; 4];
        mem.memory()
            .read_slice(&mut c, GuestAddress(0x5000))
            .unwrap();
        assert_eq!(c, [1, 2, 3, 4]);
    }

    #[test]
    fn userptr_sg_list_shorter_than_the_plane_is_einval() {
        let (mut dev, mut s, ev, mem) = setup(Kind::Capture);
        let t = QueueType::VideoCapture;
        dev.reqbufs(
            &mut s,
            t,
            MemoryType::UserPtr,
            1,
            MemoryConsistency::empty(),
        )
        .unwrap();
        dev.streamon(&mut s, t).unwrap();
        let short = vec![vec![sg(0x1000, 100), sg(0x3000, 155)]];
        assert_eq!(
            dev.qbuf(&mut s, userptr_buf(t, 0), short).err(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            dev.qbuf(&mut s, userptr_buf(t, 0), vec![]).err(),
            Some(libc::EINVAL)
        );
        // An entry far longer than the plane: only the plane's 256 bytes are mapped.
        dev.qbuf(&mut s, userptr_buf(t, 0), vec![vec![sg(0x1000, u32::MAX)]])
            .unwrap();
        assert_eq!(*ev.0.lock().unwrap(), 1);
        let mut got = [0xffu8; 257];
        mem.memory()
            .read_slice(&mut got, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(&got[..4], &[0, 1, 2, 3]);
        assert_eq!(got[255], (255 % 251) as u8);
        assert_eq!(got[256], 0); // beyond the plane: untouched
                                 // Outside guest memory: the buffer comes back flagged ERROR, nothing panics.
        dev.qbuf(&mut s, userptr_buf(t, 0), vec![vec![sg(1 << 40, 256)]])
            .unwrap();
        assert_eq!(*ev.0.lock().unwrap(), 2);
    }

    #[test]
    fn userptr_m2m_copies_output_to_capture() {
        let (mut dev, mut s, ev, mem) = setup(Kind::M2m);
        let (o, c) = (QueueType::VideoOutput, QueueType::VideoCapture);
        let src: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
        mem.memory()
            .write_slice(&src, GuestAddress(0x2000))
            .unwrap();
        for t in [o, c] {
            dev.reqbufs(
                &mut s,
                t,
                MemoryType::UserPtr,
                1,
                MemoryConsistency::empty(),
            )
            .unwrap();
            dev.streamon(&mut s, t).unwrap();
        }
        dev.qbuf(&mut s, userptr_buf(o, 256), vec![vec![sg(0x2000, 256)]])
            .unwrap();
        assert_eq!(*ev.0.lock().unwrap(), 0); // waits for a CAPTURE buffer
        dev.qbuf(
            &mut s,
            userptr_buf(c, 0),
            vec![vec![sg(0x8000, 200), sg(0x9000, 56)]],
        )
        .unwrap();
        assert_eq!(*ev.0.lock().unwrap(), 2);
        let mut a = vec![0u8; 200];
        let mut b = vec![0u8; 56];
        mem.memory()
            .read_slice(&mut a, GuestAddress(0x8000))
            .unwrap();
        mem.memory()
            .read_slice(&mut b, GuestAddress(0x9000))
            .unwrap();
        a.extend_from_slice(&b);
        assert_eq!(a, src);
        let q = s.queue(c).unwrap();
        assert_eq!(*q.bufs[0].v4l2.get_first_plane().bytesused, 256);
    }

    type HdDev = TestDevice<Events, NoShm>;

    fn hd_setup() -> (HdDev, TestSession) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap(),
        );
        let mut dev = TestDevice::new(
            crate::profiles::CAPTURE_HD,
            Events::default(),
            NoShm,
            GuestMapper::new(mem),
        );
        let s =
            <HdDev as VirtioMediaDevice<CmdReader, CmdWriter>>::new_session(&mut dev, 1).unwrap();
        (dev, s)
    }

    fn pix_request(fourcc: &[u8; 4], width: u32, height: u32) -> v4l2_format {
        let mut f = v4l2_format {
            type_: QueueType::VideoCapture as u32,
            ..Default::default()
        };
        f.fmt.pix = bindings::v4l2_pix_format {
            width,
            height,
            pixelformat: u32::from_le_bytes(*fourcc),
            ..Default::default()
        };
        f
    }

    /// (fourcc, width, height, bytesperline, sizeimage) of a single-planar answer.
    fn pix(f: &v4l2_format) -> ([u8; 4], u32, u32, u32, u32) {
        // SAFETY: single-planar capture answers fill `pix`; plain integers.
        let p = unsafe { f.fmt.pix };
        (
            p.pixelformat.to_le_bytes(),
            p.width,
            p.height,
            p.bytesperline,
            p.sizeimage,
        )
    }

    #[test]
    fn capture_hd_formats_and_sizes() {
        let (mut dev, mut s) = hd_setup();
        let t = QueueType::VideoCapture;
        let fmts: Vec<u32> = (0..)
            .map_while(|i| dev.enum_fmt(&s, t, i).ok())
            .map(|d| d.pixelformat)
            .collect();
        assert_eq!(
            fmts,
            vec![u32::from_le_bytes(*b"NV12"), u32::from_le_bytes(*b"YU12")]
        );
        for fourcc in [b"NV12", b"YU12"] {
            let pf = u32::from_le_bytes(*fourcc);
            let sizes: Vec<(u32, u32, u32)> = (0..)
                .map_while(|i| dev.enum_framesizes(&s, i, pf).ok())
                .map(|f| {
                    // SAFETY: DISCRETE sizes fill `discrete`.
                    let d = unsafe { f.__bindgen_anon_1.discrete };
                    (f.type_, d.width, d.height)
                })
                .collect();
            let discrete = bindings::v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE;
            assert_eq!(
                sizes,
                vec![
                    (discrete, 640, 480),
                    (discrete, 1920, 1080),
                    (discrete, 3840, 2160)
                ]
            );
        }
        assert_eq!(
            dev.enum_framesizes(&s, 0, u32::from_le_bytes(*b"YUYV"))
                .err(),
            Some(libc::EINVAL)
        );
        // Default: NV12 640x480.
        let g = dev.g_fmt(&s, t).unwrap();
        assert_eq!(pix(&g), (*b"NV12", 640, 480, 640, 460800));
        // Exact sizes, both formats: w*h*3/2 bytes, bytesperline w.
        for fourcc in [b"NV12", b"YU12"] {
            for (w, h, size) in [
                (640, 480, 460_800),
                (1920, 1080, 3_110_400),
                (3840, 2160, 12_441_600),
            ] {
                let r = dev.try_fmt(&s, t, pix_request(fourcc, w, h)).unwrap();
                assert_eq!(pix(&r), (*fourcc, w, h, w, size));
            }
        }
        // Other sizes snap to the nearest listed one; unknown fourccs become NV12.
        for ((w, h), want) in [
            // |dw| + |dh|: 880 to 640x480, 1000 to 1920x1080.
            ((1280, 720), (640, 480)),
            ((1600, 900), (1920, 1080)),
            ((1, 1), (640, 480)),
            ((4096, 4096), (3840, 2160)),
            ((2900, 1650), (3840, 2160)),
            ((1920, 1088), (1920, 1080)),
        ] {
            let r = dev.try_fmt(&s, t, pix_request(b"YU12", w, h)).unwrap();
            assert_eq!(pix(&r).0, *b"YU12");
            assert_eq!((pix(&r).1, pix(&r).2), want, "{w}x{h}");
        }
        let r = dev
            .try_fmt(&s, t, pix_request(b"YUYV", 3840, 2160))
            .unwrap();
        assert_eq!(pix(&r), (*b"NV12", 3840, 2160, 3840, 12_441_600));
        // TRY_FMT changes nothing; S_FMT does, and G_FMT and REQBUFS follow it.
        assert_eq!(pix(&dev.g_fmt(&s, t).unwrap()).1, 640);
        let r = dev
            .s_fmt(&mut s, t, pix_request(b"YU12", 1900, 1000))
            .unwrap();
        assert_eq!(pix(&r), (*b"YU12", 1920, 1080, 1920, 3_110_400));
        assert_eq!(pix(&dev.g_fmt(&s, t).unwrap()), pix(&r));
        dev.reqbufs(
            &mut s,
            t,
            MemoryType::UserPtr,
            2,
            MemoryConsistency::empty(),
        )
        .unwrap();
        assert_eq!(s.queue(t).unwrap().bufs[0].sizes, vec![3_110_400]);
        // Buffers pin the format.
        assert_eq!(
            dev.s_fmt(&mut s, t, pix_request(b"NV12", 640, 480)).err(),
            Some(libc::EBUSY)
        );
        // Multi-planar types are not this device's.
        assert!(dev.g_fmt(&s, QueueType::VideoCaptureMplane).is_err());
    }

    #[test]
    fn produce_rate_runs_the_capture_generator() {
        let hd = crate::profiles::CAPTURE_HD;
        let t = produce_rate(hd, *b"NV12", 640, 480, 3).unwrap();
        assert!(t.as_nanos() > 0);
        assert!(produce_rate(hd, *b"YUYV", 640, 480, 1).is_err());
        assert!(produce_rate(hd, *b"YU12", 1280, 720, 1).is_err());
        assert!(produce_rate(crate::profiles::OUTPUT, *b"YU12", 640, 480, 1).is_err());
        // The generator writes frame `seq` of the pattern into the whole MMAP buffer.
        let (mut dev, mut s) = hd_setup();
        let t = QueueType::VideoCapture;
        dev.reqbufs(&mut s, t, MemoryType::Mmap, 1, MemoryConsistency::empty())
            .unwrap();
        let q = s.capture.as_mut().unwrap();
        let b = &mut q.bufs[0];
        dev.fill_capture(b, 9).unwrap();
        assert_eq!(*b.v4l2.get_first_plane().bytesused, 460_800);
        let Backing::Mmap { fd, .. } = &b.planes[0] else {
            panic!("not an MMAP buffer")
        };
        let mut got = vec![0u8; 460_800];
        fd.as_file().read_exact_at(&mut got, 0).unwrap();
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &v)| v == pattern_byte(9, 0, i)));
    }

    #[test]
    fn output_bytesused_beyond_length_is_einval() {
        let (mut dev, mut s, _ev, _mem) = setup(Kind::Output);
        let t = QueueType::VideoOutput;
        dev.reqbufs(
            &mut s,
            t,
            MemoryType::UserPtr,
            1,
            MemoryConsistency::empty(),
        )
        .unwrap();
        let mut b = userptr_buf(t, 0);
        // A raw buffer claiming 257 bytes used of 256.
        *b.get_first_plane_mut().bytesused = 257;
        assert_eq!(
            dev.qbuf(&mut s, b, vec![vec![sg(0x1000, 256)]]).err(),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn crc32_matches_zlib() {
        // zlib.crc32(b"123456789") == 0xcbf43926
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn pattern_fill_matches_formula() {
        let mut v = vec![0u8; 1000];
        fill_pattern(&mut v, 7, 2);
        for (i, &b) in v.iter().enumerate() {
            assert_eq!(b, pattern_byte(7, 2, i));
        }
        assert_eq!(pattern_byte(250, 0, 1), 0);
    }

    #[test]
    fn layouts() {
        assert_eq!(
            layout(b"NM12", 640, 480).unwrap(),
            vec![
                PlaneLayout {
                    bytesperline: 640,
                    sizeimage: 307200
                },
                PlaneLayout {
                    bytesperline: 640,
                    sizeimage: 153600
                }
            ]
        );
        assert_eq!(layout(b"YM12", 320, 240).unwrap().len(), 3);
        assert_eq!(layout(b"YUYV", 320, 240).unwrap()[0].sizeimage, 153600);
        assert!(layout(b"XXXX", 320, 240).is_none());
    }

    /// Records every V4L2 event sent: (session, `v4l2_event` bytes).
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(u32, Vec<u8>)>>>);
    impl VirtioMediaEventQueue for Recorded {
        fn send_event(&mut self, event: V4l2Event) {
            if let V4l2Event::Event(e) = event {
                // SAFETY: `SessionEvent` is a repr(C) header (event, session_id) followed by
                // the `v4l2_event`, plain data with no padding before it.
                let b = unsafe {
                    std::slice::from_raw_parts(
                        (&raw const e).cast::<u8>(),
                        std::mem::size_of::<SessionEvent>(),
                    )
                };
                let sid = u32::from_le_bytes(b[4..8].try_into().unwrap());
                self.0.lock().unwrap().push((sid, b[8..].to_vec()));
            }
        }
    }

    type LabelDev = TestDevice<Recorded, NoShm>;

    fn label_setup() -> (
        LabelDev,
        TestSession,
        Recorded,
        GuestMemoryAtomic<GuestMemoryMmap>,
    ) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap(),
        );
        let spec = Spec {
            kind: Kind::Capture,
            mplane: false,
            formats: YUYV,
            sizes: TINY,
        };
        let ev = Recorded::default();
        let mut dev = TestDevice::new(spec, ev.clone(), NoShm, GuestMapper::new(mem.clone()))
            .with_label("virtio-media");
        let s = <LabelDev as VirtioMediaDevice<CmdReader, CmdWriter>>::new_session(&mut dev, 1)
            .unwrap();
        (dev, s, ev, mem)
    }

    /// QUERY_EXT_CTRL (`ext`) or QUERYCTRL with `id` (flags included): (errno, payload).
    fn query(dev: &mut LabelDev, s: &mut TestSession, ext: bool, id: u32) -> (u32, Vec<u8>) {
        let size = if ext { 232 } else { 68 };
        let mut arg = vec![0xffu8; size];
        arg[0..4].copy_from_slice(&id.to_le_bytes());
        let mut reader = std::io::Cursor::new(arg);
        let mut writer = Vec::new();
        let ioctl = if ext {
            V4l2Ioctl::VIDIOC_QUERY_EXT_CTRL
        } else {
            V4l2Ioctl::VIDIOC_QUERYCTRL
        };
        <LabelDev as VirtioMediaDevice<CmdReader, CmdWriter>>::do_ioctl(
            dev,
            s,
            ioctl,
            &mut reader,
            &mut writer,
        )
        .unwrap();
        let status = u32::from_le_bytes(writer[0..4].try_into().unwrap());
        (status, writer[8..].to_vec())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn label_enumeration_follows_the_kernel() {
        let (mut dev, mut s, _, _) = label_setup();
        // NEXT_CTRL alone and both flags find the string; NEXT_COMPOUND alone does not (a
        // string is not compound).
        for flags in [CTRL_NEXT_CTRL, CTRL_NEXT_CTRL | CTRL_NEXT_COMPOUND] {
            let (st, q) = query(&mut dev, &mut s, true, flags);
            assert_eq!((st, u32_at(&q, 0), u32_at(&q, 4)), (0, LABEL_CID, 7));
            assert_eq!(
                (u32_at(&q, 72), u32_at(&q, 76), u32_at(&q, 80)),
                (0x100, 32, 1)
            );
            assert_eq!(
                query(&mut dev, &mut s, true, flags | LABEL_CID).0,
                libc::EINVAL as u32
            );
            let (st, q) = query(&mut dev, &mut s, false, flags);
            assert_eq!(
                (st, u32_at(&q, 0), u32_at(&q, 44), u32_at(&q, 56)),
                (0, LABEL_CID, 31, 0x100)
            );
        }
        for ext in [true, false] {
            assert_eq!(
                query(&mut dev, &mut s, ext, CTRL_NEXT_COMPOUND).0,
                libc::EINVAL as u32
            );
            assert_eq!(query(&mut dev, &mut s, ext, LABEL_CID).0, 0);
            assert_eq!(
                query(&mut dev, &mut s, ext, LABEL_CID + 1).0,
                libc::EINVAL as u32
            );
        }
        // G/S_CTRL of a string: EINVAL, as v4l2_g_ctrl/v4l2_s_ctrl.
        assert_eq!(dev.g_ctrl(&s, LABEL_CID).err(), Some(libc::EINVAL));
        assert_eq!(dev.s_ctrl(&mut s, LABEL_CID, 0).err(), Some(libc::EINVAL));
    }

    fn ext_ctrl(id: u32, size: u32) -> bindings::v4l2_ext_control {
        bindings::v4l2_ext_control {
            id,
            size,
            ..Default::default()
        }
    }

    fn read_str(mem: &GuestMemoryAtomic<GuestMemoryMmap>, at: u64) -> String {
        let mut b = [0u8; 32];
        mem.memory().read_slice(&mut b, GuestAddress(at)).unwrap();
        let n = b.iter().position(|&c| c == 0).unwrap_or(32);
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    #[test]
    fn label_ext_ctrls_sizes_and_error_indices() {
        let (mut dev, mut s, _, mem) = label_setup();
        let mut cs = bindings::v4l2_ext_controls::default();
        // Too small: ENOSPC, size = elem_size (not the string's length + 1), error_idx 0.
        let mut a = vec![ext_ctrl(LABEL_CID, 0)];
        let r = dev.g_ext_ctrls(
            &s,
            CtrlWhich::Class(CTRL_CLASS_USER),
            &mut cs,
            &mut a,
            vec![],
        );
        assert_eq!(
            (r.err(), a[0].size, cs.error_idx),
            (Some(libc::ENOSPC), 32, 0)
        );
        let mut a = vec![ext_ctrl(LABEL_CID, 4)];
        let r = dev.g_ext_ctrls(
            &s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x1000, 4)]],
        );
        assert_eq!((r.err(), a[0].size), (Some(libc::ENOSPC), 32));
        // Big enough: the value, size left as set.
        let mut a = vec![ext_ctrl(LABEL_CID, 32)];
        dev.g_ext_ctrls(
            &s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x1000, 32)]],
        )
        .unwrap();
        assert_eq!(
            (a[0].size, read_str(&mem, 0x1000)),
            (32, "virtio-media".into())
        );
        // The default value: "" (minimum 0 spaces).
        dev.g_ext_ctrls(
            &s,
            CtrlWhich::Default,
            &mut cs,
            &mut a,
            vec![vec![sg(0x1000, 32)]],
        )
        .unwrap();
        assert_eq!(read_str(&mem, 0x1000), "");
        // Unknown id: EINVAL, error_idx = count for G and S, the index for TRY.
        for (op, idx) in [(b'G', 1), (b'S', 1), (b'T', 0)] {
            let mut a = vec![ext_ctrl(0, 0)];
            let r = dev.label_ctrls(op, s.id, CtrlWhich::Current, &mut cs, &mut a, vec![]);
            assert_eq!((r.err(), cs.error_idx), (Some(libc::EINVAL), idx), "{op}");
        }
        // S: size 0 is ERANGE; more than 31 characters ERANGE; without a NUL the last byte
        // read is dropped (as the kernel's user_to_new).
        let mut a = vec![ext_ctrl(LABEL_CID, 0)];
        let r = dev.s_ext_ctrls(&mut s, CtrlWhich::Current, &mut cs, &mut a, vec![]);
        assert_eq!(r.err(), Some(libc::ERANGE));
        mem.memory()
            .write_slice(&[b'x'; 40], GuestAddress(0x2000))
            .unwrap();
        let mut a = vec![ext_ctrl(LABEL_CID, 40)];
        let r = dev.s_ext_ctrls(
            &mut s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x2000, 40)]],
        );
        assert_eq!(r.err(), Some(libc::ERANGE));
        mem.memory()
            .write_slice(b"hello", GuestAddress(0x2000))
            .unwrap();
        let mut a = vec![ext_ctrl(LABEL_CID, 5)];
        dev.try_ext_ctrls(
            &s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x2000, 5)]],
        )
        .unwrap();
        assert_eq!(read_str(&mem, 0x2000), "hell");
        assert_eq!(dev.label.as_deref(), Some(&b"virtio-media"[..]));
        let r = dev.s_ext_ctrls(
            &mut s,
            CtrlWhich::Default,
            &mut cs,
            &mut a,
            vec![vec![sg(0x2000, 5)]],
        );
        assert_eq!((r.err(), cs.error_idx), (Some(libc::EINVAL), 1));
        dev.s_ext_ctrls(
            &mut s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x2000, 5)]],
        )
        .unwrap();
        assert_eq!(dev.label.as_deref(), Some(&b"hell"[..]));
    }

    #[test]
    fn label_events() {
        let (mut dev, mut s, ev, mem) = label_setup();
        let mut other =
            <LabelDev as VirtioMediaDevice<CmdReader, CmdWriter>>::new_session(&mut dev, 2)
                .unwrap();
        let initial = SubscribeEventFlags::SEND_INITIAL;
        assert_eq!(
            dev.subscribe_event(&mut s, EventType::Ctrl(LABEL_CID + 1), initial)
                .err(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            dev.subscribe_event(&mut s, EventType::Eos, initial).err(),
            Some(libc::EINVAL)
        );
        // SEND_INITIAL: one event at once, CH_VALUE | CH_FLAGS, as the kernel fills it.
        dev.subscribe_event(&mut s, EventType::Ctrl(LABEL_CID), initial)
            .unwrap();
        dev.subscribe_event(&mut s, EventType::Ctrl(LABEL_CID), initial)
            .unwrap();
        dev.subscribe_event(
            &mut other,
            EventType::Ctrl(LABEL_CID),
            SubscribeEventFlags::empty(),
        )
        .unwrap();
        {
            let got = ev.0.lock().unwrap();
            assert_eq!(got.len(), 1);
            let (sid, e) = &got[0];
            assert_eq!(
                (*sid, u32_at(e, 0), u32_at(e, 96)),
                (1, bindings::V4L2_EVENT_CTRL, LABEL_CID)
            );
            // changes, type, flags, minimum, maximum, step, default.
            let ctrl: Vec<u32> = [8, 12, 24, 28, 32, 36, 40]
                .iter()
                .map(|&o| u32_at(e, o))
                .collect();
            assert_eq!(ctrl, vec![3, 7, 0x100, 0, 31, 1, 0]);
        }
        // A new value from session 1: an event for session 2 only (no ALLOW_FEEDBACK).
        mem.memory()
            .write_slice(b"new\0", GuestAddress(0x2000))
            .unwrap();
        let mut cs = bindings::v4l2_ext_controls::default();
        let mut a = vec![ext_ctrl(LABEL_CID, 4)];
        dev.s_ext_ctrls(
            &mut s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x2000, 4)]],
        )
        .unwrap();
        // The same value again: no event.
        dev.s_ext_ctrls(
            &mut s,
            CtrlWhich::Current,
            &mut cs,
            &mut a,
            vec![vec![sg(0x2000, 4)]],
        )
        .unwrap();
        {
            let got = ev.0.lock().unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(
                (got[1].0, u32_at(&got[1].1, 8)),
                (2, bindings::V4L2_EVENT_CTRL_CH_VALUE)
            );
        }
        let sub = bindings::v4l2_event_subscription {
            type_: bindings::V4L2_EVENT_CTRL,
            id: LABEL_CID,
            ..Default::default()
        };
        dev.unsubscribe_event(&mut other, sub).unwrap();
        dev.unsubscribe_event(&mut other, sub).unwrap();
        <LabelDev as VirtioMediaDevice<CmdReader, CmdWriter>>::close_session(&mut dev, s);
        assert!(dev.label_subs.is_empty());
    }
}
