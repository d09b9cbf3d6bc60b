// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Safe wrapper of csrc/avdec.c: libavcodec's H.264 byte-stream parser and decoder (Debian's
//! libavcodec59, single-threaded). The only FFI of the decoder profile.

use std::ffi::{c_int, c_long};
use std::ptr::NonNull;

#[repr(C)]
struct RawDec {
    _opaque: [u8; 0],
}

extern "C" {
    fn avdec_new() -> *mut RawDec;
    fn avdec_free(d: *mut RawDec);
    fn avdec_reset(d: *mut RawDec) -> c_int;
    fn avdec_parse(d: *mut RawDec, buf: *const u8, len: c_int, pts: i64, sent: *mut c_int)
        -> c_int;
    fn avdec_drain(d: *mut RawDec) -> c_int;
    fn avdec_receive(d: *mut RawDec, w: *mut c_int, h: *mut c_int, pts: *mut i64) -> c_int;
    fn avdec_copy_i420(d: *mut RawDec, dst: *mut u8, cap: usize) -> c_long;
    fn avdec_stream_info(d: *mut RawDec, level: *mut c_int, reorder: *mut c_int);
}

/// libavcodec's "no timestamp" (`AV_NOPTS_VALUE`).
pub const NO_PTS: i64 = i64::MIN;

/// A decoded frame, tightly packed I420 (Y `w*h`, then U and V `w/2*h/2` each).
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// The timestamp given with the input that started this frame, or [`NO_PTS`].
    pub pts: i64,
    pub i420: Vec<u8>,
    /// The stream's H.264 `level_idc` when the frame came out (31 = level 3.1, 9 = 1b; 0 if
    /// the decoder did not say).
    pub level: u32,
    /// Frames the decoder holds back to output them in display order (`has_b_frames`).
    pub reorder: u32,
}

/// What [`H264Decoder::receive`] found.
pub enum Received {
    Frame(Frame),
    /// Nothing now: more input is needed.
    None,
    /// Drained ([`H264Decoder::drain`]): nothing more until [`H264Decoder::reset`].
    Eof,
}

/// One H.264 decoding context (parser + decoder).
pub struct H264Decoder(NonNull<RawDec>);

// SAFETY: the handle is plain heap state of libavcodec, used by one thread at a time (`&mut`).
unsafe impl Send for H264Decoder {}

impl H264Decoder {
    /// A new context; `None` if libavcodec cannot open its H.264 decoder.
    pub fn new() -> Option<Self> {
        // SAFETY: no arguments; returns NULL or a handle we own.
        NonNull::new(unsafe { avdec_new() }).map(Self)
    }

    /// Forgets all input and state (a seek, or a restart after a drain). Errno on failure.
    pub fn reset(&mut self) -> Result<(), i32> {
        // SAFETY: `self.0` is a live handle.
        match unsafe { avdec_reset(self.0.as_ptr()) } {
            0 => Ok(()),
            e => Err(-e),
        }
    }

    /// Parses the start of `data` (timestamp `pts`): returns (bytes consumed, whether an access
    /// unit went to the decoder: then call [`Self::receive`] until it says `None`). An empty
    /// `data` flushes the parser's last access unit.
    pub fn parse(&mut self, data: &[u8], pts: i64) -> Result<(usize, bool), i32> {
        let len = c_int::try_from(data.len()).unwrap_or(c_int::MAX);
        let mut sent: c_int = 0;
        let ptr = if data.is_empty() {
            std::ptr::null()
        } else {
            data.as_ptr()
        };
        // SAFETY: `ptr` is NULL (with `len` 0) or `data`, valid for `len` bytes; `sent` is ours.
        let used = unsafe { avdec_parse(self.0.as_ptr(), ptr, len, pts, &mut sent) };
        if used < 0 {
            return Err(-used);
        }
        Ok((used as usize, sent != 0))
    }

    /// Signals the end of the stream: the decoder gives out every frame it holds.
    pub fn drain(&mut self) -> Result<(), i32> {
        // SAFETY: `self.0` is a live handle.
        match unsafe { avdec_drain(self.0.as_ptr()) } {
            0 => Ok(()),
            e => Err(-e),
        }
    }

    /// The next decoded frame, if any. Errors: `ENOTSUP` for a frame that is not 8-bit 4:2:0
    /// of even size, `EIO` for a decoder failure.
    pub fn receive(&mut self) -> Result<Received, i32> {
        let (mut w, mut h, mut pts) = (0, 0, 0i64);
        // SAFETY: live handle; the out-pointers are ours.
        let r = unsafe { avdec_receive(self.0.as_ptr(), &mut w, &mut h, &mut pts) };
        match r {
            0 => return Ok(Received::None),
            1 => (),
            e if e == -libc::EPIPE => return Ok(Received::Eof),
            e => return Err(-e),
        }
        let (width, height) = (w as u32, h as u32);
        let mut i420 = vec![0u8; width as usize * height as usize * 3 / 2];
        // SAFETY: `i420` is writable for its length; the C side writes at most that many bytes.
        let n = unsafe { avdec_copy_i420(self.0.as_ptr(), i420.as_mut_ptr(), i420.len()) };
        if n < 0 {
            return Err(-(n as i32));
        }
        let (mut level, mut reorder) = (0, 0);
        // SAFETY: live handle; the out-pointers are ours.
        unsafe { avdec_stream_info(self.0.as_ptr(), &mut level, &mut reorder) };
        Ok(Received::Frame(Frame {
            width,
            height,
            pts,
            i420,
            level: level.max(0) as u32,
            reorder: reorder.max(0) as u32,
        }))
    }
}

impl Drop for H264Decoder {
    fn drop(&mut self) {
        // SAFETY: we own the handle; it is not used after this.
        unsafe { avdec_free(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gives_no_frame_and_no_crash() {
        let mut d = H264Decoder::new().expect("libavcodec H.264 decoder");
        let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut off = 0;
        while off < junk.len() {
            let (used, sent) = d.parse(&junk[off..], 1).expect("parse");
            off += used.max(1);
            if sent {
                while let Ok(Received::Frame(_)) = d.receive() {}
            }
        }
        d.parse(&[], NO_PTS).expect("flush");
        d.drain().expect("drain");
        assert!(matches!(d.receive(), Ok(Received::Eof) | Err(_)));
        d.reset().expect("reset");
    }
}
