// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Shared memory region 0: MMAP buffers mapped into the guest through the vhost-user SHMEM
//! backend requests.
//!
//! The front end (our patched QEMU, Documentation/qemu.md) asks for the regions with
//! `GET_SHMEM_CONFIG` and reserves them behind a PCI BAR. When the driver sends
//! `VIRTIO_MEDIA_CMD_MMAP`, the device's buffer (a memfd) is mapped into region 0 with a
//! `SHMEM_MAP` request on the backend channel (the memfd travels as SCM_RIGHTS) at an offset we
//! allocate here; `VIRTIO_MEDIA_CMD_MUNMAP` sends `SHMEM_UNMAP`. The crate's `MmapMappingManager`
//! counts mappings per buffer and calls us on the first map and the last unmap only.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use log::{debug, error};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use virtio_media::VirtioMediaHostMemoryMapper;

/// Shared memory region id of the MMAP buffers.
pub const SHM_ID: u8 = 0;
/// Its size: 4 GiB, as crosvm and vhost-device-media use (m2m devices put CAPTURE offsets at 2 GiB).
pub const SHM_SIZE: u64 = 1 << 32;
const PAGE: u64 = 4096;

/// First-fit allocator of page-aligned ranges in `[0, size)`.
pub struct ShmAllocator {
    size: u64,
    /// start -> length (page multiple) of the allocated ranges.
    used: BTreeMap<u64, u64>,
}

impl ShmAllocator {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            used: BTreeMap::new(),
        }
    }

    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.checked_next_multiple_of(PAGE)?.max(PAGE);
        let mut start = 0u64;
        for (&s, &l) in &self.used {
            if s - start >= len {
                break;
            }
            start = s + l;
        }
        if start.checked_add(len)? > self.size {
            return None;
        }
        self.used.insert(start, len);
        Some(start)
    }

    pub fn free(&mut self, start: u64) -> bool {
        self.used.remove(&start).is_some()
    }
}

/// The backend request channel, set by the front end after the connection is up
/// (`VHOST_USER_SET_BACKEND_REQ_FD`).
#[derive(Clone, Default)]
pub struct ReqChannel(Arc<Mutex<Option<Backend>>>);

impl ReqChannel {
    pub fn set(&self, backend: Backend) {
        *self.0.lock().unwrap() = Some(backend);
    }

    fn get(&self) -> Option<Backend> {
        self.0.lock().unwrap().clone()
    }
}

/// `VirtioMediaHostMemoryMapper` over shared memory region 0.
pub struct ShmMapper {
    req: ReqChannel,
    alloc: ShmAllocator,
    /// shm offset -> length of what we asked the front end to map there.
    maps: BTreeMap<u64, u64>,
}

impl ShmMapper {
    pub fn new(req: ReqChannel) -> Self {
        Self {
            req,
            alloc: ShmAllocator::new(SHM_SIZE),
            maps: BTreeMap::new(),
        }
    }
}

impl VirtioMediaHostMemoryMapper for ShmMapper {
    fn add_mapping(
        &mut self,
        buffer: BorrowedFd,
        length: u64,
        offset: u64,
        rw: bool,
    ) -> Result<u64, i32> {
        let req = self.req.get().ok_or_else(|| {
            error!("SHMEM_MAP: no backend request channel (front end without BACKEND_REQ?)");
            libc::ENODEV
        })?;
        let shm_offset = self.alloc.alloc(length).ok_or_else(|| {
            error!("SHMEM_MAP: no room for {length} bytes in the {SHM_SIZE}-byte region");
            libc::ENOMEM
        })?;
        let flags = if rw {
            VhostUserMMapFlags::WRITABLE
        } else {
            VhostUserMMapFlags::empty()
        };
        let msg = VhostUserMMap {
            shmid: SHM_ID,
            fd_offset: 0,
            shm_offset,
            len: length,
            flags: flags.bits(),
            ..Default::default()
        };
        if let Err(e) = req.shmem_map(&msg, &buffer) {
            error!("SHMEM_MAP shm_offset {shm_offset:#x} len {length:#x}: {e}");
            self.alloc.free(shm_offset);
            return Err(libc::EIO);
        }
        debug!("SHMEM_MAP buffer {offset:#x} -> shm {shm_offset:#x} len {length:#x} rw {rw}");
        self.maps.insert(shm_offset, length);
        Ok(shm_offset)
    }

    fn remove_mapping(&mut self, shm_offset: u64) -> Result<(), i32> {
        let len = self.maps.remove(&shm_offset).ok_or(libc::EINVAL)?;
        self.alloc.free(shm_offset);
        let req = self.req.get().ok_or(libc::ENODEV)?;
        let msg = VhostUserMMap {
            shmid: SHM_ID,
            shm_offset,
            len,
            ..Default::default()
        };
        if let Err(e) = req.shmem_unmap(&msg) {
            error!("SHMEM_UNMAP shm_offset {shm_offset:#x} len {len:#x}: {e}");
            return Err(libc::EIO);
        }
        debug!("SHMEM_UNMAP shm {shm_offset:#x} len {len:#x}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit() {
        let mut a = ShmAllocator::new(256 * PAGE);
        assert_eq!(a.alloc(460800), Some(0));
        let second = a.alloc(1).unwrap();
        assert_eq!(second, 460800u64.next_multiple_of(PAGE));
        assert!(a.free(0));
        assert_eq!(a.alloc(PAGE), Some(0));
        assert_eq!(a.alloc(PAGE), Some(PAGE));
        assert_eq!(a.alloc(256 * PAGE), None);
        assert_eq!(a.alloc(112 * PAGE), Some(114 * PAGE)); // the 111-page gap is too small
        assert_eq!(a.alloc(111 * PAGE), Some(2 * PAGE));
    }
}
