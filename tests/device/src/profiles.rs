// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Device profiles: a profile is a configuration space plus a device constructor.
//!
//! To add one (output, m2m loopback, fault injection, ...): write a `fn(&mut Listener) ->
//! anyhow::Result<()>` that calls `serve_connection(listener, device_config(..), |ctx| device)`
//! and list it in `PROFILES`. `ctx` (`DeviceContext`) carries the eventq, the guest memory mapper
//! and the shared-memory (MMAP) mapper for the device to use.

use vhost::vhost_user::Listener;
use virtio_media::devices::SimpleCaptureDevice;
use virtio_media::protocol::VirtioMediaDeviceConfig;
use virtio_media::v4l2r::bindings;

use crate::backend::{device_config, serve_connection};
use crate::quirks::FormatFixes;
use crate::testdev::{Kind, Spec, TestDevice};

/// `enum vfl_devnode_type` (include/media/v4l2-dev.h).
pub const VFL_TYPE_VIDEO: u32 = 0;

pub struct Profile {
    pub name: &'static str,
    pub summary: &'static str,
    /// Serves one front-end connection.
    pub serve: fn(&mut Listener) -> anyhow::Result<()>,
    /// The `TestDevice` configuration, for the profiles that are one (`--produce-rate`).
    pub spec: Option<Spec>,
}

pub const PROFILES: &[Profile] = &[
    Profile {
        name: "capture-mplane",
        summary: "virtio-media crate's SimpleCaptureDevice: 640x480 YU12, MPLANE capture, MMAP \
                  only, caps VIDEO_CAPTURE_MPLANE|STREAMING; formats say 1 plane",
        serve: capture_mplane,
        spec: None,
    },
    Profile {
        name: "capture-mplane-crate",
        summary: "the same device without the format fix: G/S/TRY_FMT say 3 planes for YU12 \
                  while its buffers have 1 (the crate's own behaviour)",
        serve: capture_mplane_crate,
        spec: None,
    },
    Profile {
        name: "capture-mplane-noshm",
        summary: "capture-mplane without the SHMEM protocol feature: no shared memory region, \
                  so MMAP buffers cannot be mapped",
        serve: capture_mplane_noshm,
        spec: None,
    },
    Profile {
        name: "capture",
        summary: "TestDevice: single-planar capture (VIDEO_CAPTURE|STREAMING), YUYV/RGB3/YU12 at \
                  640x480 and 320x240, one input, MMAP and USERPTR, pattern frames",
        serve: capture,
        spec: Some(CAPTURE),
    },
    Profile {
        name: "capture-hd",
        summary: "TestDevice: single-planar capture as `capture`, NV12/YU12 at 640x480, \
                  1920x1080 and 3840x2160 (bench/run)",
        serve: capture_hd,
        spec: Some(CAPTURE_HD),
    },
    Profile {
        name: "capture-mp",
        summary: "TestDevice: multi-planar capture (VIDEO_CAPTURE_MPLANE|STREAMING), YM12 \
                  and YM16 (3 planes), YUYV (1 plane), MMAP and USERPTR",
        serve: capture_mp,
        spec: Some(CAPTURE_MP),
    },
    Profile {
        name: "capture-nv",
        summary: "TestDevice: multi-planar capture of NM12 (NV12M, 2 planes) only; \
                  v4l2-compliance 1.22.1 fails its ENUM_FMT name check (kernel 6.12 renamed it)",
        serve: capture_nv,
        spec: Some(CAPTURE_NV),
    },
    Profile {
        name: "output",
        summary: "TestDevice: single-planar output (VIDEO_OUTPUT|STREAMING), YUYV/RGB3/YU12, one \
                  output; logs `output frame SEQ bytesused N crc32 HEX` per frame",
        serve: output,
        spec: Some(OUTPUT),
    },
    Profile {
        name: "m2m",
        summary: "TestDevice: loopback M2M (VIDEO_M2M_MPLANE|STREAMING): each OUTPUT payload is \
                  copied into the next CAPTURE buffer; YM12/YUYV/YM16; per-open contexts",
        serve: m2m,
        spec: Some(M2M),
    },
    Profile {
        name: "decoder-yu12",
        summary: "the decoder profile with YU12 as its only CAPTURE format: v4l2-compliance \
                  1.22.1 fails any device offering NV12 (kernel 6.12 renamed its description)",
        serve: decoder_yu12,
        spec: Some(DECODER_YU12),
    },
    Profile {
        name: "decoder",
        summary: "TestDevice: stateful H.264 decoder (VIDEO_M2M_MPLANE|STREAMING) on libavcodec: \
                  H264 byte stream on OUTPUT, NV12/YU12 on CAPTURE, SOURCE_CHANGE/EOS events, \
                  DECODER_CMD STOP/START, dynamic resolution change; per-open contexts",
        serve: decoder,
        spec: Some(DECODER),
    },
];

