// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! The vhost-user side: a `VhostUserBackend` that runs any `virtio_media::VirtioMediaDevice`.
//!
//! One worker thread (vhost-user-backend's epoll loop) handles both queues: commandq kicks run
//! the commands through the crate's `VirtioMediaDeviceRunner`, eventq kicks flush pending events,
//! and session fds registered by devices that need polling (`VirtioMediaDeviceSession::poll_fd`)
//! call the device's `process_events`. One `VmrsBackend` (and one device) per front-end
//! connection.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Context};
use log::{debug, error, info, warn};
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Backend, Listener};
use vhost_user_backend::{
    VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock, VringT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_media::poll::SessionPoller;
use virtio_media::protocol::{V4l2Ioctl, VirtioMediaDeviceConfig};
use virtio_media::{VirtioMediaDevice, VirtioMediaDeviceRunner};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::chain::{gather, scatter, writable_len, CmdReader, CmdWriter};
use crate::fault::{self, Verdict};
use crate::stats::Stats;

/// When set (by a profile, before serving), the device does not offer the vhost-user SHMEM
/// protocol feature, so the front end exposes no shared memory region: a driver must then
/// refuse MMAP cleanly.
pub static NO_SHM: AtomicBool = AtomicBool::new(false);
use crate::eventq::EventQueue;
use crate::guestmem::GuestMapper;
use crate::shm::{ReqChannel, ShmMapper, SHM_SIZE};

pub const NUM_QUEUES: usize = 2;
pub const COMMANDQ: u16 = 0;
pub const EVENTQ: u16 = 1;
/// Largest vring we accept. QEMU's generic vhost-user-device(-pci) uses `vq_size` = 64 unless told
/// otherwise (hw/virtio/vhost-user-device.c); the runner does not change it.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// epoll data of session fds: after the queues (0..NUM_QUEUES) and the exit event (NUM_QUEUES).
const SESSION_EVENT_BASE: u64 = NUM_QUEUES as u64 + 1;

/// What a profile's device constructor gets: the VMM side of the crate's traits.
pub struct DeviceContext {
    /// `VirtioMediaEventQueue`: events to the driver over the eventq.
    pub eventq: EventQueue,
    /// `VirtioMediaGuestMemoryMapper`: linear views of guest SG lists (USERPTR). Unused by
    /// capture-mplane (MMAP only); `TestDevice` profiles use it.
    pub guest_mapper: GuestMapper,
    /// `VirtioMediaHostMemoryMapper`: MMAP buffers into shared memory region 0.
    pub host_mapper: ShmMapper,
}

/// The 40-byte virtio-media configuration space.
pub fn device_config(device_caps: u32, device_type: u32, card: &str) -> VirtioMediaDeviceConfig {
    let mut c = [0u8; 32];
    let n = card.len().min(31); // keep a NUL
    c[..n].copy_from_slice(&card.as_bytes()[..n]);
    VirtioMediaDeviceConfig {
        device_caps,
        device_type,
        card: c,
    }
}

/// epoll registration of session fds, type-erased so the poller does not name the backend type.
trait Listeners: Send + Sync {
    fn add(&self, fd: RawFd, data: u64) -> io::Result<()>;
    fn del(&self, fd: RawFd, data: u64) -> io::Result<()>;
}

impl<T: VhostUserBackend> Listeners for VringEpollHandler<T>
where
    VringEpollHandler<T>: Send + Sync,
{
    fn add(&self, fd: RawFd, data: u64) -> io::Result<()> {
        self.register_listener(fd, EventSet::IN, data)
    }
    fn del(&self, fd: RawFd, data: u64) -> io::Result<()> {
        self.unregister_listener(fd, EventSet::IN, data)
    }
}

type EpollSlot = Arc<Mutex<Option<Arc<dyn Listeners>>>>;

/// `SessionPoller` for the crate's runner: session fds go into the worker's epoll set.
#[derive(Clone)]
pub struct SessionEpoll {
    epoll: EpollSlot,
    tokens: Arc<Mutex<HashMap<RawFd, u64>>>,
}

impl SessionPoller for SessionEpoll {
    fn add_session(&self, session: BorrowedFd, session_id: u32) -> Result<(), i32> {
        let data = SESSION_EVENT_BASE + u64::from(session_id);
        // vhost-user-backend hands the epoll data to handle_event() as a u16.
        if data > u64::from(u16::MAX) {
            return Err(libc::ENOSPC);
        }
        let epoll = self.epoll.lock().unwrap().clone().ok_or(libc::ENODEV)?;
        let fd = session.as_raw_fd();
        epoll
            .add(fd, data)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        self.tokens.lock().unwrap().insert(fd, data);
        Ok(())
    }

    fn remove_session(&self, session: BorrowedFd) {
        let fd = session.as_raw_fd();
        let Some(data) = self.tokens.lock().unwrap().remove(&fd) else {
            return;
        };
        if let Some(epoll) = self.epoll.lock().unwrap().clone() {
            let _ = epoll.del(fd, data);
        }
    }
}

type Runner<D> = VirtioMediaDeviceRunner<CmdReader, CmdWriter, D, SessionEpoll>;

pub struct VmrsBackend<D>
where
    D: VirtioMediaDevice<CmdReader, CmdWriter> + Send + 'static,
    D::Session: Send,
{
    config: VirtioMediaDeviceConfig,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    eventq: EventQueue,
    req: ReqChannel,
    epoll: EpollSlot,
    runner: Mutex<Runner<D>>,
    event_idx: AtomicBool,
    exit: (EventConsumer, EventNotifier),
    /// Commands a fault holds back (src/fault.rs): the chain, its response, whether it is
    /// answered when the next command arrives (else never).
    held: Mutex<Vec<(HeldChain, Vec<u8>, bool)>>,
    /// The device's own time per command, per session (`VMRS_DEVICE_STATS`, src/stats.rs).
    stats: Option<Mutex<Stats>>,
}

type HeldChain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;

impl<D> VmrsBackend<D>
where
    D: VirtioMediaDevice<CmdReader, CmdWriter> + Send + 'static,
    D::Session: Send,
{
    pub fn new<F>(
        config: VirtioMediaDeviceConfig,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        make_device: F,
    ) -> anyhow::Result<Self>
    where
        F: FnOnce(DeviceContext) -> D,
    {
        let eventq = EventQueue::new(mem.clone());
        let req = ReqChannel::default();
        let epoll: EpollSlot = Arc::new(Mutex::new(None));
        let device = make_device(DeviceContext {
            eventq: eventq.clone(),
            guest_mapper: GuestMapper::new(mem.clone()),
            host_mapper: ShmMapper::new(req.clone()),
        });
        let poller = SessionEpoll {
            epoll: epoll.clone(),
            tokens: Default::default(),
        };
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK).context("exit eventfd")?;
        Ok(Self {
            config,
            mem,
            eventq,
            req,
            epoll,
            runner: Mutex::new(VirtioMediaDeviceRunner::new(device, poller)),
            event_idx: AtomicBool::new(false),
            exit,
            held: Mutex::new(Vec::new()),
            stats: Stats::from_env().map(Mutex::new),
        })
    }

    fn process_commandq(&self, vring: &VringRwLock) {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut runner = self.runner.lock().unwrap();
        let mut used_any = false;
        // Only chains held by an earlier run are answered at the end of this one.
        let held_before = lock(&self.held).len();
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    error!("commandq: disable_notification: {e}");
                }
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(self.mem.memory());
                let Some(chain) = chain else { break };
                // VMRS_DEVICE_STATS: from reading the command off the chain to writing the
                // response into it.
                let started = self.stats.as_ref().map(|_| Instant::now());
                let used = match gather(&chain) {
                    Ok(input) => {
                        let what = describe(&input);
                        let mut reader = CmdReader::new(input);
                        let mut writer = CmdWriter::new();
                        // A bug in a device (or in the crates under it) must not end the
                        // worker thread: the command fails with EIO instead.
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            runner.handle_command(&mut reader, &mut writer)
                        }));
                        if run.is_err() {
                            error!("{what}: the device panicked; answering EIO");
                            writer.clear();
                            writer.extend_from_slice(&(libc::EIO as u32).to_le_bytes());
                            writer.extend_from_slice(&[0u8; 4]);
                        }
                        debug!("{what} -> {}", describe_resp(&writer));
                        let extra = match fault::on_response(reader.get_ref(), &mut writer) {
                            Verdict::Answer { extra } => extra,
                            Verdict::Hold { release } => {
                                lock(&self.held).push((chain, writer, release));
                                continue;
                            }
                        };
                        let used = scatter(&chain, &writer).unwrap_or_else(|e| {
                            error!("commandq: cannot write response: {e}");
                            0
                        });
                        if let (Some(t), Some(stats)) = (started, &self.stats) {
                            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            if let Some(line) = lock(stats).record(reader.get_ref(), &writer, ns) {
                                eprintln!("{line}");
                            }
                        }
                        if extra > 0 {
                            writable_len(&chain).saturating_add(extra)
                        } else {
                            used
                        }
                    }
                    Err(e) => {
                        error!("commandq: cannot read command: {e}");
                        0
                    }
                };
                if let Err(e) = vring.add_used(chain.head_index(), used) {
                    error!("commandq: add_used: {e}");
                }
                used_any = true;
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue, // more commands arrived meanwhile
                Ok(false) => break,
                Err(e) => {
                    error!("commandq: enable_notification: {e}");
                    break;
                }
            }
        }
        // Held commands (fault `late`) are answered after the commands that arrived with
        // them: a driver that reused a timed-out command's buffers for a later command would
        // find the late answer written over the later command's.
        used_any |= self.release_held(vring, held_before);
        if used_any && vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                error!("commandq: signal_used_queue: {e}");
            }
        }
    }

    /// Answers the first `n` held commands that wait for the next command (fault `late`);
    /// returns whether any was answered.
    fn release_held(&self, vring: &VringRwLock, n: usize) -> bool {
        let mut held = lock(&self.held);
        let mut any = false;
        let mut keep = Vec::new();
        for (i, (chain, resp, release)) in held.drain(..).enumerate() {
            if !release || i >= n {
                keep.push((chain, resp, release));
                continue;
            }
            info!("fault: answering held chain {} late", chain.head_index());
            let used = scatter(&chain, &resp).unwrap_or(0);
            if let Err(e) = vring.add_used(chain.head_index(), used) {
                error!("commandq: add_used: {e}");
            }
            any = true;
        }
        *held = keep;
        any
    }

    fn process_session(&self, session_id: u32) {
        let mut runner = self.runner.lock().unwrap();
        let runner = &mut *runner;
        let Some(session) = runner.sessions.get_mut(&session_id) else {
            warn!("event for unknown session {session_id}");
            return;
        };
        if let Err(errno) = runner.device.process_events(session) {
            // As the spec has it: report the error; the driver closes the session.
            error!("session {session_id}: process_events failed ({errno})");
            let mut eventq = self.eventq.clone();
            virtio_media::VirtioMediaEventQueue::send_error(&mut eventq, session_id, errno);
        }
    }
}

