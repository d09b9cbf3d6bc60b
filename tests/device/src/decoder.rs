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

use std::collections::VecDeque;

use log::{debug, warn};
use virtio_media::protocol::{SessionEvent, V4l2Event};
use virtio_media::v4l2r::bindings;
use virtio_media::v4l2r::ioctl::BufferFlags;
use virtio_media::v4l2r::QueueType;
use virtio_media::{VirtioMediaEventQueue, VirtioMediaHostMemoryMapper};

use super::{BufState, Format, TestDevice, TestSession};
use crate::avdec::{self, H264Decoder, Received};

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
            }
            _ => return Err(libc::EINVAL),
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