pub fn find(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

/// The crate's SimpleCaptureDevice with a config space that says what it does: it accepts only
/// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE` queues, so `VIDEO_CAPTURE_MPLANE | STREAMING`
/// (0x04001000), not vhost-device-media's `VIDEO_CAPTURE | STREAMING`.
///
/// Its answers pass through `FormatFixes` (src/quirks.rs): the crate describes YU12
/// as 3 planes while its buffers have one plane of 460800 bytes.
fn capture_mplane(listener: &mut Listener) -> anyhow::Result<()> {
    serve_connection(
        listener,
        capture_mplane_config("vmrs capture-mplane"),
        |ctx| FormatFixes::new(SimpleCaptureDevice::new(ctx.eventq, ctx.host_mapper)),
    )
}

/// capture-mplane, but the front end gets no shared memory region (see `backend::NO_SHM`).
fn capture_mplane_noshm(listener: &mut Listener) -> anyhow::Result<()> {
    crate::backend::NO_SHM.store(true, std::sync::atomic::Ordering::Relaxed);
    capture_mplane(listener)
}

/// capture-mplane without the format fix, to see what the crate's device does on its own.
fn capture_mplane_crate(listener: &mut Listener) -> anyhow::Result<()> {
    serve_connection(
        listener,
        capture_mplane_config("vmrs capture-mplane-crate"),
        |ctx| SimpleCaptureDevice::new(ctx.eventq, ctx.host_mapper),
    )
}

fn capture_mplane_config(card: &str) -> VirtioMediaDeviceConfig {
    device_config(
        bindings::V4L2_CAP_VIDEO_CAPTURE_MPLANE | bindings::V4L2_CAP_STREAMING,
        VFL_TYPE_VIDEO,
        card,
    )
}

/// Formats and sizes of the single-planar TestDevice profiles (single-buffer formats only).
const SP_FORMATS: &[[u8; 4]] = &[*b"YUYV", *b"RGB3", *b"YU12"];
/// Formats of the multi-planar profiles: 3 planes (YUV420M, YUV422M) and a packed one-plane
/// format. No NV12/NV12M: kernel 6.12 names them "Y/UV 4:2:0 ..." while v4l2-compliance 1.22.1
/// expects "Y/CbCr 4:2:0 ...", so ENUM_FMT fails on any device that offers them.
const MP_FORMATS: &[[u8; 4]] = &[*b"YM12", *b"YUYV", *b"YM16"];
const SIZES: &[(u32, u32)] = &[(640, 480), (320, 240)];

pub const CAPTURE: Spec = Spec {
    kind: Kind::Capture,
    mplane: false,
    formats: SP_FORMATS,
    sizes: SIZES,
};
/// `capture` with the benchmark's formats and sizes (bench/run): NV12 and YU12 (one plane
/// each, w*h*3/2 bytes, bytesperline w) at 640x480, 1920x1080 and 3840x2160.
pub const CAPTURE_HD: Spec = Spec {
    formats: &[*b"NV12", *b"YU12"],
    sizes: &[(640, 480), (1920, 1080), (3840, 2160)],
    ..CAPTURE
};
pub const CAPTURE_MP: Spec = Spec {
    kind: Kind::Capture,
    mplane: true,
    formats: MP_FORMATS,
    sizes: SIZES,
};
pub const CAPTURE_NV: Spec = Spec {
    kind: Kind::Capture,
    mplane: true,
    formats: &[*b"NM12"],
    sizes: SIZES,
};
pub const OUTPUT: Spec = Spec {
    kind: Kind::Output,
    mplane: false,
    formats: SP_FORMATS,
    sizes: SIZES,
};
/// A decoder's `formats` are its CAPTURE formats (OUTPUT takes H264, src/decoder.rs);
/// `sizes` gives the initial size.
pub const DECODER: Spec = Spec {
    kind: Kind::Decoder,
    mplane: true,
    formats: &[*b"NV12", *b"YU12"],
    sizes: &[(320, 240)],
};
pub const DECODER_YU12: Spec = Spec {
    formats: &[*b"YU12"],
    ..DECODER
};
pub const M2M: Spec = Spec {
    kind: Kind::M2m,
    mplane: true,
    formats: MP_FORMATS,
    sizes: SIZES,
};

/// Serves a `TestDevice` with `spec`; its config space is derived from the spec, so it says
/// exactly which buffer types the device accepts.
fn serve_testdev(listener: &mut Listener, spec: Spec, card: &str) -> anyhow::Result<()> {
    serve_connection(
        listener,
        device_config(spec.device_caps(), VFL_TYPE_VIDEO, card),
        move |ctx| TestDevice::new(spec, ctx.eventq, ctx.host_mapper, ctx.guest_mapper),
    )
}

fn capture(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, CAPTURE, "vmrs capture")
}

