// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//! Builds csrc/avdec.c (the C face of libavcodec's H.264 decoder, src/avdec.rs) and links it
//! against Debian's libavcodec/libavutil (packages libavcodec-dev, libavutil-dev).

fn main() {
    println!("cargo:rerun-if-changed=csrc/avdec.c");
    cc::Build::new()
        .file("csrc/avdec.c")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .warnings_into_errors(true)
        .compile("avdec");
    println!("cargo:rustc-link-lib=avcodec");
    println!("cargo:rustc-link-lib=avutil");
}
