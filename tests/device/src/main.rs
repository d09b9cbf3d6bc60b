// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! vmrs-device: the virtio-media-rs project's own vhost-user virtio-media test device.
//!
//!     vmrs-device --socket-path SOCK --profile capture-mplane
//!
//! Listens on SOCK (replacing a stale socket file), serves one front end (QEMU's
//! vhost-user-device-pci, virtio-id=48, num_vqs=2, config_size=40) at a time with a fresh device,
//! and waits for the next one when it disconnects. Logs go to stderr (RUST_LOG=debug traces every
//! command). See Documentation/test-device.md.

mod avdec;
mod backend;
mod chain;
mod eventq;
mod fault;
mod guestmem;
mod profiles;
mod quirks;
mod shm;
mod testdev;

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info};
use vhost::vhost_user::Listener;

fn usage() -> String {
    let mut s = String::from(
        "usage: vmrs-device --socket-path SOCK --profile PROFILE [--fault FAULT]\n       \
         vmrs-device --list-profiles\n\nprofiles:\n",
    );
    for p in profiles::PROFILES {
        s += &format!("  {:<22} {}\n", p.name, p.summary);
    }
    s += "\nfaults (src/fault.rs, Documentation/test-device.md):\n";
    for (name, _, summary) in fault::FAULTS {
        s += &format!("  {name:<22} {summary}\n");
    }
    s
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut socket: Option<PathBuf> = None;
    let mut profile: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(name.to_owned())
        };
        match key.as_str() {
            "-s" | "--socket-path" => match value("--socket-path") {
                Ok(v) => socket = Some(v.into()),
                Err(n) => return bad(&format!("{n} needs a value")),
            },
            "-p" | "--profile" => match value("--profile") {
                Ok(v) => profile = Some(v),
                Err(n) => return bad(&format!("{n} needs a value")),
            },
            "-f" | "--fault" => match value("--fault") {
                Ok(v) if fault::set(&v) => info!("fault profile {v}"),
                Ok(v) => return bad(&format!("unknown fault {v:?}")),
                Err(n) => return bad(&format!("{n} needs a value")),
            },
            "--list-profiles" => {
                for p in profiles::PROFILES {
                    println!("{}", p.name);
                }
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                print!("{}", usage());
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("vmrs-device {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            _ => return bad(&format!("unknown argument {arg:?}")),
        }
    }
    let Some(socket) = socket else {
        return bad("--socket-path is required");
    };
    let Some(name) = profile else {
        return bad("--profile is required");
    };
    let Some(profile) = profiles::find(&name) else {
        return bad(&format!("unknown profile {name:?}"));
    };

    let mut listener = match Listener::new(&socket, true) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    info!(
        "profile {}, listening on {}",
        profile.name,
        socket.display()
    );
    loop {
        if let Err(e) = (profile.serve)(&mut listener) {
            error!("{e:#}");
            return ExitCode::FAILURE;
        }
        info!("front end disconnected; waiting for the next one");
    }
}

fn bad(msg: &str) -> ExitCode {
    eprint!("vmrs-device: {msg}\n{}", usage());
    ExitCode::from(2)
}