fn capture_hd(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, CAPTURE_HD, "vmrs capture-hd")
}

fn capture_mp(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, CAPTURE_MP, "vmrs capture-mp")
}

fn capture_nv(listener: &mut Listener) -> anyhow::Result<()> {
    serve_connection(
        listener,
        device_config(CAPTURE_NV.device_caps(), VFL_TYPE_VIDEO, "vmrs capture-nv"),
        move |ctx| {
            TestDevice::new(CAPTURE_NV, ctx.eventq, ctx.host_mapper, ctx.guest_mapper)
                .with_label("virtio-media")
        },
    )
}

fn output(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, OUTPUT, "vmrs output")
}

fn m2m(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, M2M, "vmrs m2m")
}

fn decoder(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, DECODER, "vmrs h264 decoder")
}

fn decoder_yu12(listener: &mut Listener) -> anyhow::Result<()> {
    serve_testdev(listener, DECODER_YU12, "vmrs h264 decoder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_mplane_config_bytes() {
        let c = capture_mplane_config("vmrs capture-mplane");
        let b: &[u8] = c.as_ref();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[0..4], &0x0400_1000u32.to_le_bytes());
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(&b[8..27], b"vmrs capture-mplane");
        assert!(b[27..].iter().all(|&x| x == 0));
    }

    #[test]
    fn testdev_caps() {
        // V4L2_CAP_STREAMING 0x04000000 | VIDEO_CAPTURE 0x1 / VIDEO_CAPTURE_MPLANE 0x1000 /
        // VIDEO_OUTPUT 0x2 / VIDEO_M2M_MPLANE 0x4000 (videodev2.h).
        assert_eq!(CAPTURE.device_caps(), 0x0400_0001);
        assert_eq!(CAPTURE_HD.device_caps(), 0x0400_0001);
        assert_eq!(CAPTURE_MP.device_caps(), 0x0400_1000);
        assert_eq!(OUTPUT.device_caps(), 0x0400_0002);
        assert_eq!(M2M.device_caps(), 0x0400_4000);
    }
}
