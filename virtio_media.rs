// SPDX-License-Identifier: GPL-2.0

//! virtio-media guest driver.
//!
//! Binds virtio devices of ID 48 (`virtio:d00000030v*`), reads their configuration space and
//! registers a V4L2 video node whose ioctls are forwarded to the device as commandq descriptor
//! chains (see `Documentation/design.md`). Spec: VIRTIO 1.4, "Media Device".
//!
//! Layout: `protocol` holds the wire format (pure, host-tested), `session` one open file's
//! device session and the command path, `ffi` every call into C. This file holds the
//! per-device state: the commandq, the eventq and its bottom half, probe and remove.

// `pin_init!` of `VirtioMedia` (many fields, nested lock initialisers) needs more than the
// default 128 levels of macro expansion.
#![recursion_limit = "256"]

use core::sync::atomic::{AtomicBool, Ordering};

use kernel::{
    c_str,
    prelude::*,
    rbtree::RBTree,
    sync::{Arc, CondVar, Mutex, SpinLock},
};

mod ffi;
mod mmap;
pub mod protocol;
mod session;

use ffi::{
    dev_err, dev_info, dev_warn_rl, new_irq_spinlock, BhWork, Chain, DevRef, Direction, DmaBuf,
    IrqSpinLock, UserPages, VideoNode, VirtioDevice, VirtioDriver,
};
use protocol::{config, Event};
use session::Session;

module! {
    type: VirtioMediaModule,
    name: "virtio_media",
    author: "virtio-media-rs developers",
    description: "virtio-media guest driver (virtio device ID 48 as a V4L2 video node)",
    license: "GPL",
}

/// The V4L2 `driver` name (`v4l2_capability.driver`) and the virtio driver's name.
pub(crate) const DRIVER_NAME: &CStr = c_str!("virtio_media");

/// Number of buffers kept posted on the eventq (as many as the C driver).
const NUM_EVENT_BUFS: usize = 16;

/// Most events the bottom half handles per run before it yields the CPU.
const EVENT_BUDGET: usize = 64;

struct VirtioMediaModule {
    _driver: VirtioDriver,
}

impl kernel::Module for VirtioMediaModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let driver = VirtioDriver::register(DRIVER_NAME, module)?;
        Ok(Self { _driver: driver })
    }
}

/// One eventq buffer: `EVENT_MAX_SIZE` device-writable bytes of its own allocation.
pub(crate) struct EventBuf {
    buf: [DmaBuf; 1],
}

// SAFETY: `buf` is a `DmaBuf` owned by the `EventBuf`; the driver reads it only after the
// virtqueue returned the `KBox<EventBuf>` token (in `VirtioMedia::drain_events`).
unsafe impl Chain for EventBuf {
    fn readable(&self) -> &[DmaBuf] {
        &[]
    }
    fn writable(&self) -> &[DmaBuf] {
        &self.buf
    }
}

/// The eventq and the buffers a failed repost left out of it.
pub(crate) struct EventQueue {
    /// `None` once removed.
    vq: Option<ffi::EventVq>,
    /// Buffers the device gave back that could not be posted again (`virtqueue_add_inbuf`
    /// failed): kept, not freed, and posted again by a later bottom-half run. There are
    /// only [`NUM_EVENT_BUFS`] buffers, so a slot is always free for one.
    unposted: [Option<KBox<EventBuf>>; NUM_EVENT_BUFS],
}

impl EventQueue {
    /// How many buffers are held back.
    fn unposted(&self) -> usize {
        self.unposted.iter().flatten().count()
    }
}

/// The commandq and whether the device is still there.
pub(crate) struct CommandQueue {
    /// `None` once the device was removed: every later command fails with `ENODEV`.
    pub(crate) vq: Option<ffi::CommandVq>,
}

