// SPDX-License-Identifier: GPL-2.0

//! MMAP buffers through shared memory region 0.
//!
//! `mmap()` of a buffer's `mem_offset` sends `VIRTIO_MEDIA_CMD_MMAP`; the device maps the
//! buffer into SHM region 0 and answers its offset there. The driver checks that the range
//! lies inside the region and covers the VMA, and maps those guest-physical pages into the
//! VMA (read-only unless the VMA is writable). One [`Mapping`] per `mmap()` call, shared by
//! every VMA that `fork()`, `mremap()` or a partial `munmap()` derives from it (their
//! `open`/`close` take and drop references), so the mapping is undone once: the last
//! reference sends `VIRTIO_MEDIA_CMD_MUNMAP`. The device keeps the range valid until then,
//! even if the session or the buffers are gone (spec).

use kernel::{prelude::*, sync::Arc};

use crate::ffi::dev_warn_rl;
use crate::protocol::{self, Command};
use crate::session::{etimedout, Session};
use crate::VirtioMedia;

/// One device mapping of a buffer in SHM region 0.
pub(crate) struct Mapping {
    media: Arc<VirtioMedia>,
    /// Offset in SHM region 0, as the device answered.
    shm_offset: u64,
}

/// Where a new mapping goes: guest-physical address and length to map into the VMA.
pub(crate) struct MapTarget {
    /// Guest-physical address (SHM region base + device offset), page-aligned.
    pub(crate) phys: u64,
    /// Bytes to map (the VMA's size).
    pub(crate) size: u64,
}

impl Mapping {
    /// Asks the device to map the buffer at `offset` (a plane's `mem_offset`) for a VMA of
    /// `size` bytes, writable if `writable`.
    ///
    /// Errors: `ENODEV` without SHM region 0 (with a message), `EINVAL` for an offset that
    /// does not fit the protocol's 32 bits or a VMA larger than the buffer, `ETIMEDOUT` at
    /// once while the device has an earlier MMAP/MUNMAP unanswered
    /// ([`VirtioMedia::mmap_stalled`]), the device's errno, `EIO` for an answer outside the
    /// region or not page-aligned, and those of [`VirtioMedia::send`].
    pub(crate) fn new(
        session: &Session,
        offset: u64,
        size: u64,
        writable: bool,
    ) -> Result<(Arc<Mapping>, MapTarget)> {
        let media = session.media();
        let Some((base, shm_len)) = media.shm() else {
            dev_warn_rl!(
                media.dev(),
                "mmap: the device has no shared memory region 0"
            );
            return Err(ENODEV);
        };
        let offset = u32::try_from(offset).map_err(|_| EINVAL)?;
        if media.mmap_stalled() {
            return Err(etimedout());
        }
        let cmd = protocol::CmdMmap {
            hdr: protocol::CmdHeader::new(protocol::CMD_MMAP),
            session_id: protocol::Le32::new(session.id()),
            flags: protocol::Le32::new(if writable { protocol::MMAP_FLAG_RW } else { 0 }),
            offset: protocol::Le32::new(offset),
        };
        let resp_len = core::mem::size_of::<protocol::RespMmap>();
        let mut req = media.request(protocol::CmdMmap::SIZE, resp_len)?;
        cmd.encode(req.out_mut()).ok_or(EINVAL)?;
        let (addr, len) = {
            let req = media.send(req)?;
            let r = media.wait(&req, format_args!("MMAP of offset {:#x}", offset));
            if matches!(&r, Err(e) if *e == etimedout()) {
                media.note_mmap_stall(req.arc());
            }
            let (resp, used) = r?;
            match protocol::check_mmap_resp(resp, used, resp_len) {
                Ok(Ok(r)) => r,
                Ok(Err(errno)) => return Err(crate::session::device_error(errno)),
                Err(e) => return Err(media.bad_response("MMAP", e)),
            }
        };
        // From here the device holds a mapping: `Mapping` undoes it on drop.
        let mapping = Arc::new(
            Mapping {
                media: media.clone(),
                shm_offset: addr,
            },
            GFP_KERNEL,
        )?;
        let page = kernel::page::PAGE_SIZE as u64;
        let fits = addr
            .checked_add(size)
            .map(|end| end <= shm_len)
            .unwrap_or(false);
        if addr % page != 0 || !fits {
            dev_warn_rl!(
                media.dev(),
                "MMAP answer {:#x}+{:#x} outside SHM region 0 ({:#x} bytes) or unaligned",
                addr,
                size,
                shm_len
            );
            return Err(EIO);
        }
        // A VMA covers whole pages; the buffer's last page is the device's too.
        let len_pages = len.checked_next_multiple_of(page).ok_or(EIO)?;
        if size > len_pages {
            return Err(EINVAL);
        }
        Ok((
            mapping,
            MapTarget {
                phys: base + addr,
                size,
            },
        ))
    }
}

impl Drop for Mapping {
    /// Sends MUNMAP and waits for the answer (the last unmap: under the `mmap_lock`). While
    /// the device is stalled ([`VirtioMedia::mmap_stalled`]) it is only posted, if the ring
    /// has room: nothing waits, and a device that comes back still gets it.
    fn drop(&mut self) {
        let stalled = self.media.mmap_stalled();
        let resp_len = core::mem::size_of::<protocol::RespMunmap>();
        let res = self
            .media
            .request(protocol::CmdMunmap::SIZE, resp_len)
            .and_then(|mut req| {
                let cmd = protocol::CmdMunmap {
                    hdr: protocol::CmdHeader::new(protocol::CMD_MUNMAP),
                    driver_addr: protocol::Le64::new(self.shm_offset),
                };
                cmd.encode(req.out_mut()).ok_or(EINVAL)?;
                if stalled {
                    return self.media.try_send(req).map(drop);
                }
                let req = self.media.send(req)?;
                let r = req.wait_release();
                if matches!(&r, Err(e) if *e == etimedout()) {
                    self.media.note_mmap_stall(req.arc());
                }
                let (resp, used) = r?;
                match protocol::check_resp_header(resp, used, resp_len) {
                    Ok(0) => Ok(()),
                    Ok(errno) => Err(crate::session::device_error(errno)),
                    Err(e) => Err(self.media.bad_response("MUNMAP", e)),
                }
            });
        if let Err(e) = res {
            if e != ENODEV {
                dev_warn_rl!(
                    self.media.dev(),
                    "MUNMAP of {:#x} failed: {:?}",
                    self.shm_offset,
                    e
                );
            }
        }
    }
}
