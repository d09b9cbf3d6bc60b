// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Device wrappers that correct what the `virtio-media` crate's devices say about themselves.
//!
//! `FormatFixes` wraps a device. The crate's SimpleCaptureDevice (0.0.8) answers
//! G_FMT/S_FMT/TRY_FMT for YU12 with `num_planes = 3` (the three plane sizes of YM12, the
//! non-contiguous variant) while every buffer it allocates, queries and dequeues has one plane of
//! 460800 bytes. YU12 is a single-buffer format, so in the MPLANE API it is one plane: sizeimage
//! 460800, bytesperline 640 (the luma stride). User space that believes the 3 (GStreamer's
//! v4l2src: "Device wants 3 planes", not-negotiated) cannot stream. The wrapper rewrites such
//! formats in the responses to one plane carrying the summed size.
//!
//! It also fills the empty `description` of ENUM_FMT answers (the crate leaves it zeroed, which
//! the driver repairs with a "repaired ioctl 2 payload" warning).
//!
//! And it answers `EINVAL` to a VIDIOC_SUBSCRIBE_EVENT whose `type` is not one of the six
//! V4L2 event types v4l2r 0.0.7 knows (VSYNC..MOTION_DET, 1..=6) or whose `flags` has bits
//! beyond SEND_INITIAL | ALLOW_FEEDBACK: the crate (ioctl.rs, VIDIOC_SUBSCRIBE_EVENT) `unwrap`s
//! both conversions, so any other value, which any user space can pass through the driver,
//! panics the vring worker and the device is gone (found by tests/guest_tools/fuzz.py).
//! Everything else goes to the wrapped device unchanged.

use std::io::Result as IoResult;

use log::debug;
use virtio_media::io::{ReadFromDescriptorChain, WriteToDescriptorChain};
use virtio_media::protocol::V4l2Ioctl;
use virtio_media::v4l2r::bindings::{self, v4l2_format};
use virtio_media::v4l2r::PixelFormat;
use virtio_media::VirtioMediaDevice;

use crate::chain::{CmdReader, CmdWriter};

/// Single-buffer ("contiguous") formats whose planes share one memory plane.
const CONTIGUOUS: [&[u8; 4]; 7] = [
    b"YU12", b"YV12", b"NV12", b"NV21", b"NV16", b"NV61", b"422P",
];

pub struct FormatFixes<D> {
    inner: D,
}

impl<D> FormatFixes<D> {
    pub fn new(inner: D) -> Self {
        Self { inner }
    }
}

/// Rewrites the `v4l2_format` of a successful G_FMT/S_FMT/TRY_FMT response (resp header, then
/// the format) in place.
fn fix_format_response(resp: &mut [u8]) {
    const HDR: usize = 8;
    const FMT: usize = std::mem::size_of::<v4l2_format>();
    if resp.len() < HDR + FMT || resp[0..4] != [0, 0, 0, 0] {
        return;
    }
    let Ok(mut fmt) = std::io::Cursor::new(&resp[HDR..HDR + FMT]).read_obj::<v4l2_format>() else {
        return;
    };
    if fmt.type_ != bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE
        && fmt.type_ != bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE
    {
        return;
    }
    // SAFETY: the MPLANE buffer types use the `pix_mp` member of the union.
    let pix = unsafe { &mut fmt.fmt.pix_mp };
    let n = usize::from(pix.num_planes).min(pix.plane_fmt.len());
    if n < 2
        || !CONTIGUOUS
            .iter()
            .any(|f| PixelFormat::from_fourcc(f).to_u32() == pix.pixelformat)
    {
        return;
    }
    let total: u32 = pix.plane_fmt[..n].iter().map(|p| p.sizeimage).sum();
    debug!(
        "format {}: {} planes -> 1 plane of {total} bytes",
        PixelFormat::from_u32(pix.pixelformat),
        n
    );
    pix.plane_fmt[0].sizeimage = total;
    for p in &mut pix.plane_fmt[1..] {
        *p = Default::default();
    }
    pix.num_planes = 1;
    let mut out: Vec<u8> = Vec::with_capacity(FMT);
    if out.write_obj(fmt).is_ok() && out.len() == FMT {
        resp[HDR..HDR + FMT].copy_from_slice(&out);
    }
}