impl<D> VhostUserBackend for VmrsBackend<D>
where
    D: VirtioMediaDevice<CmdReader, CmdWriter> + Send + 'static,
    D::Session: Send,
{
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::REPLY_ACK;
        if NO_SHM.load(Ordering::Relaxed) {
            f
        } else {
            f | VhostUserProtocolFeatures::SHMEM
        }
    }

    fn acked_features(&self, features: u64) {
        debug!("virtio features acked: {features:#x}");
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // The daemon updates the GuestMemoryAtomic we gave it (and hold a clone of) in place.
        debug!("guest memory table updated");
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg: &[u8] = self.config.as_ref();
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(cfg.len());
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(cfg.len());
        out[..end - start].copy_from_slice(&cfg[start..end]);
        out
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        debug!("backend request channel set");
        self.req.set(backend);
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        Ok(VhostUserShMemConfig::new(1, &[SHM_SIZE]))
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // An Err here ends the worker thread for good: log and carry on instead.
        if evset != EventSet::IN {
            warn!("event {device_event}: unexpected epoll events {evset:?}");
            return Ok(());
        }
        self.eventq.bind(&vrings[EVENTQ as usize]);
        match device_event {
            COMMANDQ => self.process_commandq(&vrings[COMMANDQ as usize]),
            EVENTQ => self.eventq.flush(),
            n if u64::from(n) >= SESSION_EVENT_BASE => {
                self.process_session((u64::from(n) - SESSION_EVENT_BASE) as u32)
            }
            n => warn!("unexpected device event {n}"),
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One-line description of a command for the debug log.
fn describe(input: &[u8]) -> String {
    let word = |i: usize| {
        input
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    match (word(0), word(8), word(12)) {
        (Some(1), _, _) => "OPEN".into(),
        (Some(2), Some(s), _) => format!("CLOSE session {s}"),
        (Some(3), Some(s), Some(code)) => match V4l2Ioctl::n(code) {
            Some(ioctl) => format!("IOCTL session {s} {ioctl:?}"),
            None => format!("IOCTL session {s} code {code}"),
        },
        (Some(4), Some(s), _) => format!(
            "MMAP session {s} flags {:#x} offset {:#x}",
            word(12).unwrap_or(0),
            word(16).unwrap_or(0)
        ),
        (Some(5), _, _) => "MUNMAP".into(),
        (c, _, _) => format!("command {c:?} ({} bytes)", input.len()),
    }
}

fn describe_resp(out: &[u8]) -> String {
    match out.get(0..4) {
        None => "no response".into(),
        Some(b) => match u32::from_le_bytes(b.try_into().unwrap()) {
            0 => format!("ok ({} bytes)", out.len()),
            e => format!("errno {e}"),
        },
    }
}

/// Serves one front-end connection with a fresh device from `make_device`; returns when the front
/// end disconnects.
pub fn serve_connection<D, F>(
    listener: &mut Listener,
    config: VirtioMediaDeviceConfig,
    make_device: F,
) -> anyhow::Result<()>
where
    D: VirtioMediaDevice<CmdReader, CmdWriter> + Send + 'static,
    D::Session: Send,
    F: FnOnce(DeviceContext) -> D,
{
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(VmrsBackend::new(config, mem.clone(), make_device)?);
    let mut daemon = VhostUserDaemon::new("vmrs-device".to_owned(), backend.clone(), mem)
        .map_err(|e| anyhow!("cannot create the vhost-user daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    *backend.epoll.lock().unwrap() = Some(handlers[0].clone() as Arc<dyn Listeners>);

    daemon
        .start(listener)
        .map_err(|e| anyhow!("cannot accept a front end: {e}"))?;
    info!("front end connected");
    let res = daemon.wait();
    for h in &handlers {
        h.send_exit_event();
    }
    // Break the backend -> epoll handler -> backend cycle so the device is dropped.
    backend.epoll.lock().unwrap().take();
    match res {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(anyhow!("vhost-user connection failed: {e}")),
    }
}