/// Per-device state, shared (refcounted) by the virtio binding, the video node and every
/// open session, so that it outlives whichever goes last.
#[pin_data]
pub(crate) struct VirtioMedia {
    #[pin]
    pub(crate) node: VideoNode,
    /// The commandq, with `IRQ`s off while held (its callback runs in hard-IRQ context).
    #[pin]
    pub(crate) commandq: IrqSpinLock<CommandQueue>,
    /// Signalled when commandq descriptors are freed, for senders that found the ring full.
    #[pin]
    pub(crate) commandq_space: CondVar,
    /// The eventq.
    #[pin]
    eventq: IrqSpinLock<EventQueue>,
    /// Some eventq buffer is held back after a failed repost: every command completion then
    /// schedules the bottom half, which tries again (with no buffer posted, no event would
    /// ever run it).
    events_unposted: AtomicBool,
    /// The eventq bottom half.
    #[pin]
    pub(crate) event_work: BhWork,
    /// Open sessions by device session id, for routing events.
    #[pin]
    pub(crate) sessions: IrqSpinLock<RBTree<u32, Arc<Session>>>,
    /// Keeps the `struct device` alive for messages after `remove` (open files, mappings).
    dev: ffi::DevHold,
    device_caps: u32,
    dir: Direction,
    /// Shared memory region 0 (guest-physical base, length), where MMAP buffers are mapped.
    shm: Option<(u64, u64)>,
    /// Address spaces that have MMAP mappings of SHM region 0, zapped by `remove`.
    #[pin]
    spaces: IrqSpinLock<Spaces>,
    card: [u8; config::CARD_LEN],
    bus_info: [u8; 32],
    /// Pinned user memory the device may still access although its owner is gone (a
    /// command that timed out, a CLOSE never answered): unpinned by `remove` after the reset.
    #[pin]
    orphans: Mutex<Orphans>,
    /// An MMAP or MUNMAP the device let time out and has not answered since: while it is
    /// unanswered the device counts as stalled and no MMAP/MUNMAP waits for it (those waits
    /// hold the caller's `mmap_lock`). See [`VirtioMedia::mmap_stalled`].
    #[pin]
    mmap_stall: Mutex<Option<Arc<session::Request>>>,
    /// Free command requests for reuse (no allocation per command). A leaf lock.
    #[pin]
    pub(crate) pool: SpinLock<session::RequestPool>,
}

/// See [`VirtioMedia::orphan_pins`].
struct Orphans {
    /// `remove` has reset the device: nothing needs keeping any more.
    gone: bool,
    pins: KVec<UserPages>,
}

impl VirtioMedia {
    /// Keeps `pins` pinned until the device is reset (`remove`): the device may still access
    /// them (their command timed out or was interrupted, or their session's CLOSE was never
    /// answered). After `remove` they are unpinned at once. Process context only.
    pub(crate) fn orphan_pins(&self, pins: KVec<UserPages>) {
        if pins.is_empty() {
            return;
        }
        let mut o = self.orphans.lock();
        if o.gone {
            drop(o);
            drop(pins);
            return;
        }
        for p in pins {
            // `push` drops its argument when it cannot grow the vector, which would unpin
            // under a live device: reserve first, and on failure never unpin at all.
            if o.pins.reserve(1, GFP_KERNEL).is_err() {
                core::mem::forget(p);
                dev_warn_rl!(self.dev(), "out of memory: user pages stay pinned for good");
                continue;
            }
            // Cannot fail: room for one more was reserved above.
            let _ = o.pins.push(p, GFP_KERNEL);
        }
    }

    /// Whether an earlier MMAP/MUNMAP timed out and is still unanswered: then MMAP and
    /// MUNMAP do not wait for the device (they run with the caller's `mmap_lock` held: a
    /// process with N mappings of a stalled device would otherwise take N command timeouts
    /// to exit). Cleared as soon as the device answers that command. Process context.
    pub(crate) fn mmap_stalled(&self) -> bool {
        let mut stall = self.mmap_stall.lock();
        if stall.as_ref().is_some_and(|r| r.is_done()) {
            *stall = None;
        }
        stall.is_some()
    }

