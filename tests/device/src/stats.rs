// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! The device's own time per command (`VMRS_DEVICE_STATS=1`), for bench/run's floors.
//!
//! `backend.rs` times every command from gathering it off the commandq descriptor chain to
//! scattering its response into the chain, and hands the sample here with the command and
//! response bytes. Samples are kept per session and per command kind (every sample: sessions are
//! short); when a session is closed its summary is one line on stderr:
//!
//! ```text
//! vmrs-stats {"session": 3, "commands": {"open": {"count": 1, "median_ns": 5100, "p99_ns": 5100, "mean_ns": 5100}, "ioctl 4": {...}, "close": {...}}}
//! ```
//!
//! An ioctl is keyed by its number (`_IOC_NR` of the VIDIOC code, what the IOCTL command
//! carries: 4 for G_FMT, 28 for S_CTRL); the other commands by lowercase name. OPEN is counted
//! in the session its response names (not at all if it failed), CLOSE in the session it closes
//! (the line is written after CLOSE's own sample). MUNMAP names no session and is not counted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// The environment variable that turns the statistics on (any value but empty or `0`).
pub const ENV: &str = "VMRS_DEVICE_STATS";

// virtio-media command codes (the crate's `VIRTIO_MEDIA_CMD_*`).
const CMD_OPEN: u32 = 1;
const CMD_CLOSE: u32 = 2;
const CMD_IOCTL: u32 = 3;
const CMD_MMAP: u32 = 4;

/// What a sample is filed under within a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cmd {
    Open,
    Ioctl(u32),
    Mmap,
    Close,
}

impl Cmd {
    fn key(self) -> String {
        match self {
            Cmd::Open => "open".into(),
            Cmd::Close => "close".into(),
            Cmd::Mmap => "mmap".into(),
            Cmd::Ioctl(nr) => format!("ioctl {nr}"),
        }
    }
}

/// count, median, p99 and mean of a set of samples, in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub median_ns: u64,
    pub p99_ns: u64,
    pub mean_ns: u64,
}

/// Summary of `samples` (sorted in place). Median and p99 are the samples at index `n / 2` and
/// `n * 99 / 100` of the sorted list, as tests/guest_tools/bench.py computes the guest's; the
/// mean is rounded down. `None` for no samples.
pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
    let n = samples.len();
    if n == 0 {
        return None;
    }
    samples.sort_unstable();
    let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
    Some(Summary {
        count: n,
        median_ns: samples[n / 2],
        p99_ns: samples[n * 99 / 100],
        mean_ns: (sum / n as u128) as u64,
    })
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// Samples of the open sessions.
#[derive(Default)]
pub struct Stats {
    sessions: HashMap<u32, BTreeMap<Cmd, Vec<u64>>>,
}

impl Stats {
    /// `Some` iff `VMRS_DEVICE_STATS` is set (to anything but `0` or nothing).
    pub fn from_env() -> Option<Stats> {
        match std::env::var_os(ENV) {
            Some(v) if !v.is_empty() && v != "0" => Some(Stats::default()),
            _ => None,
        }
    }

    /// Files one command that took `ns` (request bytes `req`, response bytes `resp`); returns
    /// the `vmrs-stats` line when the command closed a session.
    pub fn record(&mut self, req: &[u8], resp: &[u8], ns: u64) -> Option<String> {
        let (session, cmd) = match word(req, 0)? {
            // OpenResp: errno, padding, session_id.
            CMD_OPEN if word(resp, 0) == Some(0) => (word(resp, 8)?, Cmd::Open),
            CMD_OPEN => return None,
            CMD_CLOSE => (word(req, 8)?, Cmd::Close),
            CMD_IOCTL => (word(req, 8)?, Cmd::Ioctl(word(req, 12)?)),
            CMD_MMAP => (word(req, 8)?, Cmd::Mmap),
            // MUNMAP (a guest address, no session) and anything unknown.
            _ => return None,
        };
        self.sessions
            .entry(session)
            .or_default()
            .entry(cmd)
            .or_default()
            .push(ns);
        if cmd != Cmd::Close {
            return None;
        }
        let cmds = self.sessions.remove(&session)?;
        Some(line(session, cmds))
    }
}

