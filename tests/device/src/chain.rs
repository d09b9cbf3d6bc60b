// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Descriptor chains as the byte streams the `virtio-media` crate reads commands from and writes
//! responses to.
//!
//! `VirtioMediaDeviceRunner` carries its reader and writer types in its own type, so they cannot
//! borrow guest memory. We copy the device-readable part of a chain into a `Cursor<Vec<u8>>`
//! before the command runs, let the device write its response into a `Vec<u8>`, and scatter that
//! into the device-writable descriptors afterwards. Commands and responses are small (at most a
//! few KiB with USERPTR SG lists), so the copies cost nothing measurable, and a response is only
//! visible to the driver once it is complete.

use std::io;
use std::ops::Deref;

use log::warn;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

/// What a device reads a command from (the device-readable part of the chain).
pub type CmdReader = io::Cursor<Vec<u8>>;
/// What a device writes its response into (copied to the device-writable part afterwards).
pub type CmdWriter = Vec<u8>;

/// Upper bound of the device-readable bytes of one chain we accept.
const MAX_READABLE: usize = 1 << 20;

/// Copies the device-readable descriptors of `chain`, in order, into one buffer.
pub fn gather<M>(chain: &DescriptorChain<M>) -> io::Result<Vec<u8>>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut out = Vec::new();
    for desc in chain.clone().readable() {
        let start = out.len();
        let len = desc.len() as usize;
        if start + len > MAX_READABLE {
            return Err(io::Error::other(format!(
                "device-readable part longer than {MAX_READABLE} bytes"
            )));
        }
        out.resize(start + len, 0);
        mem.read_slice(&mut out[start..], desc.addr())
            .map_err(io::Error::other)?;
    }
    Ok(out)
}

/// Copies `data` into the device-writable descriptors of `chain`; returns the bytes written (the
/// used length). Data that does not fit is dropped with a warning.
pub fn scatter<M>(chain: &DescriptorChain<M>, data: &[u8]) -> io::Result<u32>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut done = 0usize;
    for desc in chain.clone().writable() {
        if done == data.len() {
            break;
        }
        let n = (desc.len() as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], desc.addr())
            .map_err(io::Error::other)?;
        done += n;
    }
    if done < data.len() {
        warn!(
            "chain {}: {} response bytes do not fit in {} writable bytes; truncated",
            chain.head_index(),
            data.len(),
            done
        );
    }
    Ok(done as u32)
}

/// Total size of the device-writable descriptors of `chain` (bytes).
pub fn writable_len<M>(chain: &DescriptorChain<M>) -> u32
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    chain
        .clone()
        .writable()
        .fold(0u32, |n, d| n.saturating_add(d.len()))
}