    /// Records that the device let the MMAP/MUNMAP `req` time out (see [`Self::mmap_stalled`]).
    pub(crate) fn note_mmap_stall(&self, req: Option<Arc<session::Request>>) {
        let Some(req) = req else { return };
        let mut stall = self.mmap_stall.lock();
        if stall.is_none() {
            *stall = Some(req);
            drop(stall);
            dev_warn_rl!(
                self.dev(),
                "MMAP/MUNMAP timed out: no longer waited for until the device answers"
            );
        }
    }

    /// The V4L2 objects.
    pub(crate) fn node(&self) -> &VideoNode {
        &self.node
    }

    /// The device, for messages.
    pub(crate) fn dev(&self) -> DevRef {
        self.dev.dev()
    }

    /// Direction of the video node.
    pub(crate) fn direction(&self) -> Direction {
        self.dir
    }

    /// Shared memory region 0, if the device has one.
    pub(crate) fn shm(&self) -> Option<(u64, u64)> {
        self.shm
    }

    /// Whether the node is a memory-to-memory device (`V4L2_CAP_VIDEO_M2M(_MPLANE)`).
    pub(crate) fn is_m2m(&self) -> bool {
        self.device_caps & (ffi::raw::V4L2_CAP_VIDEO_M2M | ffi::raw::V4L2_CAP_VIDEO_M2M_MPLANE) != 0
    }

    /// `device_caps` from the configuration space (validated at probe).
    pub(crate) fn device_caps(&self) -> u32 {
        self.device_caps
    }

    /// `card` from the configuration space, without its NUL.
    pub(crate) fn card(&self) -> &[u8] {
        let n = protocol::card_len(&self.card).unwrap_or(0);
        &self.card[..n]
    }

