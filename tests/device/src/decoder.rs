// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! The `decoder` profile's codec: a V4L2 stateful H.264 decoder (kernel documentation,
//! userspace-api/media/v4l/dev-decoder.rst) on libavcodec ([`crate::avdec`]), built into
//! [`TestDevice`] (Kind::Decoder) so that it shares the honest queues of the other profiles:
//! MMAP and USERPTR, CREATE_BUFS, PREPARE_BUF (Documentation/test-device.md says why the
//! crate's `VideoDecoder` was not used).
//!
//! OUTPUT_MPLANE takes an H.264 Annex-B byte stream cut anywhere
//! (`V4L2_FMT_FLAG_CONTINUOUS_BYTESTREAM`); CAPTURE_MPLANE returns NV12 or YU12 frames (one
//! plane, `bytesperline` = width), each with the timestamp of the OUTPUT buffer its access unit
//! started in. What the interface asks of a decoder, and how it is done here:
//!
//! - Initialization and dynamic resolution change: when a decoded frame's size differs from the
//!   last announced one (or none was announced), the CAPTURE format takes the new size and a
//!   `V4L2_EVENT_SOURCE_CHANGE` (RESOLUTION) is sent. If CAPTURE buffers of another size exist,
//!   the next CAPTURE buffer is returned empty with `V4L2_BUF_FLAG_LAST` and nothing more is
//!   decoded into that queue until it is stopped (STREAMOFF) and restarted; frames of the new
//!   size wait in the device.
//! - Drain: `V4L2_DEC_CMD_STOP` with OUTPUT streaming decodes the OUTPUT buffers queued so
//!   far, flushes the decoder, sends `V4L2_EVENT_EOS` and flags the last frame `LAST` (or
//!   returns an empty `LAST` buffer). The decoder is then stopped until
//!   `V4L2_DEC_CMD_START` or a STREAMON.
//! - Seek: STREAMOFF of OUTPUT forgets all input and pending frames.
//! - Back-pressure: at most [`MAX_PENDING`] decoded frames wait for CAPTURE buffers; OUTPUT
//!   buffers are consumed no faster than that allows (an OUTPUT buffer holding many frames is
//!   parsed one access unit at a time and returned when all of it was used).
//! - Controls: `V4L2_CID_MIN_BUFFERS_FOR_CAPTURE` (read-only, volatile), with the user class's
//!   control-class control that the kernel's control framework adds beside it; see [`CTRLS`].

use std::collections::VecDeque;
use std::io::Result as IoResult;

use log::{debug, warn};
use virtio_media::io::WriteToDescriptorChain;
use virtio_media::protocol::{RespHeader, SessionEvent, V4l2Event};
use virtio_media::v4l2r::bindings;
use virtio_media::v4l2r::ioctl::{BufferFlags, CtrlWhich, SubscribeEventFlags};
use virtio_media::v4l2r::QueueType;
use virtio_media::{VirtioMediaEventQueue, VirtioMediaHostMemoryMapper};

use super::{BufState, Format, TestDevice, TestSession};
use crate::avdec::{self, H264Decoder, Received};
use crate::chain::{CmdReader, CmdWriter};

/// Decoded frames the device keeps while no CAPTURE buffer is free.
pub const MAX_PENDING: usize = 8;
/// OUTPUT (bitstream) buffer size for a coded size, in bytes: half the raw 4:2:0 frame
/// (w * h / 2, a 3:1 compression floor), at least 16 KiB, in whole pages.
pub fn coded_buffer_size(w: u32, h: u32) -> u32 {
    let n = (w.saturating_mul(h) / 2).max(16 << 10);
    n.div_ceil(4096).saturating_mul(4096)
}
/// Largest coded size accepted by S_FMT and advertised by ENUM_FRAMESIZES (H.264 level 5.1).
pub const MAX_WIDTH: u32 = 4096;
pub const MAX_HEIGHT: u32 = 2304;
/// OUTPUT formats, in ENUM_FMT order (CAPTURE's, NV12 and/or YU12, are the profile's
/// `Spec::formats`).
pub const OUTPUT_FORMATS: &[[u8; 4]] = &[*b"H264"];

/// `V4L2_EVENT_EOS`, `V4L2_EVENT_SOURCE_CHANGE`, `V4L2_EVENT_SRC_CH_RESOLUTION` (videodev2.h).
pub const EVENT_EOS: u32 = 2;
pub const EVENT_SOURCE_CHANGE: u32 = 5;
const SRC_CH_RESOLUTION: u32 = 1;
/// `V4L2_DEC_CMD_START`, `_STOP`, `_PAUSE`, `_RESUME`.
pub const DEC_CMD_START: u32 = 0;
pub const DEC_CMD_STOP: u32 = 1;

/// A control of the decoder, as the kernel's control framework describes it
/// (`v4l2_query_ext_ctrl`; none has a payload: `elem_size` 4, `elems` 1, no dimensions).
pub struct CtrlDesc {
    pub id: u32,
    pub type_: u32,
    pub name: &'static [u8],
    pub minimum: i64,
    pub maximum: i64,
    pub step: u64,
    pub default_value: i64,
    pub flags: u32,
}

/// Value of MIN_BUFFERS_FOR_CAPTURE until the stream's size is announced (dev-decoder.rst: the
/// control is valid once SOURCE_CHANGE was sent), as the control's default.
pub const MIN_CAPTURE_DEFAULT: u32 = 1;

/// The decoder's controls, by increasing id (the order QUERYCTRL's NEXT flags enumerate).
///
/// - `V4L2_CID_USER_CLASS`: the control framework adds a class's control-class control to any
///   handler that has a (non-compound) control of the class (`handler_new_ref`), with
///   v4l2_ctrl_fill's fields: type CTRL_CLASS, READ_ONLY | WRITE_ONLY, all values 0.
///   v4l2-compliance fails a user-class integer control without it ("missing control class").
/// - `V4L2_CID_MIN_BUFFERS_FOR_CAPTURE`: what a stateful decoder must have (v4l2-compliance
///   1.32 reads it with G_CTRL before it sets CAPTURE up). Integer, READ_ONLY (v4l2_ctrl_fill)
///   and VOLATILE (read from the decoder: the stream sets it), 1..=[`super::MAX_BUFFERS`],
///   default [`MIN_CAPTURE_DEFAULT`]; the value is [`min_capture_buffers`] of the stream last
///   announced.
pub const CTRLS: [CtrlDesc; 2] = [
    CtrlDesc {
        id: bindings::V4L2_CID_USER_CLASS,
        type_: bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS,
        name: b"User Controls",
        minimum: 0,
        maximum: 0,
        step: 0,
        default_value: 0,
        flags: bindings::V4L2_CTRL_FLAG_READ_ONLY | bindings::V4L2_CTRL_FLAG_WRITE_ONLY,
    },
    CtrlDesc {
        id: bindings::V4L2_CID_MIN_BUFFERS_FOR_CAPTURE,
        type_: bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER,
        name: b"Min Number of Capture Buffers",
        minimum: 1,
        maximum: super::MAX_BUFFERS as i64,
        step: 1,
        default_value: MIN_CAPTURE_DEFAULT as i64,
        flags: bindings::V4L2_CTRL_FLAG_READ_ONLY | bindings::V4L2_CTRL_FLAG_VOLATILE,
    },
];