/// Fills an empty `description` of a successful ENUM_FMT response (resp header, then
/// `v4l2_fmtdesc`) in place, with the kernel's name for the format (or its fourcc).
fn fix_fmtdesc_response(resp: &mut [u8]) {
    // struct v4l2_fmtdesc: index@0 type@4 flags@8 description[32]@12 pixelformat@44.
    const DESC: usize = 8 + 12;
    const PIXFMT: usize = 8 + 44;
    if resp.len() < PIXFMT + 4 || resp[0..4] != [0, 0, 0, 0] || resp[DESC] != 0 {
        return;
    }
    let fourcc: [u8; 4] = resp[PIXFMT..PIXFMT + 4].try_into().unwrap();
    let name: &[u8] = match &fourcc {
        b"YU12" => b"Planar YUV 4:2:0",
        b"YV12" => b"Planar YVU 4:2:0",
        b"NV12" => b"Y/UV 4:2:0",
        b"NV21" => b"Y/VU 4:2:0",
        b"NV16" => b"Y/UV 4:2:2",
        b"NV61" => b"Y/VU 4:2:2",
        b"422P" => b"Planar YUV 4:2:2",
        _ => &fourcc,
    };
    resp[DESC..DESC + name.len()].copy_from_slice(name);
}

/// Whether the crate would panic on this `v4l2_event_subscription` (type@0, id@4, flags@8,
/// reserved[5]; 32 bytes): a `type` outside 1..=6 (V4L2_EVENT_VSYNC..V4L2_EVENT_MOTION_DET)
/// or `flags` bits outside V4L2_EVENT_SUB_FL_SEND_INITIAL | V4L2_EVENT_SUB_FL_ALLOW_FEEDBACK.
/// A payload shorter than 12 bytes is left to the crate (its reader fails with EINVAL).
pub(crate) fn subscription_panics_crate(input: &[u8]) -> bool {
    let word = |off: usize| {
        input
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match (word(0), word(8)) {
        (Some(ty), Some(flags)) => {
            !(bindings::V4L2_EVENT_VSYNC..=bindings::V4L2_EVENT_MOTION_DET).contains(&ty)
                || flags
                    & !(bindings::V4L2_EVENT_SUB_FL_SEND_INITIAL
                        | bindings::V4L2_EVENT_SUB_FL_ALLOW_FEEDBACK)
                    != 0
        }
        _ => false,
    }
}

impl<D> VirtioMediaDevice<CmdReader, CmdWriter> for FormatFixes<D>
where
    D: VirtioMediaDevice<CmdReader, CmdWriter>,
{
    type Session = D::Session;

    fn new_session(&mut self, session_id: u32) -> Result<Self::Session, i32> {
        self.inner.new_session(session_id)
    }

    fn close_session(&mut self, session: Self::Session) {
        self.inner.close_session(session)
    }

    fn do_ioctl(
        &mut self,
        session: &mut Self::Session,
        ioctl: V4l2Ioctl,
        reader: &mut CmdReader,
        writer: &mut CmdWriter,
    ) -> IoResult<()> {
        if ioctl == V4l2Ioctl::VIDIOC_SUBSCRIBE_EVENT {
            let pos = usize::try_from(reader.position()).unwrap_or(usize::MAX);
            if subscription_panics_crate(reader.get_ref().get(pos..).unwrap_or(&[])) {
                debug!("SUBSCRIBE_EVENT the crate cannot parse: EINVAL");
                return writer.write_err_response(libc::EINVAL);
            }
        }
        let start = writer.len();
        self.inner.do_ioctl(session, ioctl, reader, writer)?;
        if matches!(
            ioctl,
            V4l2Ioctl::VIDIOC_G_FMT | V4l2Ioctl::VIDIOC_S_FMT | V4l2Ioctl::VIDIOC_TRY_FMT
        ) {
            fix_format_response(&mut writer[start..]);
        } else if ioctl == V4l2Ioctl::VIDIOC_ENUM_FMT {
            fix_fmtdesc_response(&mut writer[start..]);
        }
        Ok(())
    }

    fn do_mmap(
        &mut self,
        session: &mut Self::Session,
        flags: u32,
        offset: u32,
    ) -> Result<(u64, u64), i32> {
        self.inner.do_mmap(session, flags, offset)
    }

    fn do_munmap(&mut self, guest_addr: u64) -> Result<(), i32> {
        self.inner.do_munmap(guest_addr)
    }

    fn process_events(&mut self, session: &mut Self::Session) -> Result<(), i32> {
        self.inner.process_events(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yu12_3planes() -> Vec<u8> {
        let mut f = v4l2_format {
            type_: bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
            ..Default::default()
        };
        // SAFETY: MPLANE type, pix_mp member.
        let pix = unsafe { &mut f.fmt.pix_mp };
        pix.width = 640;
        pix.height = 480;
        pix.pixelformat = PixelFormat::from_fourcc(b"YU12").to_u32();
        pix.num_planes = 3;
        pix.plane_fmt[0].sizeimage = 307200;
        pix.plane_fmt[0].bytesperline = 640;
        pix.plane_fmt[1].sizeimage = 76800;
        pix.plane_fmt[1].bytesperline = 320;
        pix.plane_fmt[2].sizeimage = 76800;
        pix.plane_fmt[2].bytesperline = 320;
        let mut out = vec![0u8; 8];
        out.write_obj(f).unwrap();
        out
    }

    fn subscription(ty: u32, flags: u32) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[0..4].copy_from_slice(&ty.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b
    }

    #[test]
    fn subscriptions_the_crate_cannot_parse_are_caught() {
        // V4L2_EVENT_EOS (2) and V4L2_EVENT_SOURCE_CHANGE (5) with SEND_INITIAL (1): parsed.
        assert!(!subscription_panics_crate(&subscription(2, 0)));
        assert!(!subscription_panics_crate(&subscription(5, 1)));
        assert!(!subscription_panics_crate(&subscription(6, 3)));
        // The fuzzer's find: type 0xaab55342; also 0, 7, V4L2_EVENT_PRIVATE_START, a flag 4.
        assert!(subscription_panics_crate(&subscription(0xaab5_5342, 0)));
        assert!(subscription_panics_crate(&subscription(0, 0)));
        assert!(subscription_panics_crate(&subscription(7, 0)));
        assert!(subscription_panics_crate(&subscription(0x0800_0000, 0)));
        assert!(subscription_panics_crate(&subscription(2, 4)));
        assert!(!subscription_panics_crate(&[2, 0, 0]));
    }

    #[test]
    fn yu12_becomes_one_plane() {
        let mut resp = yu12_3planes();
        fix_format_response(&mut resp);
        let f = std::io::Cursor::new(&resp[8..])
            .read_obj::<v4l2_format>()
            .unwrap();
        // SAFETY: MPLANE type, pix_mp member.
        let pix = unsafe { f.fmt.pix_mp };
        // Packed structs: copy the fields out ({ .. }) before comparing.
        assert_eq!({ pix.num_planes }, 1);
        assert_eq!({ pix.plane_fmt[0].sizeimage }, 460800);
        assert_eq!({ pix.plane_fmt[0].bytesperline }, 640);
        assert_eq!({ pix.plane_fmt[1].sizeimage }, 0);
        assert_eq!({ pix.width }, 640);
    }

    #[test]
    fn fmtdesc_gets_a_description() {
        let mut resp = vec![0u8; 8 + 64];
        resp[8 + 44..8 + 48].copy_from_slice(b"YU12");
        fix_fmtdesc_response(&mut resp);
        assert_eq!(&resp[20..37], b"Planar YUV 4:2:0\0");
    }

    #[test]
    fn error_responses_are_left_alone() {
        let mut resp = yu12_3planes();
        resp[0] = 22;
        let before = resp.clone();
        fix_format_response(&mut resp);
        assert_eq!(resp, before);
    }
}
