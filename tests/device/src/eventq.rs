// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! The eventq (queue 1): the driver posts device-writable buffers, the device returns them filled
//! with `virtio_media_event_*` structs (DQBUF, V4L2 event, session error).
//!
//! Events the device produces while the driver has no buffer posted are kept, in order, and sent
//! as soon as the driver posts buffers again (the eventq kick), instead of being dropped: a lost
//! DQBUF event would lose a buffer for good.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use log::{debug, error, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_media::io::WriteToDescriptorChain;
use virtio_media::protocol::V4l2Event;
use virtio_media::VirtioMediaEventQueue;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::chain::scatter;

/// Events kept at most while the driver posts no buffer; older ones are dropped beyond that.
const MAX_PENDING: usize = 4096;

struct Inner {
    vring: Option<VringRwLock>,
    pending: VecDeque<Vec<u8>>,
}

/// Handle on the eventq; cheap to clone (the device owns one, the backend another).
#[derive(Clone)]
pub struct EventQueue {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    inner: Arc<Mutex<Inner>>,
}

impl EventQueue {
    pub fn new(mem: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        Self {
            mem,
            inner: Arc::new(Mutex::new(Inner {
                vring: None,
                pending: VecDeque::new(),
            })),
        }
    }

    /// Attaches the eventq's vring (once; the backend calls this on every queue event).
    pub fn bind(&self, vring: &VringRwLock) {
        let mut inner = self.inner.lock().unwrap();
        if inner.vring.is_none() {
            inner.vring = Some(vring.clone());
        }
    }

    /// Sends the pending events into the buffers the driver has posted.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap();
        self.flush_locked(&mut inner);
    }

    fn flush_locked(&self, inner: &mut Inner) {
        let Some(vring) = inner.vring.clone() else {
            return;
        };
        let mut sent = false;
        loop {
            while let Some(event) = inner.pending.front() {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(self.mem.memory());
                let Some(chain) = chain else {
                    break;
                };
                let used = match scatter(&chain, event) {
                    Ok(n) => n,
                    Err(e) => {
                        error!("eventq: cannot write event: {e}");
                        0
                    }
                };
                if let Err(e) = vring.add_used(chain.head_index(), used) {
                    error!("eventq: add_used: {e}");
                }
                inner.pending.pop_front();
                sent = true;
            }
            // With EVENT_IDX this sets avail_event, so the driver kicks when it posts the next
            // buffer; `true` means buffers arrived meanwhile.
            match vring.enable_notification() {
                Ok(true) if !inner.pending.is_empty() => continue,
                Ok(_) => break,
                Err(e) => {
                    error!("eventq: enable_notification: {e}");
                    break;
                }
            }
        }
        if sent && vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                error!("eventq: signal_used_queue: {e}");
            }
        }
        if !inner.pending.is_empty() {
            debug!(
                "eventq: {} event(s) wait for driver buffers",
                inner.pending.len()
            );
        }
    }
}

impl VirtioMediaEventQueue for EventQueue {
    fn send_event(&mut self, event: V4l2Event) {
        let mut bytes: Vec<u8> = Vec::new();
        let res = match event {
            V4l2Event::Error(e) => bytes.write_obj(e),
            V4l2Event::DequeueBuffer(e) => bytes.write_obj(e),
            V4l2Event::Event(e) => bytes.write_obj(e),
        };
        if let Err(e) = res {
            error!("eventq: cannot encode event: {e}");
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        for bytes in crate::fault::on_event(bytes) {
            if inner.pending.len() >= MAX_PENDING {
                warn!("eventq: {MAX_PENDING} events pending, dropping the oldest");
                inner.pending.pop_front();
            }
            inner.pending.push_back(bytes);
        }
        self.flush_locked(&mut inner);
    }
}
