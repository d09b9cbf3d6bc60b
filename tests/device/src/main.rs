// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! vmrs-device: the virtio-media-rs project's own vhost-user virtio-media test device.
//!
//!     vmrs-device --socket-path SOCK --profile capture-mplane
//!
//! Listens on SOCK (replacing a stale socket file), serves one front end (QEMU's
//! vhost-user-device-pci, virtio-id=48, num_vqs=2, config_size=40) at a time with a fresh device,
//! and waits for the next one when it disconnects. Logs go to stderr (RUST_LOG=debug traces every
//! command; VMRS_DEVICE_STATS=1 logs the device's own time per command, src/stats.rs).
//!
//!     vmrs-device --produce-rate capture-hd --format NV12 --size 1920x1080 --frames 50
//!
//! runs a capture profile's frame generator with no guest and prints its rate as one JSON line.
//! See Documentation/test-device.md.

mod avdec;
mod backend;
mod chain;
mod eventq;
mod fault;
mod guestmem;
mod profiles;
mod quirks;
mod shm;
mod stats;
mod testdev;

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info};
use vhost::vhost_user::Listener;

fn usage() -> String {
    let mut s = String::from(
        "usage: vmrs-device --socket-path SOCK --profile PROFILE [--fault FAULT]\n       \
         vmrs-device --produce-rate PROFILE --format FOURCC --size WxH --frames N\n       \
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
    let mut produce: Option<String> = None;
    let mut format: Option<String> = None;
    let mut size: Option<String> = None;
    let mut frames: Option<String> = None;
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
            "--produce-rate" | "--format" | "--size" | "--frames" => {
                let v = match value(&key) {
                    Ok(v) => Some(v),
                    Err(n) => return bad(&format!("{n} needs a value")),
                };
                match key.as_str() {
                    "--produce-rate" => produce = v,
                    "--format" => format = v,
                    "--size" => size = v,
                    _ => frames = v,
                }
            }
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
    if let Some(name) = produce {
        return produce_rate(&name, format, size, frames);
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

/// `--produce-rate PROFILE --format FOURCC --size WxH --frames N`: the profile's capture frame
/// generator run N times with no guest (`testdev::produce_rate`); prints one JSON line.
fn produce_rate(
    name: &str,
    format: Option<String>,
    size: Option<String>,
    frames: Option<String>,
) -> ExitCode {
    let Some(spec) = profiles::find(name).and_then(|p| p.spec) else {
        return bad(&format!(
            "--produce-rate: {name:?} is not a TestDevice profile"
        ));
    };
    let fourcc: Option<[u8; 4]> = format.as_deref().and_then(|f| f.as_bytes().try_into().ok());
    let Some(fourcc) = fourcc else {
        return bad("--produce-rate needs --format FOURCC (4 characters)");
    };
    let wh = size.as_deref().and_then(|s| {
        let (w, h) = s.split_once('x')?;
        Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?))
    });
    let Some((width, height)) = wh else {
        return bad("--produce-rate needs --size WxH");
    };
    let Some(n) = frames
        .and_then(|f| f.parse::<u32>().ok())
        .filter(|&n| n > 0)
    else {
        return bad("--produce-rate needs --frames N (N > 0)");
    };
    match testdev::produce_rate(spec, fourcc, width, height, n) {
        Ok(t) => {
            let secs = t.as_secs_f64();
            println!(
                "{{\"profile\": \"{name}\", \"format\": \"{}\", \"width\": {width}, \
                 \"height\": {height}, \"frames\": {n}, \"seconds\": {secs:.6}, \
                 \"fps\": {:.3}}}",
                String::from_utf8_lossy(&fourcc),
                f64::from(n) / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmrs-device: --produce-rate {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad(msg: &str) -> ExitCode {
    eprint!("vmrs-device: {msg}\n{}", usage());
    ExitCode::from(2)
}
