// SPDX-License-Identifier: GPL-2.0
//! The emulated PCI configuration space against what the PCI specification
//! says a type 0 function does (and what QEMU's vfio-pci relies on): the
//! expected values below are written out from the specification, not
//! computed by the code under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rmdev_logic::pci_config::*;

const ID: Identity = Identity {
    vendor: 0x1b36,
    device: 0x10f0,
    revision: 0x02,
    class: 0xff0000,
    subsystem_vendor: 0x1af4,
    subsystem: 0x1100,
    interrupt_pin: 1,
};

fn sample() -> ConfigSpace {
    ConfigSpace::new(
        &ID,
        &[
            Bar {
                index: 0,
                size: 32,
                kind: BarKind::Mem32,
            },
            Bar {
                index: 2,
                size: 256 << 20,
                kind: BarKind::Mem64 { prefetchable: true },
            },
            Bar {
                index: 4,
                size: 16,
                kind: BarKind::Io,
            },
        ],
        &[],
    )
    .unwrap()
}

fn rd32(c: &ConfigSpace, at: u64) -> u32 {
    let mut b = [0u8; 4];
    c.read(at, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn rd16(c: &ConfigSpace, at: u64) -> u16 {
    let mut b = [0u8; 2];
    c.read(at, &mut b).unwrap();
    u16::from_le_bytes(b)
}

fn wr32(c: &mut ConfigSpace, at: u64, v: u32) {
    c.write(at, &v.to_le_bytes()).unwrap();
}

#[test]
fn identity_is_read_only() {
    let mut c = sample();
    assert_eq!(rd32(&c, 0x00), 0x10f0_1b36);
    assert_eq!(rd32(&c, 0x08), 0xff00_0002);
    assert_eq!(rd32(&c, 0x2c), 0x1100_1af4);
    assert_eq!(c.as_bytes()[0x3d], 1);
    assert_eq!(c.as_bytes()[0x0e], 0, "header type 0, single function");
    for at in [0x00, 0x08, 0x2c, 0x34, 0x3c] {
        wr32(&mut c, at, 0xffff_ffff);
    }
    assert_eq!(rd32(&c, 0x00), 0x10f0_1b36);
    assert_eq!(rd32(&c, 0x08), 0xff00_0002);
    assert_eq!(rd32(&c, 0x2c), 0x1100_1af4);
    assert_eq!(c.as_bytes()[0x34], 0, "no capabilities");
    // Interrupt line writable, pin not; min_gnt/max_lat read 0.
    assert_eq!(rd32(&c, 0x3c), 0x0000_01ff);
}

#[test]
fn bars_size_like_hardware() {
    let mut c = sample();
    // Reset values carry only the type bits.
    assert_eq!(rd32(&c, 0x10), 0x0000_0000);
    assert_eq!(rd32(&c, 0x18), 0x0000_000c, "64-bit prefetchable");
    assert_eq!(rd32(&c, 0x20), 0x0000_0001, "I/O");
    for bar in 0..6u64 {
        wr32(&mut c, 0x10 + 4 * bar, 0xffff_ffff);
    }
    assert_eq!(rd32(&c, 0x10), 0xffff_ffe0, "32 bytes");
    assert_eq!(rd32(&c, 0x14), 0, "absent BAR 1");
    assert_eq!(rd32(&c, 0x18), 0xf000_000c, "256 MiB, low dword");
    assert_eq!(rd32(&c, 0x1c), 0xffff_ffff, "256 MiB, high dword");
    assert_eq!(rd32(&c, 0x20), 0xffff_fff1, "16 bytes of I/O");
    assert_eq!(rd32(&c, 0x24), 0, "absent BAR 5");
    // Programmed addresses read back, aligned to the size.
    wr32(&mut c, 0x10, 0xfebf_1234);
    wr32(&mut c, 0x18, 0x8000_0000);
    wr32(&mut c, 0x1c, 0x0000_0001);
    wr32(&mut c, 0x20, 0x0000_c05f);
    assert_eq!(rd32(&c, 0x10), 0xfebf_1220);
    assert_eq!(c.bar_address(0), Some(0xfebf_1220));
    assert_eq!(c.bar_address(2), Some(0x1_8000_0000));
    assert_eq!(c.bar_address(4), Some(0xc050));
    assert_eq!(c.bar_address(1), None);
    assert_eq!(c.bar_address(3), None, "the upper half of BAR 2");
    assert_eq!(c.bar_address(6), None);
    assert_eq!(
        [0, 1, 2, 3, 4, 5, 6].map(|i| c.bar_size(i)),
        [32, 0, 256 << 20, 0, 16, 0, 0]
    );
}

#[test]
fn rom_reads_zero() {
    let mut c = sample();
    wr32(&mut c, 0x30, 0xffff_f800);
    assert_eq!(rd32(&c, 0x30), 0);
    wr32(&mut c, 0x30, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x30), 0);
}

#[test]
fn command_and_status() {
    let mut c = sample();
    c.write(0x04, &0xffffu16.to_le_bytes()).unwrap();
    // I/O, memory, master, parity, SERR, INTx disable: 0x0547.
    assert_eq!(rd16(&c, 0x04), 0x0547);
    assert_eq!(c.command(), 0x0547);
    c.write(0x04, &0u16.to_le_bytes()).unwrap();
    assert_eq!(rd16(&c, 0x04), 0);
    // Error bits of status are write-1-to-clear; writing ones to a clean
    // status changes nothing, the interrupt bit follows the device.
    c.write(0x06, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(rd16(&c, 0x06), 0);
    c.set_interrupt_status(true);
    assert_eq!(rd16(&c, 0x06), 0x0008);
    c.write(0x06, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(rd16(&c, 0x06), 0x0008, "the interrupt bit is read-only");
    c.set_interrupt_status(false);
    assert_eq!(rd16(&c, 0x06), 0);
    // A function without an interrupt pin or I/O BAR has no such bits.
    let mut plain = ConfigSpace::new(
        &Identity {
            interrupt_pin: 0,
            ..ID
        },
        &[],
        &[],
    )
    .unwrap();
    plain.write(0x04, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(rd16(&plain, 0x04), 0x0144);
}

#[test]
fn writes_of_any_size_anywhere_consume_everything() {
    let mut c = sample();
    let before = c.clone();
    // One 256-byte write of ones: every byte goes through its mask.
    c.write(0, &[0xff; 256]).unwrap();
    assert_eq!(rd32(&c, 0x00), 0x10f0_1b36);
    assert_eq!(rd32(&c, 0x10), 0xffff_ffe0);
    // Unaligned and odd-sized writes.
    for len in 1..=8 {
        for at in 0..(256 - len) as u64 {
            c.write(at, &vec![0u8; len]).unwrap();
        }
    }
    // Everything writable is now 0, the rest as at reset.
    let mut reset = before.clone();
    reset.reset();
    let mut cleared = reset.as_bytes().to_owned();
    cleared[0x10..0x14].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(c.as_bytes()[..], cleared[..]);
    c.reset();
    assert_eq!(c, before);
}

#[test]
fn out_of_range_accesses_are_refused() {
    let mut c = sample();
    let mut b = [0u8; 4];
    assert_eq!(c.read(253, &mut b), Err(AccessError::OutOfRange));
    assert_eq!(c.read(256, &mut b[..1]), Err(AccessError::OutOfRange));
    assert_eq!(c.read(u64::MAX, &mut b), Err(AccessError::OutOfRange));
    assert_eq!(c.read(0, &mut []), Err(AccessError::OutOfRange));
    assert_eq!(c.write(255, &[0, 0]), Err(AccessError::OutOfRange));
    assert_eq!(c.write(1 << 40, &[0]), Err(AccessError::OutOfRange));
    c.read(252, &mut b).unwrap();
    c.write(255, &[1]).unwrap();
}

#[test]
fn capability_list() {
    // A vendor-specific capability (0x09, read-only) and one with a
    // writable byte.
    let c = ConfigSpace::new(
        &ID,
        &[],
        &[
            Capability {
                id: 0x09,
                body: &[6, 0xaa, 0xbb, 0xcc],
                wmask: &[],
            },
            Capability {
                id: 0x05,
                body: &[0x00, 0x00],
                wmask: &[0x01, 0x00],
            },
        ],
    )
    .unwrap();
    assert_eq!(rd16(&c, 0x06) & 0x10, 0x10, "capability list bit");
    assert_eq!(c.as_bytes()[0x34], 0x40);
    assert_eq!(
        &c.as_bytes()[0x40..0x46],
        &[0x09, 0x48, 6, 0xaa, 0xbb, 0xcc]
    );
    assert_eq!(&c.as_bytes()[0x48..0x4c], &[0x05, 0x00, 0, 0]);
    let mut c = c;
    c.write(0x40, &[0xff; 8]).unwrap();
    assert_eq!(
        &c.as_bytes()[0x40..0x46],
        &[0x09, 0x48, 6, 0xaa, 0xbb, 0xcc]
    );
    c.write(0x4a, &[0xff, 0xff]).unwrap();
    assert_eq!(&c.as_bytes()[0x4a..0x4c], &[0x01, 0x00]);
    let too_big = [0u8; 200];
    assert_eq!(
        ConfigSpace::new(
            &ID,
            &[],
            &[Capability {
                id: 9,
                body: &too_big,
                wmask: &[]
            }]
        ),
        Err(ConfigError::BadCapabilities)
    );
}

#[test]
fn bad_layouts_are_refused() {
    let bar = |index, size, kind| Bar { index, size, kind };
    let cases = [
        (
            vec![bar(6, 16, BarKind::Mem32)],
            ConfigError::BadBarIndex(6),
        ),
        (
            vec![bar(
                5,
                16,
                BarKind::Mem64 {
                    prefetchable: false,
                },
            )],
            ConfigError::BadBarIndex(5),
        ),
        (
            vec![
                bar(
                    0,
                    16,
                    BarKind::Mem64 {
                        prefetchable: false,
                    },
                ),
                bar(1, 16, BarKind::Mem32),
            ],
            ConfigError::OverlappingBars(1),
        ),
        (vec![bar(0, 24, BarKind::Mem32)], ConfigError::BadBarSize(0)),
        (vec![bar(0, 8, BarKind::Mem32)], ConfigError::BadBarSize(0)),
        (
            vec![bar(0, 1 << 32, BarKind::Mem32)],
            ConfigError::BadBarSize(0),
        ),
        (vec![bar(0, 512, BarKind::Io)], ConfigError::BadBarSize(0)),
        (vec![bar(0, 0, BarKind::Io)], ConfigError::BadBarSize(0)),
    ];
    for (bars, err) in cases {
        assert_eq!(ConfigSpace::new(&ID, &bars, &[]), Err(err), "{bars:?}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        ConfigSpace::new(
            &Identity {
                interrupt_pin: 5,
                ..ID
            },
            &[],
            &[]
        ),
        Err(ConfigError::BadInterruptPin(5))
    );
    // A 64-bit BAR larger than 4 GiB is fine.
    let big = ConfigSpace::new(
        &ID,
        &[bar(
            0,
            1 << 34,
            BarKind::Mem64 {
                prefetchable: false,
            },
        )],
        &[],
    )
    .unwrap();
    let mut big = big;
    wr32(&mut big, 0x10, 0xffff_ffff);
    wr32(&mut big, 0x14, 0xffff_ffff);
    assert_eq!(rd32(&big, 0x10), 0x0000_0004);
    assert_eq!(rd32(&big, 0x14), 0xffff_fffc);
}

#[test]
fn save_and_restore() {
    let mut src = sample();
    wr32(&mut src, 0x10, 0xfebf_1000);
    src.write(0x04, &0x0006u16.to_le_bytes()).unwrap();
    src.write(0x3c, &[11]).unwrap();
    src.set_interrupt_status(true);
    let saved = *src.as_bytes();
    let mut dst = sample();
    dst.restore(&saved).unwrap();
    assert_eq!(dst.bar_address(0), Some(0xfebf_1000));
    assert_eq!(dst.command(), 0x0006);
    assert_eq!(dst.as_bytes()[0x3c], 11);
    assert_eq!(
        rd16(&dst, 0x06) & 0x08,
        0,
        "interrupt status is the device's"
    );
    // From another function (other device ID), or truncated: refused,
    // nothing changed.
    let mut other = saved;
    other[2] ^= 1;
    let mut fresh = sample();
    assert_eq!(fresh.restore(&other), Err(AccessError::Mismatch));
    assert_eq!(fresh.restore(&saved[..255]), Err(AccessError::Mismatch));
    assert_eq!(fresh, sample());
}

#[test]
fn random_writes_never_touch_read_only_bits() {
    // 100 000 writes of random bytes at random offsets and lengths (some
    // out of range): identity, BAR type bits and the pin never change, and
    // a probe still reads every BAR's size.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut c = sample();
    let reset = sample();
    for _ in 0..100_000 {
        let at = next() % 260;
        let len = (next() % 9) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let fits = len > 0 && at as usize + len <= 256;
        assert_eq!(c.write(at, &data).is_ok(), fits, "write {at}+{len}");
        let b = c.as_bytes();
        for p in [0, 1, 2, 3, 8, 9, 10, 11, 0x2c, 0x2d, 0x2e, 0x2f, 0x34, 0x3d] {
            assert_eq!(b[p], reset.as_bytes()[p], "byte {p:#x}");
        }
        assert_eq!(b[0x18] & 0xf, 0xc);
        assert_eq!(b[0x20] & 0x3, 0x1);
        assert_eq!(&b[0x30..0x34], &[0; 4]);
    }
    for (bar, want) in [
        (0x10u64, 0xffff_ffe0u32),
        (0x18, 0xf000_000c),
        (0x20, 0xffff_fff1),
    ] {
        wr32(&mut c, bar, 0xffff_ffff);
        assert_eq!(rd32(&c, bar), want);
    }
}

/// The 82576 VF's MSI-X layout (datasheet, and QEMU's igbvf): three
/// vectors, table at 0 and PBA at 0x2000 of BAR3 (16 KiB).
const VF_MSIX: Msix = Msix {
    vectors: 3,
    bar: 3,
    table_offset: 0,
    pba_offset: 0x2000,
};

fn vf_bars() -> [Bar; 2] {
    [
        Bar {
            index: 0,
            size: 16 << 10,
            kind: BarKind::Mem64 { prefetchable: true },
        },
        Bar {
            index: 3,
            size: 16 << 10,
            kind: BarKind::Mem64 { prefetchable: true },
        },
    ]
}

#[test]
fn msix_capability_as_the_specification_lays_it_out() {
    assert_eq!(VF_MSIX.check(&vf_bars()), Ok(()));
    // Message control: table size 3 - 1, function mask and enable clear;
    // table offset/BIR 0x00000003; PBA offset/BIR 0x00002003.
    assert_eq!(
        VF_MSIX.body(),
        [0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00]
    );
    assert_eq!(VF_MSIX.table_len(), 48);
    assert_eq!(VF_MSIX.pba_len(), 8);
    let big = Msix {
        vectors: 2048,
        ..VF_MSIX
    };
    assert_eq!(big.body()[..2], [0xff, 0x07]);
    assert_eq!(big.pba_len(), 256);
    let body = VF_MSIX.body();
    let c = ConfigSpace::new(
        &Identity {
            interrupt_pin: 0,
            ..ID
        },
        &vf_bars(),
        &[Capability {
            id: CAP_ID_MSIX,
            body: &body,
            wmask: &Msix::WMASK,
        }],
    )
    .unwrap();
    let mut c = c;
    assert_eq!(rd16(&c, 0x40), 0x0011);
    // Everything but enable and function mask is read-only.
    wr32(&mut c, 0x40, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x40), 0xc002_0011);
    wr32(&mut c, 0x44, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x44), 0x0000_0003);
    wr32(&mut c, 0x48, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x48), 0x0000_2003);
}

#[test]
fn msix_layouts_refused() {
    let bars = vf_bars();
    let bad = |m: Msix| assert_eq!(m.check(&bars), Err(ConfigError::BadMsix), "{m:?}");
    bad(Msix {
        vectors: 0,
        ..VF_MSIX
    });
    bad(Msix {
        vectors: 2049,
        ..VF_MSIX
    });
    // No BAR 2 (nor the upper half of BAR 0 as a BAR of its own).
    bad(Msix { bar: 2, ..VF_MSIX });
    bad(Msix { bar: 1, ..VF_MSIX });
    // Unaligned.
    bad(Msix {
        table_offset: 4,
        ..VF_MSIX
    });
    bad(Msix {
        pba_offset: 0x2004,
        ..VF_MSIX
    });
    // Past the BAR's end: the table, the PBA.
    bad(Msix {
        table_offset: 0x3fd8,
        ..VF_MSIX
    });
    bad(Msix {
        pba_offset: 0x4000,
        ..VF_MSIX
    });
    // Overlapping: the PBA inside the table.
    bad(Msix {
        pba_offset: 0x28,
        ..VF_MSIX
    });
    // An I/O BAR.
    let io = [Bar {
        index: 3,
        size: 256,
        kind: BarKind::Io,
    }];
    assert_eq!(VF_MSIX.check(&io), Err(ConfigError::BadMsix));
    // Exactly fitting ones are fine: table at the end, PBA right after it.
    let ok = |m: Msix| assert_eq!(m.check(&bars), Ok(()), "{m:?}");
    ok(Msix {
        table_offset: 0x3fd0,
        pba_offset: 0,
        ..VF_MSIX
    });
    ok(Msix {
        pba_offset: 0x30,
        ..VF_MSIX
    });
    ok(Msix {
        pba_offset: 0x3ff8,
        ..VF_MSIX
    });
}

#[test]
fn msix_table_window() {
    // Table bytes 0..48 of the BAR.
    assert!(VF_MSIX.in_table(0, 4));
    assert!(VF_MSIX.in_table(44, 4));
    assert!(VF_MSIX.in_table(40, 16));
    assert!(!VF_MSIX.in_table(48, 4));
    assert!(!VF_MSIX.in_table(0x2000, 8));
    assert!(VF_MSIX.in_table(0, u64::MAX));
    assert!(!VF_MSIX.in_table(0, 0));
    assert!(!VF_MSIX.in_table(16, 0));
    let high = Msix {
        table_offset: 0x100,
        ..VF_MSIX
    };
    assert!(!high.in_table(0xfc, 4));
    assert!(high.in_table(0xfc, 5));
    assert!(!high.in_table(u64::MAX - 1, 2));
}