fn ctrl_desc(id: u32) -> Option<&'static CtrlDesc> {
    CTRLS.iter().find(|c| c.id == id)
}

/// H.264 Table A-1, MaxDpbMbs of a `level_idc` (9 is level 1b; 11 is read as 1.1, the larger
/// of 1.1 and Baseline's 1b); `None` for a level the table does not have.
fn max_dpb_mbs(level_idc: u32) -> Option<u32> {
    Some(match level_idc {
        9 | 10 => 396,
        11 => 900,
        12 | 13 | 20 => 2376,
        21 => 4752,
        22 | 30 => 8100,
        31 => 18000,
        32 => 20480,
        40 | 41 => 32768,
        42 => 34816,
        50 => 110400,
        51 | 52 => 184320,
        60..=62 => 696320,
        _ => return None,
    })
}

/// V4L2_CID_MIN_BUFFERS_FOR_CAPTURE for the stream of `f`: the frames of the stream's DPB
/// (H.264 A.3.1: MaxDpbMbs of its level over the frame's macroblocks, at most 16, 16 for a
/// level libavcodec did not report), at least the frames libavcodec holds back for display
/// order, plus the frame being decoded: the CAPTURE buffers a decoder that decodes into them,
/// as hardware does, needs. (This device decodes into libavcodec's own frames and copies each
/// one out, so it also gets on with fewer: REQBUFS is not raised to it.)
pub fn min_capture_buffers(f: &avdec::Frame) -> u32 {
    let mbs = f.width.div_ceil(16).max(1) * f.height.div_ceil(16).max(1);
    let dpb = max_dpb_mbs(f.level).map_or(16, |m| (m / mbs).min(16));
    (dpb.max(f.reorder).min(16) + 1).clamp(1, super::MAX_BUFFERS)
}

/// VIDIOC_QUERYCTRL (`ext` false: the 68-byte `v4l2_queryctrl`) or VIDIOC_QUERY_EXT_CTRL (the
/// 232-byte `v4l2_query_ext_ctrl`) of the decoder's controls, from the argument's raw bytes, as
/// the kernel's v4l2_query_ext_ctrl/v4l2_queryctrl answer them: an id without NEXT flags is
/// that control or `EINVAL`; NEXT_CTRL (alone or with NEXT_COMPOUND) the first control with a
/// larger id; NEXT_COMPOUND alone a compound one, of which there are none.
pub fn query_ctrl(arg: &[u8], ext: bool) -> Result<Vec<u8>, i32> {
    let size = if ext { 232 } else { 68 };
    let raw = arg
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(libc::EINVAL)?;
    let id = raw & bindings::V4L2_CTRL_ID_MASK;
    let next = raw & (bindings::V4L2_CTRL_FLAG_NEXT_CTRL | bindings::V4L2_CTRL_FLAG_NEXT_COMPOUND);
    let c = match next {
        0 => ctrl_desc(id),
        bindings::V4L2_CTRL_FLAG_NEXT_COMPOUND => None,
        _ => CTRLS.iter().find(|c| c.id > id),
    }
    .ok_or(libc::EINVAL)?;
    let mut out = vec![0u8; size];
    let put = |o: &mut [u8], at: usize, v: &[u8]| o[at..at + v.len()].copy_from_slice(v);
    put(&mut out, 0, &c.id.to_le_bytes());
    put(&mut out, 4, &c.type_.to_le_bytes());
    put(&mut out, 8, c.name);
    if ext {
        put(&mut out, 40, &c.minimum.to_le_bytes());
        put(&mut out, 48, &c.maximum.to_le_bytes());
        put(&mut out, 56, &c.step.to_le_bytes());
        put(&mut out, 64, &c.default_value.to_le_bytes());
        put(&mut out, 72, &c.flags.to_le_bytes());
        put(&mut out, 76, &4u32.to_le_bytes()); // elem_size
        put(&mut out, 80, &1u32.to_le_bytes()); // elems
    } else {
        // v4l2_queryctrl: the range of an integer (a control class has all 0).
        put(&mut out, 40, &(c.minimum as i32).to_le_bytes());
        put(&mut out, 44, &(c.maximum as i32).to_le_bytes());
        put(&mut out, 48, &(c.step as i32).to_le_bytes());
        put(&mut out, 52, &(c.default_value as i32).to_le_bytes());
        put(&mut out, 56, &c.flags.to_le_bytes());
    }
    Ok(out)
}

/// VIDIOC_QUERYCTRL / QUERY_EXT_CTRL ([`query_ctrl`]) from the command's argument bytes (the
/// crate's `CtrlId` does not carry the NEXT flags).
pub fn query_ctrl_ioctl(ext: bool, reader: &CmdReader, writer: &mut CmdWriter) -> IoResult<()> {
    let pos = usize::try_from(reader.position()).unwrap_or(usize::MAX);
    match query_ctrl(reader.get_ref().get(pos..).unwrap_or(&[]), ext) {
        Ok(out) => {
            writer.write_response(RespHeader::ok())?;
            writer.extend_from_slice(&out);
            Ok(())
        }
        Err(e) => writer.write_err_response(e),
    }
}

/// Why an empty `LAST` CAPTURE buffer is owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    /// A resolution change: the queue must be restarted with buffers of the new size.
    ResolutionChange,
    /// A drain ended with no frame left to carry the flag.
    EndOfStream,
}

/// The OUTPUT buffer being parsed.
struct Input {
    index: usize,
    data: Vec<u8>,
    off: usize,
    pts: i64,
}