    /// `bus_info` reported by QUERYCAP: `platform:` and the virtio device's name, stable for a
    /// given machine layout.
    pub(crate) fn bus_info(&self) -> &[u8] {
        let n = self
            .bus_info
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bus_info.len());
        &self.bus_info[..n]
    }

    /// Commandq callback body: completes every request the device has answered.
    pub(crate) fn commandq_done(&self) {
        let mut q = self.commandq.lock();
        let mut freed = false;
        if let Some(vq) = q.vq.as_mut() {
            loop {
                vq.disable_cb();
                while let Some((req, used)) = vq.get_used() {
                    req.complete(Ok(used));
                    freed = true;
                }
                if vq.enable_cb() {
                    break;
                }
            }
        }
        drop(q);
        if freed {
            self.commandq_space.notify_all();
        }
        if self.events_unposted.load(Ordering::Relaxed) {
            self.event_work.queue();
        }
    }

    /// Eventq bottom half: posts again the buffers an earlier run could not, then validates
    /// and routes each event and reposts its buffer. A buffer whose repost fails is kept in
    /// [`EventQueue::unposted`] for the next run (a rate-limited warning counts them).
    pub(crate) fn drain_events(&self) {
        let mut q = self.eventq.lock();
        let EventQueue { vq, unposted } = &mut *q;
        let Some(vq) = vq.as_mut() else { return };
        let mut reposted = false;
        let mut failed = None;
        for slot in unposted.iter_mut() {
            if let Some(ev) = slot.take() {
                match vq.add(ev) {
                    Ok(()) => reposted = true,
                    Err((e, ev)) => {
                        *slot = Some(ev);
                        failed = Some(e);
                    }
                }
            }
        }
        let mut budget = EVENT_BUDGET;
        loop {
            vq.disable_cb();
            while let Some((mut ev, used)) = vq.get_used() {
                budget -= 1;
                self.handle_event(ev.buf[0].bytes_mut(), used as usize);
                ev.buf[0].bytes_mut().fill(0);
                match vq.add(ev) {
                    Ok(()) => reposted = true,
                    Err((e, ev)) => {
                        failed = Some(e);
                        // Always found: there are only NUM_EVENT_BUFS buffers.
                        if let Some(slot) = unposted.iter_mut().find(|s| s.is_none()) {
                            *slot = Some(ev);
                        }
                    }
                }
                if budget == 0 {
                    // A flooding device must not keep this CPU in softirq: come back later
                    // (callbacks stay disabled meanwhile).
                    vq.kick();
                    self.event_work.queue();
                    self.note_unposted(&q, failed);
                    return;
                }
            }
            if vq.enable_cb() {
                break;
            }
        }
        if reposted {
            vq.kick();
        }
        self.note_unposted(&q, failed);
    }

    /// Records (for [`Self::commandq_done`]) whether eventq buffers are held back, and warns
    /// with their count if a repost failed with `failed`.
    fn note_unposted(&self, q: &EventQueue, failed: Option<Error>) {
        let held = q.unposted();
        self.events_unposted.store(held > 0, Ordering::Relaxed);
        if let Some(e) = failed {
            dev_warn_rl!(
                self.dev(),
                "cannot repost eventq buffers ({:?}): {} of {} held back, retried later",
                e,
                held,
                NUM_EVENT_BUFS
            );
        }
    }

    /// Dispatches one event the device wrote (`used` bytes of `buf`).
    fn handle_event(&self, buf: &[u8], used: usize) {
        let ev = match protocol::parse_event(buf, used) {
            Ok(ev) => ev,
            Err(e) => {
                dev_warn_rl!(self.dev(), "dropping malformed event: {:?}", e);
                return;
            }
        };
        let id = match ev {
            Event::Error { session_id, .. }
            | Event::Dqbuf { session_id, .. }
            | Event::V4l2 { session_id, .. } => session_id,
        };
        let session = {
            let sessions = self.sessions.lock();
            sessions.get(&id).cloned()
        };
        let Some(session) = session else {
            dev_warn_rl!(self.dev(), "event for unknown session {}: {:?}", id, ev);
            return;
        };
        session.handle_event(ev, buf);
    }

    /// Posts every eventq buffer (at probe). Buffers are allocated before taking the lock.
    fn post_event_buffers(&self) -> Result {
        let mut bufs = KVec::with_capacity(NUM_EVENT_BUFS, GFP_KERNEL)?;
        for _ in 0..NUM_EVENT_BUFS {
            let ev = KBox::new(
                EventBuf {
                    buf: [DmaBuf::new(protocol::EVENT_MAX_SIZE)?],
                },
                GFP_KERNEL,
            )?;
            bufs.push(ev, GFP_KERNEL)?;
        }
        let mut q = self.eventq.lock();
        let Some(vq) = q.vq.as_mut() else {
            return Err(ENODEV);
        };
        for ev in bufs {
            vq.add(ev).map_err(|(e, _)| e)?;
        }
        vq.kick();
        Ok(())
    }

    /// Tears the queues down after a device reset: every command still in flight completes
    /// with `ENODEV` (its buffers are freed only now, when the device can no longer use them),
    /// and every eventq buffer is freed.
    fn shutdown_queues(&self) {
        self.event_work.cancel_sync();
        let mut q = self.commandq.lock();
        if let Some(mut vq) = q.vq.take() {
            while let Some(req) = vq.detach_unused() {
                req.complete(Err(ENODEV));
            }
        }
        drop(q);
        self.commandq_space.notify_all();
        let mut q = self.eventq.lock();
        if let Some(mut vq) = q.vq.take() {
            while vq.detach_unused().is_some() {}
        }
        for slot in q.unposted.iter_mut() {
            drop(slot.take());
        }
        drop(q);
        self.events_unposted.store(false, Ordering::Relaxed);
    }
}

/// The address spaces with MMAP mappings of the device's SHM region (normally one: that of
/// the `/dev/videoN` inode; more if the node was also created elsewhere with `mknod`).
pub(crate) struct Spaces {
    list: [Option<ffi::SpaceRef>; 4],
    /// Set by `remove`: no new mapping may be recorded.
    removed: bool,
}