/// The `vmrs-stats {JSON}` line of one session.
fn line(session: u32, cmds: BTreeMap<Cmd, Vec<u64>>) -> String {
    let mut s = format!("vmrs-stats {{\"session\": {session}, \"commands\": {{");
    let mut first = true;
    for (cmd, mut samples) in cmds {
        let Some(m) = summarize(&mut samples) else {
            continue;
        };
        if !first {
            s.push_str(", ");
        }
        first = false;
        let _ = write!(
            s,
            "\"{}\": {{\"count\": {}, \"median_ns\": {}, \"p99_ns\": {}, \"mean_ns\": {}}}",
            cmd.key(),
            m.count,
            m.median_ns,
            m.p99_ns,
            m.mean_ns
        );
    }
    s.push_str("}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn median_and_p99() {
        // 1..=100 shuffled: sorted[50] = 51, sorted[99] = 100.
        let mut v: Vec<u64> = (1..=100).rev().collect();
        v.swap(3, 77);
        let m = summarize(&mut v).unwrap();
        assert_eq!(
            m,
            Summary {
                count: 100,
                median_ns: 51,
                p99_ns: 100,
                mean_ns: 50
            }
        );
        // 1000 samples, ten outliers: p99 is sorted[990], the first outlier.
        let mut v: Vec<u64> = (0..1000)
            .map(|i| if i % 100 == 7 { 9000 } else { 10 })
            .collect();
        let m = summarize(&mut v).unwrap();
        assert_eq!((m.median_ns, m.p99_ns, m.mean_ns), (10, 9000, 99));
        let mut one = [42];
        let m = summarize(&mut one).unwrap();
        assert_eq!((m.count, m.median_ns, m.p99_ns, m.mean_ns), (1, 42, 42, 42));
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn sessions_are_aggregated_and_logged_on_close() {
        let mut st = Stats::default();
        // OPEN answered with session 7; a failed OPEN counts nowhere.
        assert_eq!(st.record(&cmd(&[1, 0]), &cmd(&[0, 0, 7, 0]), 500), None);
        assert_eq!(st.record(&cmd(&[1, 0]), &cmd(&[24, 0]), 1), None);
        // Another session's commands stay apart.
        st.record(&cmd(&[1, 0]), &cmd(&[0, 0, 8, 0]), 1);
        st.record(&cmd(&[3, 0, 8, 4]), &[0; 8], 1_000_000);
        for ns in [300, 100, 200] {
            assert_eq!(st.record(&cmd(&[3, 0, 7, 4]), &[0; 8], ns), None);
        }
        st.record(&cmd(&[3, 0, 7, 28]), &cmd(&[22, 0]), 50);
        st.record(&cmd(&[4, 0, 7, 1, 0]), &[0; 24], 70);
        // MUNMAP has no session.
        assert_eq!(st.record(&cmd(&[5, 0, 0, 0]), &[0; 8], 9), None);
        let l = st.record(&cmd(&[2, 0, 7, 0]), &[], 40).unwrap();
        assert_eq!(
            l,
            "vmrs-stats {\"session\": 7, \"commands\": {\
             \"open\": {\"count\": 1, \"median_ns\": 500, \"p99_ns\": 500, \"mean_ns\": 500}, \
             \"ioctl 4\": {\"count\": 3, \"median_ns\": 200, \"p99_ns\": 300, \"mean_ns\": 200}, \
             \"ioctl 28\": {\"count\": 1, \"median_ns\": 50, \"p99_ns\": 50, \"mean_ns\": 50}, \
             \"mmap\": {\"count\": 1, \"median_ns\": 70, \"p99_ns\": 70, \"mean_ns\": 70}, \
             \"close\": {\"count\": 1, \"median_ns\": 40, \"p99_ns\": 40, \"mean_ns\": 40}}}"
        );
        // Session 7 is forgotten; 8 is still there.
        assert!(!st.sessions.contains_key(&7));
        let l = st.record(&cmd(&[2, 0, 8, 0]), &[], 1).unwrap();
        assert!(l.contains("\"ioctl 4\": {\"count\": 1, \"median_ns\": 1000000"));
    }

    #[test]
    fn short_commands_are_ignored() {
        let mut st = Stats::default();
        assert_eq!(st.record(&[], &[], 1), None);
        assert_eq!(st.record(&cmd(&[3, 0, 7]), &[], 1), None);
        assert_eq!(st.record(&cmd(&[1, 0]), &cmd(&[0, 0]), 1), None);
        assert!(st.sessions.is_empty());
    }
}