/// Per-session codec state.
pub struct Codec {
    dec: H264Decoder,
    input: Option<Input>,
    frames: VecDeque<avdec::Frame>,
    /// Timestamp of the last OUTPUT buffer taken: what frames flushed out by a drain carry if
    /// the parser had none for them.
    last_pts: i64,
    /// The size the last SOURCE_CHANGE announced.
    stream: Option<(u32, u32)>,
    /// CAPTURE format size when the current CAPTURE buffers were allocated.
    alloc_size: Option<(u32, u32)>,
    owe_last: Option<Last>,
    /// After a resolution change's LAST buffer: CAPTURE waits for STREAMOFF.
    wait_restart: bool,
    /// DEC_CMD_STOP accepted: `drain_left` more OUTPUT buffers are decoded, then the decoder
    /// is flushed (`flushed`).
    draining: bool,
    drain_left: usize,
    flushed: bool,
    /// Drained: OUTPUT buffers wait until DEC_CMD_START or a STREAMON.
    stopped: bool,
    sub_source_change: bool,
    sub_eos: bool,
    /// V4L2_CID_MIN_BUFFERS_FOR_CAPTURE now: [`min_capture_buffers`] of the stream last
    /// announced.
    min_capture: u32,
    /// Controls this session subscribed `V4L2_EVENT_CTRL` of.
    ctrl_subs: Vec<u32>,
}

impl Codec {
    /// A session's codec; `ENOMEM` if libavcodec cannot open a decoder.
    pub fn new() -> Result<Self, i32> {
        Ok(Self {
            dec: H264Decoder::new().ok_or(libc::ENOMEM)?,
            input: None,
            frames: VecDeque::new(),
            last_pts: 0,
            stream: None,
            alloc_size: None,
            owe_last: None,
            wait_restart: false,
            draining: false,
            drain_left: 0,
            flushed: false,
            stopped: false,
            sub_source_change: false,
            sub_eos: false,
            min_capture: MIN_CAPTURE_DEFAULT,
            ctrl_subs: Vec::new(),
        })
    }

    /// Takes every frame the decoder has; `pts` replaces a missing timestamp.
    fn receive_all(&mut self, pts: i64) {
        loop {
            match self.dec.receive() {
                Ok(Received::Frame(mut f)) => {
                    if f.pts == avdec::NO_PTS {
                        f.pts = pts;
                    }
                    self.frames.push_back(f);
                }
                Ok(Received::None) | Ok(Received::Eof) => break,
                Err(e) => {
                    warn!("decoder: frame dropped (errno {e})");
                    if e != libc::ENOTSUP {
                        break;
                    }
                }
            }
        }
    }

    /// Forgets all input, pending frames and any drain in progress.
    fn reset(&mut self) {
        self.input = None;
        self.frames.clear();
        self.draining = false;
        self.drain_left = 0;
        self.flushed = false;
        if self.owe_last == Some(Last::EndOfStream) {
            self.owe_last = None;
        }
        if let Err(e) = self.dec.reset() {
            warn!("decoder reset failed (errno {e})");
        }
    }

    /// VIDIOC_SUBSCRIBE_EVENT / UNSUBSCRIBE_EVENT (`type` 0 = all, only for unsubscribe).
    pub fn subscription(&mut self, event_type: u32, on: bool) -> Result<(), i32> {
        match (event_type, on) {
            (EVENT_SOURCE_CHANGE, _) => self.sub_source_change = on,
            (EVENT_EOS, _) => self.sub_eos = on,
            (0, false) => {
                self.sub_source_change = false;
                self.sub_eos = false;
                self.ctrl_subs.clear();
            }
            _ => return Err(libc::EINVAL),
        }
        Ok(())
    }

    /// VIDIOC_UNSUBSCRIBE_EVENT of `event_type` (`V4L2_EVENT_ALL`: everything) and, for
    /// `V4L2_EVENT_CTRL`, control `id`: removing what is not subscribed succeeds (as
    /// v4l2_event_unsubscribe).
    pub fn unsubscribe(&mut self, event_type: u32, id: u32) -> Result<(), i32> {
        if event_type == bindings::V4L2_EVENT_CTRL {
            self.ctrl_subs.retain(|&c| c != id);
            return Ok(());
        }
        self.subscription(event_type, false)
    }

    /// VIDIOC_G_CTRL as the kernel's v4l2_g_ctrl: the control-class control is write-only
    /// (`EACCES`), an unknown id `EINVAL`.
    pub fn g_ctrl(&self, id: u32) -> Result<bindings::v4l2_control, i32> {
        let c = ctrl_desc(id).ok_or(libc::EINVAL)?;
        if c.flags & bindings::V4L2_CTRL_FLAG_WRITE_ONLY != 0 {
            return Err(libc::EACCES);
        }
        Ok(bindings::v4l2_control {
            id,
            value: self.min_capture as i32,
        })
    }

    /// VIDIOC_S_CTRL as the kernel's v4l2_s_ctrl: every control here is read-only (`EACCES`),
    /// an unknown id `EINVAL`.
    pub fn s_ctrl(&self, id: u32) -> Result<bindings::v4l2_control, i32> {
        ctrl_desc(id).ok_or(libc::EINVAL)?;
        Err(libc::EACCES)
    }

    /// VIDIOC_G/S/TRY_EXT_CTRLS (`op` b'G', b'S', b'T') as the kernel's control framework
    /// (v4l2-ctrls-api.c) does them for these controls:
    ///
    /// - `which`: the current value or the user class; G also `V4L2_CTRL_WHICH_DEF_VAL`.
    ///   Another class is `EINVAL` (`error_idx` 0 for TRY, else `count`; `count` 0: the
    ///   class check, `EINVAL`), as is DEF_VAL for S/TRY and a request.
    /// - An unknown id is `EINVAL`, `error_idx` its index (TRY) or `count` (G, S).
    /// - G: the control-class control is write-only: `EACCES`, `error_idx` = `count`; else
    ///   the value (the default with DEF_VAL).
    /// - S/TRY: both are read-only: `EACCES`, `error_idx` 0 (TRY) or `count` (S).
    /// - `count` 0 succeeds.
    pub fn ext_ctrls(
        &self,
        op: u8,
        which: CtrlWhich,
        ctrls: &mut bindings::v4l2_ext_controls,
        ctrl_array: &mut [bindings::v4l2_ext_control],
    ) -> Result<(), i32> {
        let count = ctrl_array.len() as u32;
        let bad_idx = |i: usize| if op == b'T' { i as u32 } else { count };
        ctrls.error_idx = count;
        let default = match which {
            CtrlWhich::Current => false,
            CtrlWhich::Class(c) if c == bindings::V4L2_CTRL_CLASS_USER => false,
            CtrlWhich::Default if op == b'G' => true,
            CtrlWhich::Class(_) if count > 0 => {
                ctrls.error_idx = bad_idx(0);
                return Err(libc::EINVAL);
            }
            _ => return Err(libc::EINVAL),
        };
        let mut descs = Vec::with_capacity(ctrl_array.len());
        for (i, c) in ctrl_array.iter().enumerate() {
            match ctrl_desc(c.id & bindings::V4L2_CTRL_ID_MASK) {
                Some(d) => descs.push(d),
                None => {
                    ctrls.error_idx = bad_idx(i);
                    return Err(libc::EINVAL);
                }
            }
        }
        if op != b'G' {
            if let Some(i) = descs
                .iter()
                .position(|d| d.flags & bindings::V4L2_CTRL_FLAG_READ_ONLY != 0)
            {
                ctrls.error_idx = bad_idx(i);
                return Err(libc::EACCES);
            }
            return Ok(());
        }
        if descs
            .iter()
            .any(|d| d.flags & bindings::V4L2_CTRL_FLAG_WRITE_ONLY != 0)
        {
            return Err(libc::EACCES);
        }
        for (c, d) in ctrl_array.iter_mut().zip(&descs) {
            c.__bindgen_anon_1.value = if default {
                d.default_value as i32
            } else {
                self.min_capture as i32
            };
        }
        Ok(())
    }