impl VirtioMedia {
    /// Records that `space` has (or gets) MMAP mappings, for `remove` to zap.
    ///
    /// Errors: `ENODEV` after `remove`, `ENOSPC` with more than 4 distinct address spaces.
    pub(crate) fn note_space(&self, space: ffi::SpaceRef) -> Result {
        let mut sp = self.spaces.lock();
        if sp.removed {
            drop(sp);
            return Err(ENODEV);
        }
        if sp.list.iter().flatten().any(|s| s.same(&space)) {
            drop(sp);
            drop(space);
            return Ok(());
        }
        match sp.list.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(space);
                Ok(())
            }
            None => {
                drop(sp);
                drop(space);
                dev_warn_rl!(self.dev(), "mmap: too many device nodes for this device");
                Err(ENOSPC)
            }
        }
    }

    /// Zaps every user mapping of SHM region 0 and stops recording new ones (at removal).
    fn zap_mappings(&self) {
        let mut taken: [Option<ffi::SpaceRef>; 4] = [None, None, None, None];
        {
            let mut sp = self.spaces.lock();
            sp.removed = true;
            for (t, s) in taken.iter_mut().zip(sp.list.iter_mut()) {
                *t = s.take();
            }
        }
        for s in taken.iter().flatten() {
            s.zap();
        }
    }
}

/// Validated identity of the device from its configuration space.
struct DeviceConfig {
    device_caps: u32,
    vfl_type: u32,
    dir: Direction,
    card: [u8; config::CARD_LEN],
}

/// `V4L2_CAP_*` bits that make a node receive (capture-like).
const CAPS_RX: u32 = ffi::raw::V4L2_CAP_VIDEO_CAPTURE
    | ffi::raw::V4L2_CAP_VIDEO_CAPTURE_MPLANE
    | ffi::raw::V4L2_CAP_VBI_CAPTURE
    | ffi::raw::V4L2_CAP_SLICED_VBI_CAPTURE
    | ffi::raw::V4L2_CAP_SDR_CAPTURE
    | ffi::raw::V4L2_CAP_META_CAPTURE
    | ffi::raw::V4L2_CAP_VIDEO_OVERLAY
    | ffi::raw::V4L2_CAP_TUNER
    | ffi::raw::V4L2_CAP_TOUCH;
/// `V4L2_CAP_*` bits that make a node transmit (output-like).
const CAPS_TX: u32 = ffi::raw::V4L2_CAP_VIDEO_OUTPUT
    | ffi::raw::V4L2_CAP_VIDEO_OUTPUT_MPLANE
    | ffi::raw::V4L2_CAP_VBI_OUTPUT
    | ffi::raw::V4L2_CAP_SLICED_VBI_OUTPUT
    | ffi::raw::V4L2_CAP_SDR_OUTPUT
    | ffi::raw::V4L2_CAP_META_OUTPUT
    | ffi::raw::V4L2_CAP_VIDEO_OUTPUT_OVERLAY
    | ffi::raw::V4L2_CAP_MODULATOR;
/// `V4L2_CAP_*` bits of memory-to-memory devices.
const CAPS_M2M: u32 = ffi::raw::V4L2_CAP_VIDEO_M2M | ffi::raw::V4L2_CAP_VIDEO_M2M_MPLANE;

