//! Unit tests of protocol.rs. Expected values come from the spec's tables
//! (VIRTIO 1.4 device-types/media, shared/notes/protocol.md) and videodev2.h, not from the code.

use virtio_media_protocol_tests::protocol::*;

fn enc<C: Command>(c: &C) -> Vec<u8> {
    let mut v = vec![0xAAu8; C::SIZE];
    c.encode(&mut v).expect("buffer is SIZE bytes");
    v
}

#[test]
fn command_encodings_match_spec_layout() {
    assert_eq!(enc(&CmdOpen::new()), [1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(enc(&CmdClose::new(0x0102_0304)), [2, 0, 0, 0, 0, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0]);
    // VIDIOC_G_FMT is _IOWR('V', 4, struct v4l2_format): code = _IOC_NR = 4.
    assert_eq!(enc(&CmdIoctl::new(7, 4)), [3, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0]);
    let m = CmdMmap {
        hdr: CmdHeader::new(CMD_MMAP),
        session_id: Le32::new(9),
        flags: Le32::new(MMAP_FLAG_RW),
        offset: Le32::new(0x8000_0000),
    };
    assert_eq!(enc(&m), [4, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80]);
    let u = CmdMunmap { hdr: CmdHeader::new(CMD_MUNMAP), driver_addr: Le64::new(0x1_0000_2000) };
    assert_eq!(enc(&u), [5, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 1, 0, 0, 0]);
    let sg = SgEntry { start: Le64::new(0x1234_5000), len: Le32::new(4096), reserved: Le32::new(0) };
    assert_eq!(enc(&sg), [0, 0x50, 0x34, 0x12, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0]);
    // SgEntry::new: reserved is 0.
    let sg = SgEntry::new(0xAB_0000_0123, 0x0203);
    assert_eq!(enc(&sg), [0x23, 0x01, 0, 0, 0xAB, 0, 0, 0, 0x03, 0x02, 0, 0, 0, 0, 0, 0]);
    // USERPTR QBUF chain: command + v4l2_buffer + 2 planes + 3 SG entries readable;
    // response + v4l2_buffer + 2 planes writable (the SG lists are device-readable only).
    let l = ChainLayout::ioctl(Dir::ReadWrite, 88 + 2 * 64, 3 * 16).unwrap();
    assert_eq!((l.readable, l.writable), (16 + 216 + 48, 8 + 216));
    // videodev2.h: V4L2_MEMORY_USERPTR = 2; v4l2_ext_control: size @4, union @12 (packed).
    assert_eq!(MEMORY_USERPTR, 2);
    assert_eq!((ext_ctrl::SIZE, ext_ctrl::PTR), (4, 12));
}

#[test]
fn encode_refuses_short_buffers() {
    let mut small = [0u8; 15];
    assert!(CmdIoctl::new(1, 2).encode(&mut small).is_none());
    let mut mmap = [0u8; 19];
    assert!(CmdMmap::default().encode(&mut mmap).is_none());
}

#[test]
fn sizes_match_spec() {
    assert_eq!(CmdMmap::SIZE, 20);
    assert_eq!(EVENT_MAX_SIZE, 608);
    assert_eq!(EVENT_EVENT_SIZE, 144);
    assert_eq!(config::SIZE, 40);
}

#[test]
fn ioctl_table_matches_videodev2() {
    // (nr, dir, size) straight from videodev2.h's _IO* definitions on x86_64.
    let expect = [
        (2u8, Dir::ReadWrite, 64u16), // ENUM_FMT
        (4, Dir::ReadWrite, 208),     // G_FMT
        (15, Dir::ReadWrite, 88),     // QBUF
        (18, Dir::Write, 4),          // STREAMON
        (23, Dir::Read, 8),           // G_STD
        (38, Dir::Read, 4),           // G_INPUT
        (39, Dir::ReadWrite, 4),      // S_INPUT
        (37, Dir::ReadWrite, 44),     // QUERYMENU (packed)
        (71, Dir::ReadWrite, 32),     // G_EXT_CTRLS
        (76, Dir::Read, 2072),        // G_ENC_INDEX
        (90, Dir::Write, 32),         // SUBSCRIBE_EVENT
        (92, Dir::ReadWrite, 256),    // CREATE_BUFS
        (103, Dir::ReadWrite, 232),   // QUERY_EXT_CTRL
    ];
    for (n, dir, size) in expect {
        let i = ioctl_info(n).unwrap_or_else(|| panic!("nr {n} missing"));
        assert_eq!((i.dir, i.size), (dir, size), "nr {n}");
    }
    // Answered in the guest, never forwarded.
    for n in [0u8, 17, 61, 62, 70, 89] {
        assert!(ioctl_info(n).is_none(), "nr {n} must not be forwarded");
    }
    // No duplicates.
    for (a, x) in IOCTLS.iter().enumerate() {
        for y in &IOCTLS[a + 1..] {
            assert_ne!(x.nr, y.nr);
        }
    }
}

#[test]
fn chain_layouts_follow_the_rules() {
    assert_eq!(ChainLayout::ioctl(Dir::Read, 8, 0), Some(ChainLayout { readable: 16, writable: 16 }));
    assert_eq!(ChainLayout::ioctl(Dir::Write, 32, 0), Some(ChainLayout { readable: 48, writable: 8 }));
    assert_eq!(ChainLayout::ioctl(Dir::ReadWrite, 208, 0), Some(ChainLayout { readable: 224, writable: 216 }));
    // QBUF of 3 USERPTR planes: buffer + planes in both halves, 3 SG entries only readable.
    let l = ChainLayout::ioctl(Dir::ReadWrite, 88 + 3 * 64, 3 * 16).unwrap();
    assert_eq!(l, ChainLayout { readable: 16 + 280 + 48, writable: 8 + 280 });
    assert_eq!(ChainLayout::ioctl(Dir::ReadWrite, usize::MAX, 0), None);
}

fn resp(status: u32, extra: usize) -> Vec<u8> {
    let mut v = vec![0u8; 8 + extra];
    v[..4].copy_from_slice(&status.to_le_bytes());
    v
}

#[test]
fn ioctl_responses_are_validated() {
    let r = resp(0, 208);
    assert_eq!(check_ioctl_resp(&r, 216, 216, 208), Ok(IoctlOutcome::Ok));
    // Success must carry the whole payload.
    assert_eq!(check_ioctl_resp(&r, 8, 216, 208), Err(ProtoError::Short(8, 216)));
    // Shorter than the header.
    assert_eq!(check_ioctl_resp(&r, 7, 216, 208), Err(ProtoError::Short(7, 8)));
    assert_eq!(check_ioctl_resp(&r, 0, 216, 208), Err(ProtoError::Short(0, 8)));
    // Used length beyond what was posted.
    assert_eq!(check_ioctl_resp(&r, 217, 216, 208), Err(ProtoError::Overflow(217, 216)));
    // Errors: header only, or header + payload.
    let e = resp(22, 208);
    assert_eq!(check_ioctl_resp(&e, 8, 216, 208), Ok(IoctlOutcome::Err { errno: 22, payload_written: false }));
    assert_eq!(check_ioctl_resp(&e, 216, 216, 208), Ok(IoctlOutcome::Err { errno: 22, payload_written: true }));
    // Not an errno (kernel-internal ERESTARTSYS, negative numbers seen as u32).
    assert_eq!(check_ioctl_resp(&resp(512, 0), 8, 8, 0), Err(ProtoError::BadStatus(512)));
    assert_eq!(check_ioctl_resp(&resp(u32::MAX, 0), 8, 8, 0), Err(ProtoError::BadStatus(u32::MAX)));
    assert_eq!(check_ioctl_resp(&resp(25, 0), 8, 8, 0), Ok(IoctlOutcome::Err { errno: 25, payload_written: false }));
}

#[test]
fn open_responses_are_validated() {
    let mut r = resp(0, 8);
    r[8..12].copy_from_slice(&42u32.to_le_bytes());
    assert_eq!(check_open_resp(&r, 16, 16), Ok(Ok(42)));
    assert_eq!(check_open_resp(&r, 12, 16), Err(ProtoError::Short(12, 16)));
    assert_eq!(check_open_resp(&resp(24, 8), 8, 16), Ok(Err(24)));
}

fn dqbuf_event(session: u32, index: u32, ty: u32, length: u32) -> Vec<u8> {
    let mut v = vec![0u8; 608];
    v[0..4].copy_from_slice(&1u32.to_le_bytes());
    v[4..8].copy_from_slice(&session.to_le_bytes());
    v[8..12].copy_from_slice(&index.to_le_bytes());
    v[12..16].copy_from_slice(&ty.to_le_bytes());
    v[8 + 72..8 + 76].copy_from_slice(&length.to_le_bytes());
    v
}

#[test]
fn events_are_validated() {
    let e = dqbuf_event(3, 1, 9, 1);
    let dq = |ev: &[u8]| match parse_event(ev, 608) {
        Ok(Event::Dqbuf { session_id, buf }) => (session_id, buf),
        other => panic!("not a DQBUF event: {other:?}"),
    };
    let (id, b) = dq(&e);
    assert_eq!((id, b.index, b.buf_type, b.num_planes, b.flags), (3, 1, 9, 1, 0));
    // A DQBUF event shorter than the full struct is rejected even for one plane.
    assert_eq!(parse_event(&e, 200), Err(ProtoError::Short(200, 608)));
    assert_eq!(parse_event(&dqbuf_event(3, 1, 9, 9), 608), Err(ProtoError::TooManyPlanes(9)));
    // Single-planar: length is the buffer size, not a plane count.
    let (_, b) = dq(&dqbuf_event(3, 0, 1, 460800));
    assert_eq!((b.index, b.buf_type, b.num_planes), (0, 1, 0));
    assert_eq!(b.lengths(), [460800, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_event(&e, 609), Err(ProtoError::Overflow(609, 608)));
    assert_eq!(parse_event(&e, 4), Err(ProtoError::Short(4, 8)));
    let mut err = vec![0u8; 16];
    err[4..8].copy_from_slice(&5u32.to_le_bytes());
    err[8..12].copy_from_slice(&12u32.to_le_bytes());
    assert_eq!(parse_event(&err, 16), Ok(Event::Error { session_id: 5, errno: 12 }));
    assert_eq!(parse_event(&err, 12), Err(ProtoError::Short(12, 16)));
    let mut ev = vec![0u8; 144];
    ev[0] = 2;
    ev[8] = 5; // V4L2_EVENT_SOURCE_CHANGE
    assert_eq!(parse_event(&ev, 144), Ok(Event::V4l2 { session_id: 0, event_type: 5 }));
    assert_eq!(parse_event(&ev, 143), Err(ProtoError::Short(143, 144)));
    let mut unk = vec![0u8; 16];
    unk[0] = 7;
    assert_eq!(parse_event(&unk, 16), Err(ProtoError::UnknownEvent(7)));
}

#[test]
fn errno_mapping_and_card() {
    assert_eq!(device_errno(22), 22);
    assert_eq!(device_errno(0), 5);
    assert_eq!(device_errno(512), 5);
    let mut card = [0u8; 32];
    card[..13].copy_from_slice(b"simple_device");
    assert_eq!(card_len(&card), Some(13));
    assert_eq!(card_len(&[b'x'; 32]), None);
}

#[test]
fn enum_fmt_descriptions_are_repaired() {
    let mut f = [0u8; 64];
    f[44..48].copy_from_slice(b"XYZ1");
    assert!(sanitize_response(2, &mut f));
    assert_eq!(&f[12..17], b"XYZ1\0");
    // A non-terminated description gets its last byte cut.
    let mut g = [b'a'; 64];
    assert!(sanitize_response(2, &mut g));
    assert_eq!(g[43], 0);
    assert_eq!(g[12], b'a');
    // A good one is left alone; other ioctls are never touched.
    let mut h = [0u8; 64];
    h[12..16].copy_from_slice(b"YUV\0");
    assert!(!sanitize_response(2, &mut h));
    let mut other = [0u8; 208];
    assert!(!sanitize_response(4, &mut other));
}

#[test]
fn dqbuf_lengths_must_match_the_buffer() {
    // MPLANE, 1 plane of 460800 bytes (QUERYBUF), as v4l2_buffer + planes array.
    let mut b = vec![0u8; 88];
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    b[72..76].copy_from_slice(&1u32.to_le_bytes());
    let mut planes = vec![0u8; 64 * 8];
    planes[4..8].copy_from_slice(&460800u32.to_le_bytes());
    let known = buffer_lengths(&b, &planes);
    assert_eq!(known, [460800, 0, 0, 0, 0, 0, 0, 0]);
    // Single-planar: b.length is the size.
    let mut s = vec![0u8; 88];
    s[4..8].copy_from_slice(&1u32.to_le_bytes());
    s[72..76].copy_from_slice(&4096u32.to_le_bytes());
    assert_eq!(buffer_lengths(&s, &[]), [4096, 0, 0, 0, 0, 0, 0, 0]);

    let mut e = dqbuf_event(3, 0, 9, 1);
    let plane0 = 8 + 88;
    e[plane0..plane0 + 4].copy_from_slice(&460800u32.to_le_bytes()); // bytesused
    e[plane0 + 4..plane0 + 8].copy_from_slice(&460800u32.to_le_bytes()); // length
    let parsed = |e: &[u8]| match parse_event(e, 608) {
        Ok(Event::Dqbuf { buf, .. }) => buf,
        other => panic!("not a DQBUF event: {other:?}"),
    };
    assert_eq!(parsed(&e).check(4, Some(&known)), Ok(()));
    assert_eq!(parsed(&e).lengths(), known);
    // 1 GiB in both: consistent within the event, but not the buffer the device described.
    e[plane0..plane0 + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    e[plane0 + 4..plane0 + 8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    assert_eq!(parsed(&e).check(4, None), Ok(()));
    assert_eq!(parsed(&e).check(4, Some(&known)), Err(DqbufError::LengthChanged(0, 1 << 30, 460800)));
    // Unknown sizes (0) are not checked.
    assert_eq!(parsed(&e).check(4, Some(&[0; 8])), Ok(()));
}

#[test]
fn unsupported_features_are_refused_and_masked() {
    // REQBUFS: DMABUF (4) and unknown memory are EINVAL; the cache-hint flag is cleared.
    let mut rb = [0u8; 20];
    rb[8..12].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(check_request(nr::REQBUFS, &mut rb), Err(EINVAL));
    rb[8..12].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(check_request(nr::REQBUFS, &mut rb), Err(EINVAL));
    rb[8..12].copy_from_slice(&MEMORY_MMAP.to_le_bytes());
    rb[16] = 1;
    assert_eq!(check_request(nr::REQBUFS, &mut rb), Ok(()));
    assert_eq!(rb[16], 0);
    // Answers report only what the driver implements.
    rb[12..16].copy_from_slice(&0x1ffu32.to_le_bytes());
    rb[16] = 1;
    mask_answer(nr::REQBUFS, &mut rb);
    assert_eq!(get_u32(&rb, 12), Some(BUF_CAPS_SUPPORTED));
    assert_eq!(BUF_CAPS_SUPPORTED, 0x93);
    assert_eq!(rb[16], 0);
    let mut cb = [0u8; 256];
    cb[8..12].copy_from_slice(&MEMORY_USERPTR.to_le_bytes());
    cb[228..232].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(check_request(nr::CREATE_BUFS, &mut cb), Ok(()));
    assert_eq!(get_u32(&cb, 228), Some(0));
    cb[224..228].copy_from_slice(&(bufcap::DMABUF | bufcap::USERPTR).to_le_bytes());
    mask_answer(nr::CREATE_BUFS, &mut cb);
    assert_eq!(get_u32(&cb, 224), Some(bufcap::USERPTR));
    cb[8..12].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(check_request(nr::CREATE_BUFS, &mut cb), Err(EINVAL));

    // Buffers of a request: EBADR (QBUF), EINVAL (PREPARE_BUF); QUERYBUF ignores input flags.
    // request_fd never goes to the device.
    let mut b = [0u8; 88];
    b[12..16].copy_from_slice(&buf::FLAG_REQUEST_FD.to_le_bytes());
    b[80..84].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(check_request(nr::QBUF, &mut b), Err(EBADR));
    assert_eq!(check_request(nr::PREPARE_BUF, &mut b), Err(EINVAL));
    assert_eq!(check_request(nr::QUERYBUF, &mut b), Ok(()));
    assert_eq!(get_u32(&b, 80), Some(0));
    b[12..16].copy_from_slice(&0u32.to_le_bytes());
    b[80..84].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(check_request(nr::QBUF, &mut b), Ok(()));
    assert_eq!(get_u32(&b, 80), Some(0));
    // Answers: no request flags, no request fd; other flags kept.
    let flags = buf::FLAG_REQUEST_FD | buf::FLAG_IN_REQUEST | buf::FLAG_LAST | 1;
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b[80..84].copy_from_slice(&7u32.to_le_bytes());
    mask_answer(nr::QBUF, &mut b);
    assert_eq!(get_u32(&b, 12), Some(buf::FLAG_LAST | 1));
    assert_eq!(get_u32(&b, 80), Some(0));

    // Ext controls: REQUEST_VAL is EINVAL; request_fd is cleared otherwise.
    let mut ec = [0u8; 32];
    ec[0..4].copy_from_slice(&ext_ctrls::WHICH_REQUEST_VAL.to_le_bytes());
    assert_eq!(check_request(nr::G_EXT_CTRLS, &mut ec), Err(EINVAL));
    assert_eq!(check_request(nr::S_EXT_CTRLS, &mut ec), Err(EINVAL));
    ec[0..4].copy_from_slice(&0u32.to_le_bytes());
    ec[12..16].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(check_request(nr::TRY_EXT_CTRLS, &mut ec), Ok(()));
    assert_eq!(get_u32(&ec, 12), Some(0));

    // Everything else passes untouched.
    let mut fmt = [0xffu8; 208];
    assert_eq!(check_request(nr::G_FMT, &mut fmt), Ok(()));
    mask_answer(nr::G_FMT, &mut fmt);
    assert!(fmt.iter().all(|&x| x == 0xff));
}

#[test]
fn dqbuf_events_are_checked_against_the_queue() {
    let parsed = |e: &[u8]| match parse_event(e, 608) {
        Ok(Event::Dqbuf { buf, .. }) => buf,
        other => panic!("not a DQBUF event: {other:?}"),
    };
    let plane = |e: &mut Vec<u8>, i: usize, used: u32, len: u32, off: u32| {
        let p = 8 + 88 + i * 64;
        e[p..p + 4].copy_from_slice(&used.to_le_bytes());
        e[p + 4..p + 8].copy_from_slice(&len.to_le_bytes());
        e[p + 16..p + 20].copy_from_slice(&off.to_le_bytes());
    };
    // Not a streaming type (VIDEO_OVERLAY), an index beyond the buffers, no planes.
    assert_eq!(parsed(&dqbuf_event(1, 0, 3, 0)).check(4, None), Err(DqbufError::BadType(3)));
    assert_eq!(parsed(&dqbuf_event(1, 4, 9, 1)).check(4, None), Err(DqbufError::BadIndex(4, 4)));
    assert_eq!(parsed(&dqbuf_event(1, 0, 9, 0)).check(4, None), Err(DqbufError::BadPlanes(0)));
    // Multi-planar: bytesused within length, data_offset before bytesused, per plane.
    let mut e = dqbuf_event(1, 0, 9, 2);
    plane(&mut e, 0, 100, 100, 0);
    plane(&mut e, 1, 51, 50, 0);
    assert_eq!(parsed(&e).check(4, None), Err(DqbufError::BadLength(1, 51, 50)));
    plane(&mut e, 1, 50, 50, 50);
    assert_eq!(parsed(&e).check(4, None), Err(DqbufError::BadLength(1, 50, 50)));
    plane(&mut e, 1, 50, 50, 10);
    assert_eq!(parsed(&e).check(4, None), Ok(()));
    assert_eq!(parsed(&e).lengths(), [100, 50, 0, 0, 0, 0, 0, 0]);
    // Planes beyond num_planes are not read.
    plane(&mut e, 2, 9, 1, 0);
    assert_eq!(parsed(&e).check(4, None), Ok(()));
    // Single-planar: bytesused within length.
    let mut s = dqbuf_event(1, 0, 1, 4096);
    s[16..20].copy_from_slice(&4097u32.to_le_bytes());
    assert_eq!(parsed(&s).check(4, None), Err(DqbufError::BadLength(0, 4097, 4096)));
    // The LAST flag.
    let mut l = dqbuf_event(1, 0, 9, 1);
    l[20..24].copy_from_slice(&buf::FLAG_LAST.to_le_bytes());
    assert!(parsed(&l).is_last());
    assert!(!parsed(&e).is_last());
}