    /// CAPTURE buffers were (re)allocated at `fmt` (`None`: freed). A queue set up again
    /// after a resolution change's LAST buffer takes frames again.
    pub fn capture_allocated(&mut self, fmt: Option<&Format>) {
        self.alloc_size = fmt.map(|f| (f.width, f.height));
        self.wait_restart = false;
        if self.owe_last == Some(Last::ResolutionChange) {
            self.owe_last = None;
        }
    }

    /// Whether a SOURCE_CHANGE announced the stream's size.
    pub fn stream_known(&self) -> bool {
        self.stream.is_some()
    }
}

/// ENUM_FRAMESIZES: H.264 and the raw formats, 16x16 up to [`MAX_WIDTH`]x[`MAX_HEIGHT`] in
/// steps of 2 (any even size; the stream decides the real one).
pub fn frame_sizes(
    index: u32,
    pixel_format: u32,
    capture_formats: &[[u8; 4]],
) -> Result<bindings::v4l2_frmsizeenum, i32> {
    let known = OUTPUT_FORMATS
        .iter()
        .chain(capture_formats)
        .any(|f| u32::from_le_bytes(*f) == pixel_format);
    if index != 0 || !known {
        return Err(libc::EINVAL);
    }
    Ok(bindings::v4l2_frmsizeenum {
        index,
        pixel_format,
        type_: bindings::v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_STEPWISE,
        __bindgen_anon_1: bindings::v4l2_frmsizeenum__bindgen_ty_1 {
            stepwise: bindings::v4l2_frmsize_stepwise {
                min_width: 16,
                max_width: MAX_WIDTH,
                step_width: 2,
                min_height: 16,
                max_height: MAX_HEIGHT,
                step_height: 2,
            },
        },
        ..Default::default()
    })
}

fn pts_of(tv: bindings::timeval) -> i64 {
    tv.tv_sec
        .saturating_mul(1_000_000)
        .saturating_add(tv.tv_usec)
}

fn timeval_of(pts: i64) -> bindings::timeval {
    bindings::timeval {
        tv_sec: pts.div_euclid(1_000_000) as bindings::__time_t,
        tv_usec: pts.rem_euclid(1_000_000) as bindings::__suseconds_t,
    }
}

/// `frame` (packed I420) in `fourcc`'s single-plane layout (NV12: Y then interleaved CbCr).
fn convert(frame: &avdec::Frame, fourcc: &[u8; 4]) -> Vec<u8> {
    if fourcc != b"NV12" {
        return frame.i420.clone();
    }
    let y = frame.width as usize * frame.height as usize;
    let c = y / 4;
    let mut out = Vec::with_capacity(y + 2 * c);
    out.extend_from_slice(&frame.i420[..y]);
    let (u, v) = frame.i420[y..].split_at(c);
    for (a, b) in u.iter().zip(v) {
        out.push(*a);
        out.push(*b);
    }
    out
}