impl DeviceConfig {
    /// Reads and validates the 40-byte configuration space.
    ///
    /// Errors (`EINVAL`, with a message): `device_type` that is not a video-device node type
    /// this driver can register, `device_caps` with no capture/output/M2M direction, or a
    /// `card` without a NUL terminator.
    fn read(vdev: &VirtioDevice) -> Result<Self> {
        let dev = vdev.dev();
        let mut w = [0u8; 4];
        vdev.read_config(config::DEVICE_CAPS, &mut w);
        let raw_caps = u32::from_le_bytes(w);
        vdev.read_config(config::DEVICE_TYPE, &mut w);
        let vfl_type = u32::from_le_bytes(w);
        let mut card = [0u8; config::CARD_LEN];
        vdev.read_config(config::CARD, &mut card);

        // vfl_devnode_type: VIDEO 0, VBI 1, RADIO 2, SUBDEV 3, SDR 4, TOUCH 5.
        if vfl_type == ffi::raw::vfl_devnode_type_VFL_TYPE_SUBDEV
            || vfl_type >= ffi::raw::vfl_devnode_type_VFL_TYPE_MAX
        {
            dev_err!(dev, "unsupported device_type {} in config space", vfl_type);
            return Err(EINVAL);
        }
        if protocol::card_len(&card).is_none() {
            dev_err!(dev, "config space card name is not NUL-terminated");
            return Err(EINVAL);
        }
        // V4L2_CAP_DEVICE_CAPS only has a meaning in `capabilities`.
        let device_caps = raw_caps & !ffi::raw::V4L2_CAP_DEVICE_CAPS;
        let dir = match (device_caps & CAPS_RX != 0, device_caps & CAPS_TX != 0) {
            _ if device_caps & CAPS_M2M != 0 => Direction::M2m,
            (true, true) => Direction::M2m,
            (true, false) => Direction::Rx,
            (false, true) => Direction::Tx,
            (false, false) => {
                dev_err!(
                    dev,
                    "device_caps {:#010x} name no capture, output or M2M capability",
                    raw_caps
                );
                return Err(EINVAL);
            }
        };
        Ok(Self {
            device_caps,
            vfl_type,
            dir,
            card,
        })
    }
}

/// Formats `platform:<dev_name>` into a NUL-padded array.
fn bus_info_for(vdev: &VirtioDevice) -> [u8; 32] {
    let mut out = [0u8; 32];
    let name = vdev.name();
    let src = Iterator::chain(b"platform:".iter(), name.iter());
    // Leave the last byte as the NUL terminator.
    for (d, s) in out[..31].iter_mut().zip(src) {
        *d = *s;
    }
    out
}

/// Whether an M2M device is a codec, for its media controller entity: a decoder lists a
/// compressed format (`V4L2_FMT_FLAG_COMPRESSED` in its ENUM_FMT answer) on OUTPUT, an
/// encoder on CAPTURE. Asked once at probe through a session of its own (at most 32 formats
/// per queue); `None` when the device is neither or does not answer.
fn codec_function(media: &Arc<VirtioMedia>, mplane: bool) -> Option<ffi::CodecFunction> {
    // V4L2_BUF_TYPE_VIDEO_OUTPUT(_MPLANE), V4L2_BUF_TYPE_VIDEO_CAPTURE(_MPLANE).
    let (output, capture) = if mplane { (10, 9) } else { (2, 1) };
    // V4L2_FMT_FLAG_COMPRESSED; `v4l2_fmtdesc` is 64 bytes: index @0, type @4, flags @8.
    const COMPRESSED: u32 = 1;
    let session = Session::open(media.clone()).ok()?;
    let compressed = |buf_type: u32| {
        for index in 0..32u32 {
            let mut d = [0u8; 64];
            protocol::put_u32(&mut d, 0, index);
            protocol::put_u32(&mut d, 4, buf_type);
            if session
                .ioctl(protocol::nr::ENUM_FMT, &mut [&mut d])
                .is_err()
            {
                return false;
            }
            if protocol::get_u32(&d, 8).unwrap_or(0) & COMPRESSED != 0 {
                return true;
            }
        }
        false
    };
    let function = if compressed(output) {
        Some(ffi::CodecFunction::Decoder)
    } else if compressed(capture) {
        Some(ffi::CodecFunction::Encoder)
    } else {
        None
    };
    session.close();
    function
}

