// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Linear host views of guest memory given as SG lists (USERPTR buffers, ext-control payloads).
//!
//! A mapping is a copy: the SG entries are read into one host buffer when it is created and, if
//! the device asked for a mutable pointer (or `data_mut`), written back when it is dropped. The
//! capture-mplane profiles (MMAP only) never use it; `TestDevice` (src/testdev.rs) uses it for
//! USERPTR buffers, through `DeviceContext::guest_mapper`.

use log::error;
use virtio_media::protocol::SgEntry;
use virtio_media::{GuestMemoryRange, VirtioMediaGuestMemoryMapper};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

pub struct GuestMapper {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl GuestMapper {
    pub fn new(mem: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        Self { mem }
    }
}

pub struct ShadowMapping {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    sgs: Vec<SgEntry>,
    data: Vec<u8>,
    dirty: bool,
}

impl ShadowMapping {
    /// The copy of the guest pages, in SG order.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The copy of the guest pages, to be written back when the mapping is dropped.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.dirty = true;
        &mut self.data
    }
}

impl GuestMemoryRange for ShadowMapping {
    fn as_ptr(&self) -> *const u8 {
        self.data.as_ptr()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.dirty = true;
        self.data.as_mut_ptr()
    }
}

impl Drop for ShadowMapping {
    fn drop(&mut self) {
        if !self.dirty {
            return;
        }
        let mem = self.mem.memory();
        let mut pos = 0usize;
        for sg in &self.sgs {
            let end = pos + sg.len as usize;
            if let Err(e) = mem.write_slice(&self.data[pos..end], GuestAddress(sg.start)) {
                error!("guest memory write-back at {:#x}: {e}", sg.start);
            }
            pos = end;
        }
    }
}

impl VirtioMediaGuestMemoryMapper for GuestMapper {
    type GuestMemoryMapping = ShadowMapping;

    fn new_mapping(&self, sgs: Vec<SgEntry>) -> anyhow::Result<ShadowMapping> {
        let total: usize = sgs.iter().map(|sg| sg.len as usize).sum();
        let mut data = vec![0u8; total];
        let mem = self.mem.memory();
        let mut pos = 0usize;
        for sg in &sgs {
            let end = pos + sg.len as usize;
            mem.read_slice(&mut data[pos..end], GuestAddress(sg.start))?;
            pos = end;
        }
        Ok(ShadowMapping {
            mem: self.mem.clone(),
            sgs,
            data,
            dirty: false,
        })
    }
}