impl<Q, HM> TestDevice<Q, HM>
where
    Q: VirtioMediaEventQueue,
    HM: VirtioMediaHostMemoryMapper,
{
    fn send_v4l2_event(&mut self, session: u32, type_: u32, changes: u32) {
        let mut ev = bindings::v4l2_event {
            type_,
            ..Default::default()
        };
        ev.u.src_change = bindings::v4l2_event_src_change { changes };
        self.evt
            .send_event(V4l2Event::Event(SessionEvent::new(session, ev)));
    }

    /// SUBSCRIBE_EVENT `V4L2_EVENT_CTRL` of control `id` (the kernel's v4l2_ctrl_add_event):
    /// `EINVAL` for a control the decoder does not have; subscribing again changes nothing (no
    /// second initial event, as v4l2_event_subscribe). With `SEND_INITIAL`, a control other
    /// than the control class gets its event (`CH_VALUE | CH_FLAGS`, filled as the kernel's
    /// fill_event) before the answer, so that it is pending when SUBSCRIBE returns. The
    /// control being volatile, a new value sends no `CH_VALUE` event (vidioc-queryctrl.rst):
    /// SOURCE_CHANGE tells the client to read it again.
    pub(super) fn decoder_subscribe_ctrl(
        &mut self,
        s: &mut TestSession,
        id: u32,
        flags: SubscribeEventFlags,
    ) -> Result<(), i32> {
        let sid = s.id;
        let codec = s.codec.as_mut().ok_or(libc::EINVAL)?;
        let d = ctrl_desc(id).ok_or(libc::EINVAL)?;
        if codec.ctrl_subs.contains(&id) {
            return Ok(());
        }
        codec.ctrl_subs.push(id);
        if d.type_ == bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS
            || !flags.contains(SubscribeEventFlags::SEND_INITIAL)
        {
            return Ok(());
        }
        let mut ev = bindings::v4l2_event {
            type_: bindings::V4L2_EVENT_CTRL,
            id,
            ..Default::default()
        };
        ev.u.ctrl = bindings::v4l2_event_ctrl {
            changes: bindings::V4L2_EVENT_CTRL_CH_VALUE | bindings::V4L2_EVENT_CTRL_CH_FLAGS,
            type_: d.type_,
            __bindgen_anon_1: bindings::v4l2_event_ctrl__bindgen_ty_1 {
                value64: i64::from(codec.min_capture),
            },
            flags: d.flags,
            minimum: d.minimum as i32,
            maximum: d.maximum as i32,
            step: d.step as i32,
            default_value: d.default_value as i32,
        };
        self.evt
            .send_event(V4l2Event::Event(SessionEvent::new(sid, ev)));
        Ok(())
    }

    /// Runs the codec as far as the session's queues allow.
    pub(super) fn process_decoder(&mut self, s: &mut TestSession) {
        while self.decoder_step(s) {}
    }

    /// One round of decode / announce / deliver; whether anything happened.
    fn decoder_step(&mut self, s: &mut TestSession) -> bool {
        let id = s.id;
        let (Some(out), Some(cap), Some(codec)) =
            (s.output.as_mut(), s.capture.as_mut(), s.codec.as_mut())
        else {
            return false;
        };
        let mut progress = false;

        // 1. Decode: take OUTPUT data while there is room for frames.
        if out.streaming && !codec.stopped && !codec.flushed && codec.frames.len() < MAX_PENDING {
            if codec.input.is_none() && (!codec.draining || codec.drain_left > 0) {
                if let Some(i) = out.queued.pop_front() {
                    codec.drain_left = codec.drain_left.saturating_sub(1);
                    progress = true;
                    if let Some(b) = out.bufs.get_mut(i) {
                        let pts = pts_of(b.v4l2.timestamp());
                        debug!("decoder: OUTPUT buffer {i} pts {pts}");
                        match self.read_planes(b) {
                            Ok(planes) => {
                                codec.last_pts = pts;
                                codec.input = Some(Input {
                                    index: i,
                                    data: planes.concat(),
                                    off: 0,
                                    pts,
                                })
                            }
                            Err(_) => {
                                let seq = out.sequence;
                                out.sequence = out.sequence.wrapping_add(1);
                                Self::complete(&mut self.evt, id, b, seq, true);
                            }
                        }
                    }
                }
            }
            if let Some(inp) = codec.input.as_mut() {
                let mut error = false;
                if inp.off < inp.data.len() {
                    progress = true;
                    match codec.dec.parse(&inp.data[inp.off..], inp.pts) {
                        Ok((used, sent)) => {
                            // A parser that neither consumes nor completes anything would
                            // never finish this buffer: give the rest up.
                            inp.off = if used == 0 && !sent {
                                inp.data.len()
                            } else {
                                inp.off + used
                            };
                            if sent {
                                let pts = inp.pts;
                                codec.receive_all(pts);
                            }
                        }
                        Err(e) => {
                            warn!("decoder: bitstream error (errno {e})");
                            error = true;
                        }
                    }
                }
                let done = codec
                    .input
                    .as_ref()
                    .is_none_or(|i| error || i.off >= i.data.len());
                if done {
                    if let Some(inp) = codec.input.take() {
                        if let Some(b) = out.bufs.get_mut(inp.index) {
                            if b.state == BufState::Queued {
                                let seq = out.sequence;
                                out.sequence = out.sequence.wrapping_add(1);
                                Self::complete(&mut self.evt, id, b, seq, error);
                            }
                        }
                    }
                    progress = true;
                }
            } else if codec.draining && codec.drain_left == 0 {
                // Everything queued before STOP is parsed: out with the rest.
                let pts = codec.last_pts;
                if let Ok((_, true)) = codec.dec.parse(&[], pts) {
                    codec.receive_all(pts);
                }
                if let Err(e) = codec.dec.drain() {
                    warn!("decoder: drain failed (errno {e})");
                }
                codec.receive_all(pts);
                codec.flushed = true;
                progress = true;
            }
        }

        // 2. Announce a new stream size.
        if codec.owe_last.is_none() && !codec.wait_restart {
            if let Some(f) = codec.frames.front() {
                let size = (f.width, f.height);
                if codec.stream != Some(size) {
                    // A client that set CAPTURE up for this very size before the stream said
                    // anything (dev-decoder.rst, Initialization step 4, note) gets its frames
                    // without an event: an event would make it set the queue up again and
                    // drop frames already decoded into it (GStreamer 1.22 does so).
                    let ready = cap.streaming && !cap.bufs.is_empty();
                    let silent = codec.stream.is_none() && ready && codec.alloc_size == Some(size);
                    codec.stream = Some(size);
                    codec.min_capture = min_capture_buffers(f);
                    cap.fmt.width = size.0;
                    cap.fmt.height = size.1;
                    if !cap.bufs.is_empty() && codec.alloc_size != Some(size) {
                        codec.owe_last = Some(Last::ResolutionChange);
                        codec.wait_restart = true;
                    }
                    if codec.sub_source_change && !silent {
                        self.send_v4l2_event(id, EVENT_SOURCE_CHANGE, SRC_CH_RESOLUTION);
                    }
                    progress = true;
                }
            }
        }
        if codec.flushed && codec.frames.is_empty() && codec.owe_last.is_none() {
            codec.owe_last = Some(Last::EndOfStream);
        }

        // 3. Deliver into CAPTURE buffers.
        while cap.streaming {
            let Some(&ci) = cap.queued.front() else { break };
            let Some(cb) = cap.bufs.get_mut(ci) else {
                cap.queued.pop_front();
                continue;
            };
            let mut eos = false;
            let mut error = false;
            if let Some(last) = codec.owe_last.take() {
                let _ = self.write_planes(cb, &[]);
                cb.v4l2.add_flags(BufferFlags::LAST);
                eos = last == Last::EndOfStream;
                if !eos {
                    codec.wait_restart = true;
                }
            } else {
                if codec.wait_restart {
                    break;
                }
                let Some(f) = codec.frames.front() else { break };
                if codec.stream != Some((f.width, f.height)) {
                    break; // announced in the next round
                }
                let Some(f) = codec.frames.pop_front() else {
                    break;
                };
                let data = convert(&f, &cap.fmt.fourcc);
                if cb.sizes.first().is_none_or(|&n| (n as usize) < data.len()) {
                    warn!(
                        "CAPTURE buffer {ci} too small for a {}x{} frame",
                        f.width, f.height
                    );
                    error = true;
                    let _ = self.write_planes(cb, &[]);
                } else if self.write_planes(cb, &[data]).is_err() {
                    error = true;
                }
                cb.v4l2.set_timestamp(timeval_of(f.pts));
                debug!(
                    "decoder: CAPTURE buffer {ci} {}x{} pts {}",
                    f.width, f.height, f.pts
                );
                if codec.flushed && codec.frames.is_empty() {
                    cb.v4l2.add_flags(BufferFlags::LAST);
                    eos = true;
                }
            }
            cap.queued.pop_front();
            let seq = cap.sequence;
            cap.sequence = cap.sequence.wrapping_add(1);
            // EOS goes out before the LAST buffer, so that it is pending by the time the
            // buffer can be dequeued (v4l2-compliance checks for it right after the LAST
            // buffer; sent after it, the event raced the client).
            if eos && codec.sub_eos {
                self.send_v4l2_event(id, EVENT_EOS, 0);
            }
            Self::complete(&mut self.evt, id, cb, seq, error);
            progress = true;
            if eos {
                codec.reset();
                codec.stopped = true;
            }
        }
        progress
    }

    /// STREAMOFF of a decoder queue.
    pub(super) fn decoder_streamoff(&mut self, s: &mut TestSession, t: QueueType, was_on: bool) {
        let Some(codec) = s.codec.as_mut() else {
            return;
        };
        if super::is_capture(t) {
            // Restarting CAPTURE after a resolution change is part of the sequence (a drain
            // asked for meanwhile goes on at the new size); any other STREAMOFF of CAPTURE
            // aborts a drain (dev-decoder.rst, Drain, note).
            let resolution_change =
                codec.wait_restart || codec.owe_last == Some(Last::ResolutionChange);
            codec.wait_restart = false;
            if codec.owe_last == Some(Last::ResolutionChange) {
                codec.owe_last = None;
            }
            // (STREAMOFF of a queue that was not streaming, as clients do before setting
            // CAPTURE up, changes nothing.)
            if was_on && !resolution_change && (codec.draining || codec.owe_last.is_some()) {
                // A drain cut short by the client: the next STREAMON starts afresh.
                codec.owe_last = None;
                codec.draining = false;
                codec.drain_left = 0;
                codec.flushed = false;
                if let Err(e) = codec.dec.reset() {
                    warn!("decoder reset failed (errno {e})");
                }
            }
        } else if was_on {
            codec.reset();
        }
    }

    /// STREAMON of a decoder queue: a stopped (drained) decoder starts again.
    pub(super) fn decoder_streamon(&mut self, s: &mut TestSession) {
        if let Some(codec) = s.codec.as_mut() {
            codec.stopped = false;
        }
    }

    /// VIDIOC_TRY_DECODER_CMD: START and STOP, with their flags cleared (this decoder has
    /// none: no STOP_TO_BLACK/IMMEDIATELY, no audio) and START's speed/format at 0 (normal);
    /// PAUSE/RESUME and unknown commands are `EINVAL` (what v4l2-compliance asks of stateful
    /// decoders).
    pub(super) fn try_dec_cmd(
        cmd: &bindings::v4l2_decoder_cmd,
    ) -> Result<bindings::v4l2_decoder_cmd, i32> {
        if !matches!(cmd.cmd, DEC_CMD_START | DEC_CMD_STOP) {
            return Err(libc::EINVAL);
        }
        Ok(bindings::v4l2_decoder_cmd {
            cmd: cmd.cmd,
            ..Default::default()
        })
    }

    /// VIDIOC_DECODER_CMD.
    pub(super) fn dec_cmd(
        &mut self,
        s: &mut TestSession,
        cmd: &bindings::v4l2_decoder_cmd,
    ) -> Result<bindings::v4l2_decoder_cmd, i32> {
        let answer = Self::try_dec_cmd(cmd)?;
        let out_streaming = s.output.as_ref().is_some_and(|q| q.streaming);
        let queued = s.output.as_ref().map_or(0, |q| q.queued.len());
        let Some(codec) = s.codec.as_mut() else {
            return Err(libc::ENOTTY);
        };
        match cmd.cmd {
            DEC_CMD_STOP => {
                // dev-decoder.rst lets a decoder ignore STOP unless both queues stream; like
                // the kernel's vicodec, this one drains as soon as OUTPUT streams (CAPTURE
                // gets the frames and the LAST flag once it is set up): v4l2-ctl sends STOP
                // after a short clip before it has set CAPTURE up.
                if out_streaming && !codec.stopped && !codec.draining {
                    codec.draining = true;
                    codec.drain_left = queued;
                }
            }
            _ => codec.stopped = false,
        }
        self.process_decoder(s);
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use virtio_media::protocol::V4l2Ioctl;
    use virtio_media::VirtioMediaDevice;
    use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    use crate::guestmem::GuestMapper;

    /// The `v4l2_event`s the device sent.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<bindings::v4l2_event>>>);
    impl VirtioMediaEventQueue for Events {
        fn send_event(&mut self, event: V4l2Event) {
            if let V4l2Event::Event(e) = event {
                // SessionEvent is repr(C): its header, then the (private) v4l2_event.
                let off = size_of::<SessionEvent>() - size_of::<bindings::v4l2_event>();
                // SAFETY: `off` is the offset of the v4l2_event field of the repr(C) struct.
                let ev = unsafe {
                    *(&e as *const SessionEvent)
                        .cast::<u8>()
                        .add(off)
                        .cast::<bindings::v4l2_event>()
                };
                self.0.lock().unwrap().push(ev);
            }
        }
    }

    // No shared memory: every mapping fails.
    use crate::testdev::Detached as NoShm;

    type Dev = TestDevice<Events, NoShm>;
    const YU12: &[[u8; 4]] = &[*b"YU12"];
    const SIZES: &[(u32, u32)] = &[(320, 240)];

    fn setup() -> (Dev, TestSession, Events) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap(),
        );
        let spec = super::super::Spec {
            kind: super::super::Kind::Decoder,
            mplane: true,
            formats: YU12,
            sizes: SIZES,
        };
        let ev = Events::default();
        let mut dev = TestDevice::new(spec, ev.clone(), NoShm, GuestMapper::new(mem));
        let s = <Dev as VirtioMediaDevice<CmdReader, CmdWriter>>::new_session(&mut dev, 1).unwrap();
        (dev, s, ev)
    }

    /// One ioctl through the device's dispatch: (errno, answer payload).
    fn ioctl(dev: &mut Dev, s: &mut TestSession, ioctl: V4l2Ioctl, arg: &[u8]) -> (i32, Vec<u8>) {
        let mut reader = CmdReader::new(arg.to_vec());
        let mut writer = CmdWriter::new();
        dev.do_ioctl(s, ioctl, &mut reader, &mut writer).unwrap();
        let errno = i32::from_le_bytes(writer[..4].try_into().unwrap());
        (errno, writer[8..].to_vec())
    }

    fn word(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn query(dev: &mut Dev, s: &mut TestSession, ext: bool, id: u32) -> (i32, Vec<u8>) {
        let (op, size) = if ext {
            (V4l2Ioctl::VIDIOC_QUERY_EXT_CTRL, 232)
        } else {
            (V4l2Ioctl::VIDIOC_QUERYCTRL, 68)
        };
        let mut arg = vec![0xffu8; size];
        arg[..4].copy_from_slice(&id.to_le_bytes());
        ioctl(dev, s, op, &arg)
    }

    const CLASS: u32 = bindings::V4L2_CID_USER_CLASS;
    const MIN_BUF: u32 = bindings::V4L2_CID_MIN_BUFFERS_FOR_CAPTURE;
    const NEXT: u32 = bindings::V4L2_CTRL_FLAG_NEXT_CTRL;
    const COMPOUND: u32 = bindings::V4L2_CTRL_FLAG_NEXT_COMPOUND;

    #[test]
    fn query_enumerates_the_class_then_min_buffers() {
        let (mut dev, mut s, _) = setup();
        for ext in [false, true] {
            for flags in [NEXT, NEXT | COMPOUND] {
                let (e, a) = query(&mut dev, &mut s, ext, flags);
                assert_eq!((e, word(&a, 0)), (0, CLASS));
                let (e, a) = query(&mut dev, &mut s, ext, CLASS | flags);
                assert_eq!((e, word(&a, 0)), (0, MIN_BUF));
                assert_eq!(
                    query(&mut dev, &mut s, ext, MIN_BUF | flags).0,
                    libc::EINVAL
                );
            }
            assert_eq!(query(&mut dev, &mut s, ext, COMPOUND).0, libc::EINVAL);
            assert_eq!(query(&mut dev, &mut s, ext, MIN_BUF + 1).0, libc::EINVAL);
            assert_eq!(
                query(&mut dev, &mut s, ext, bindings::V4L2_CID_PRIVATE_BASE).0,
                libc::EINVAL
            );
        }
        // QUERY_EXT_CTRL of MIN_BUFFERS_FOR_CAPTURE: integer 1..32 step 1 default 1,
        // READ_ONLY | VOLATILE, elem_size 4, elems 1, reserved 0.
        let (e, a) = query(&mut dev, &mut s, true, MIN_BUF);
        assert_eq!(e, 0);
        assert_eq!(a.len(), 232);
        assert_eq!(word(&a, 4), bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER);
        assert_eq!(&a[8..38], b"Min Number of Capture Buffers\0");
        let q64 = |at: usize| i64::from_le_bytes(a[at..at + 8].try_into().unwrap());
        assert_eq!([q64(40), q64(48), q64(56), q64(64)], [1, 32, 1, 1]);
        assert_eq!(
            word(&a, 72),
            bindings::V4L2_CTRL_FLAG_READ_ONLY | bindings::V4L2_CTRL_FLAG_VOLATILE
        );
        assert_eq!([word(&a, 76), word(&a, 80), word(&a, 84)], [4, 1, 0]);
        assert!(a[88..].iter().all(|&b| b == 0));
        // QUERYCTRL of the class: all 0 but id, type, name and READ_ONLY | WRITE_ONLY.
        let (e, a) = query(&mut dev, &mut s, false, CLASS);
        assert_eq!((e, a.len()), (0, 68));
        assert_eq!(
            word(&a, 4),
            bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS
        );
        assert_eq!(&a[8..22], b"User Controls\0");
        assert_eq!(
            [word(&a, 40), word(&a, 44), word(&a, 48), word(&a, 52)],
            [0; 4]
        );
        assert_eq!(
            word(&a, 56),
            bindings::V4L2_CTRL_FLAG_READ_ONLY | bindings::V4L2_CTRL_FLAG_WRITE_ONLY
        );
    }

    fn control(id: u32, value: i32) -> Vec<u8> {
        [id.to_le_bytes(), value.to_le_bytes()].concat()
    }

    #[test]
    fn g_ctrl_reads_s_ctrl_is_refused_as_read_only() {
        let (mut dev, mut s, _) = setup();
        let (e, a) = ioctl(
            &mut dev,
            &mut s,
            V4l2Ioctl::VIDIOC_G_CTRL,
            &control(MIN_BUF, 0),
        );
        assert_eq!(
            (e, word(&a, 0), word(&a, 4)),
            (0, MIN_BUF, MIN_CAPTURE_DEFAULT)
        );
        s.codec.as_mut().unwrap().min_capture = 8;
        let (e, a) = ioctl(
            &mut dev,
            &mut s,
            V4l2Ioctl::VIDIOC_G_CTRL,
            &control(MIN_BUF, 0),
        );
        assert_eq!((e, word(&a, 4)), (0, 8));
        for (op, id, errno) in [
            (V4l2Ioctl::VIDIOC_S_CTRL, MIN_BUF, libc::EACCES),
            (V4l2Ioctl::VIDIOC_S_CTRL, CLASS, libc::EACCES),
            (V4l2Ioctl::VIDIOC_G_CTRL, CLASS, libc::EACCES),
            (V4l2Ioctl::VIDIOC_G_CTRL, 0, libc::EINVAL),
            (V4l2Ioctl::VIDIOC_S_CTRL, 0, libc::EINVAL),
        ] {
            assert_eq!(
                ioctl(&mut dev, &mut s, op, &control(id, 3)).0,
                errno,
                "{op:?} {id:#x}"
            );
        }
    }

    fn ext(id: u32) -> bindings::v4l2_ext_control {
        bindings::v4l2_ext_control {
            id,
            ..Default::default()
        }
    }

    #[test]
    fn ext_ctrls_follow_the_control_framework() {
        let (_, s, _) = setup();
        let codec = s.codec.as_ref().unwrap();
        let mut cs = bindings::v4l2_ext_controls::default();
        let user = || CtrlWhich::Class(bindings::V4L2_CTRL_CLASS_USER);
        // G: the value; DEF_VAL the default; count 0 fine; the class is write-only.
        let mut a = [ext(MIN_BUF)];
        assert_eq!(
            codec.ext_ctrls(b'G', CtrlWhich::Current, &mut cs, &mut a),
            Ok(())
        );
        assert_eq!(
            unsafe { a[0].__bindgen_anon_1.value },
            MIN_CAPTURE_DEFAULT as i32
        );
        assert_eq!(codec.ext_ctrls(b'G', user(), &mut cs, &mut a), Ok(()));
        assert_eq!(
            codec.ext_ctrls(b'G', CtrlWhich::Default, &mut cs, &mut a),
            Ok(())
        );
        assert_eq!(
            codec.ext_ctrls(b'G', CtrlWhich::Current, &mut cs, &mut []),
            Ok(())
        );
        let mut a = [ext(MIN_BUF), ext(CLASS)];
        assert_eq!(
            codec.ext_ctrls(b'G', CtrlWhich::Current, &mut cs, &mut a),
            Err(libc::EACCES)
        );
        assert_eq!(cs.error_idx, 2);
        // S/TRY: read-only; error_idx 0 for TRY, count for S.
        for (op, idx) in [(b'T', 0), (b'S', 2)] {
            let mut a = [ext(MIN_BUF), ext(MIN_BUF)];
            assert_eq!(
                codec.ext_ctrls(op, CtrlWhich::Current, &mut cs, &mut a),
                Err(libc::EACCES)
            );
            assert_eq!(cs.error_idx, idx);
            assert_eq!(
                codec.ext_ctrls(op, CtrlWhich::Current, &mut cs, &mut []),
                Ok(())
            );
            assert_eq!(
                codec.ext_ctrls(op, CtrlWhich::Default, &mut cs, &mut a),
                Err(libc::EINVAL)
            );
        }
        // Unknown ids and other classes: EINVAL, error_idx its index for TRY, else count.
        for (op, idx) in [(b'G', 2), (b'T', 1), (b'S', 2)] {
            let mut a = [ext(MIN_BUF), ext(0)];
            assert_eq!(
                codec.ext_ctrls(op, CtrlWhich::Current, &mut cs, &mut a),
                Err(libc::EINVAL)
            );
            assert_eq!(cs.error_idx, idx);
            let codec_class = CtrlWhich::Class(bindings::V4L2_CTRL_CLASS_CODEC);
            assert_eq!(
                codec.ext_ctrls(op, codec_class, &mut cs, &mut a),
                Err(libc::EINVAL)
            );
            assert_eq!(cs.error_idx, if op == b'T' { 0 } else { 2 });
            let codec_class = CtrlWhich::Class(bindings::V4L2_CTRL_CLASS_CODEC);
            assert_eq!(
                codec.ext_ctrls(op, codec_class, &mut cs, &mut []),
                Err(libc::EINVAL)
            );
        }
    }

    fn subscription(type_: u32, id: u32, flags: u32) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[..4].copy_from_slice(&type_.to_le_bytes());
        b[4..8].copy_from_slice(&id.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b
    }

    #[test]
    fn ctrl_event_subscription_sends_the_initial_event_once() {
        let (mut dev, mut s, ev) = setup();
        let sub = |id| {
            subscription(
                bindings::V4L2_EVENT_CTRL,
                id,
                bindings::V4L2_EVENT_SUB_FL_SEND_INITIAL,
            )
        };
        let op = V4l2Ioctl::VIDIOC_SUBSCRIBE_EVENT;
        assert_eq!(ioctl(&mut dev, &mut s, op, &sub(MIN_BUF)).0, 0);
        assert_eq!(ioctl(&mut dev, &mut s, op, &sub(MIN_BUF)).0, 0);
        let events = ev.0.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "one initial event");
        let e = events[0];
        assert_eq!((e.type_, e.id), (bindings::V4L2_EVENT_CTRL, MIN_BUF));
        // SAFETY: a V4L2_EVENT_CTRL event.
        let c = unsafe { e.u.ctrl };
        assert_eq!(
            c.changes,
            bindings::V4L2_EVENT_CTRL_CH_VALUE | bindings::V4L2_EVENT_CTRL_CH_FLAGS
        );
        assert_eq!(c.type_, bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER);
        assert_eq!(
            unsafe { c.__bindgen_anon_1.value64 },
            i64::from(MIN_CAPTURE_DEFAULT)
        );
        assert_eq!(
            (c.minimum, c.maximum, c.step, c.default_value),
            (1, 32, 1, 1)
        );
        // The control class: subscribed, no event. Unknown control: EINVAL.
        assert_eq!(ioctl(&mut dev, &mut s, op, &sub(CLASS)).0, 0);
        assert_eq!(
            ioctl(&mut dev, &mut s, op, &sub(0x0098_0900)).0,
            libc::EINVAL
        );
        assert_eq!(ev.0.lock().unwrap().len(), 1);
        // Unsubscribed, a new subscription sends the initial event again.
        let unsub = V4l2Ioctl::VIDIOC_UNSUBSCRIBE_EVENT;
        assert_eq!(ioctl(&mut dev, &mut s, unsub, &sub(MIN_BUF)).0, 0);
        assert_eq!(ioctl(&mut dev, &mut s, unsub, &sub(MIN_BUF)).0, 0);
        assert_eq!(ioctl(&mut dev, &mut s, op, &sub(MIN_BUF)).0, 0);
        assert_eq!(ev.0.lock().unwrap().len(), 2);
        // V4L2_EVENT_ALL forgets it too; without SEND_INITIAL, no event.
        assert_eq!(ioctl(&mut dev, &mut s, unsub, &subscription(0, 0, 0)).0, 0);
        let quiet = subscription(bindings::V4L2_EVENT_CTRL, MIN_BUF, 0);
        assert_eq!(ioctl(&mut dev, &mut s, op, &quiet).0, 0);
        assert_eq!(ev.0.lock().unwrap().len(), 2);
    }

    fn frame(width: u32, height: u32, level: u32, reorder: u32) -> avdec::Frame {
        avdec::Frame {
            width,
            height,
            pts: 0,
            i420: Vec::new(),
            level,
            reorder,
        }
    }

    #[test]
    fn min_capture_buffers_is_the_dpb_plus_one() {
        // clip_320x240 (x264 level 1.3, 2 reordered): 2376 / 300 MBs = 7 frames, + 1.
        assert_eq!(min_capture_buffers(&frame(320, 240, 13, 2)), 8);
        // 640x480 at level 3: 8100 / 1200 = 6; 1280x720 at 3.1: 18000 / 3600 = 5.
        assert_eq!(min_capture_buffers(&frame(640, 480, 30, 2)), 7);
        assert_eq!(min_capture_buffers(&frame(1280, 720, 31, 2)), 6);
        // 1920x1080 is 120x68 MBs (coded 1088): 32768 / 8160 = 4 at level 4.
        assert_eq!(min_capture_buffers(&frame(1920, 1080, 40, 0)), 5);
        // At most 16 frames; no fewer than libavcodec holds back; unknown level: 16.
        assert_eq!(min_capture_buffers(&frame(16, 16, 51, 0)), 17);
        assert_eq!(min_capture_buffers(&frame(4096, 2304, 51, 7)), 8);
        assert_eq!(min_capture_buffers(&frame(320, 240, 0, 0)), 17);
    }
}