pub(crate) fn probe(vdev: &VirtioDevice) -> Result {
    let dev = vdev.dev();
    let cfg = DeviceConfig::read(vdev)?;

    let media = Arc::pin_init(
        pin_init!(VirtioMedia {
            node <- VideoNode::new(),
            commandq <- new_irq_spinlock!(CommandQueue { vq: None }, "virtio_media:commandq"),
            commandq_space <- kernel::new_condvar!("virtio_media:commandq_space"),
            eventq <- new_irq_spinlock!(
                EventQueue { vq: None, unposted: Default::default() },
                "virtio_media:eventq"
            ),
            events_unposted: AtomicBool::new(false),
            event_work <- BhWork::new(),
            sessions <- new_irq_spinlock!(RBTree::new(), "virtio_media:sessions"),
            dev: ffi::DevHold::new(dev),
            device_caps: cfg.device_caps,
            dir: cfg.dir,
            shm: vdev.shm_region(protocol::SHM_REGION_MMAP),
            spaces <- new_irq_spinlock!(Spaces { list: [None, None, None, None], removed: false }, "virtio_media:spaces"),
            card: cfg.card,
            bus_info: bus_info_for(vdev),
            orphans <- kernel::new_mutex!(
                Orphans { gone: false, pins: KVec::new() },
                "virtio_media:orphans"
            ),
            mmap_stall <- kernel::new_mutex!(None, "virtio_media:mmap_stall"),
            pool <- kernel::new_spinlock!(session::RequestPool::new(), "virtio_media:pool"),
        }),
        GFP_KERNEL,
    )?;

    // `vdev->priv` holds the binding's reference until `remove`; the queue callbacks use it.
    vdev.set_media(media.clone());
    let (cmdq, evq) = match vdev.find_vqs() {
        Ok(q) => q,
        Err(e) => {
            dev_err!(dev, "cannot find commandq/eventq: {:?}", e);
            drop(vdev.take_media());
            return Err(e);
        }
    };
    media.commandq.lock().vq = Some(cmdq);
    media.eventq.lock().vq = Some(evq);
    vdev.ready();

    let fail = |e: Error| {
        vdev.reset();
        media.shutdown_queues();
        vdev.del_vqs();
        media.event_work.cancel_sync();
        drop(vdev.take_media());
        e
    };
    if let Err(e) = media.post_event_buffers() {
        dev_err!(dev, "cannot post eventq buffers: {:?}", e);
        return Err(fail(e));
    }
    let codec = if cfg.dir == ffi::Direction::M2m {
        codec_function(
            &media,
            cfg.device_caps & ffi::raw::V4L2_CAP_VIDEO_M2M_MPLANE != 0,
        )
    } else {
        None
    };
    let desc = ffi::NodeDesc {
        vfl_type: cfg.vfl_type,
        dir: cfg.dir,
        device_caps: cfg.device_caps,
        codec,
    };
    if let Err(e) = ffi::register_video(&media, vdev, &THIS_MODULE, desc) {
        dev_err!(dev, "cannot register the video device: {:?}", e);
        return Err(fail(e));
    }
    dev_info!(
        dev,
        "'{}' device_caps {:#010x} type {} dir {:?} shm {:?}",
        core::str::from_utf8(media.card()).unwrap_or("?"),
        cfg.device_caps,
        cfg.vfl_type,
        cfg.dir,
        media.shm()
    );
    Ok(())
}

pub(crate) fn remove(vdev: &VirtioDevice) {
    let Some(media) = vdev.take_media() else {
        return;
    };
    // User mappings of the SHM BAR go before the BAR does (later accesses: SIGBUS), and no
    // new one is made from here on.
    media.zap_mappings();
    // No new opens; ioctls and mmap() on open files now fail in the V4L2 core with ENODEV.
    ffi::unregister_video(&media);
    // The device stops touching our buffers, and no queue callback runs after this.
    vdev.reset();
    media.shutdown_queues();
    // Sessions still open get ENODEV from now on; wake anyone waiting on them.
    for s in media.sessions.lock().values() {
        s.device_gone();
    }
    vdev.del_vqs();
    // Transports whose reset does not wait for running callbacks (virtio-mmio) may have
    // queued the work after `shutdown_queues` cancelled it; `del_vqs` freed the IRQs, so no
    // callback runs any more.
    media.event_work.cancel_sync();
    // The device no longer accesses guest memory: unpin what timed-out commands left.
    let pins = {
        let mut o = media.orphans.lock();
        o.gone = true;
        core::mem::take(&mut o.pins)
    };
    drop(pins);
    drop(media);
}
