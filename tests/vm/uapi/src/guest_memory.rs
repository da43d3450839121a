// SPDX-License-Identifier: GPL-2.0

//! The framework's guest-memory API (`core/dma.rs`) through the sample's DMA
//! registers, on both IOMMU backends: this process maps its own buffer into
//! the mdev's type1 container or iommufd IOAS, as a VMM maps guest RAM, and
//! has the device copy into it, out of it and pin it; then unmaps memory
//! under the device's pin, reads the dirty log, resets and reopens. The
//! expected bytes are the test's own patterns and the expected errnos those
//! of Linux 6.12's backends (`vfio_iommu_type1.c`, `iommufd/device.c`).

use rmdev::vfio::{self, Device};

use super::{ctx, errno_name, pattern, Mdev, TestResult, PAGE, TYPES};

/// The sample's DMA registers (`samples/sample.rs`, `reg`).
const DMA_IOVA_LO: u64 = 0x20;
const DMA_IOVA_HI: u64 = 0x24;
const DMA_LEN: u64 = 0x28;
const DMA_OFFSET: u64 = 0x2c;
const DMA_CMD: u64 = 0x30;
const DMA_STATUS: u64 = 0x34;
const DMA_PINNED: u64 = 0x38;
const DMA_UNMAPS: u64 = 0x3c;
/// The sample's DMA commands.
const TO_GUEST: u32 = 1;
const FROM_GUEST: u32 = 2;
const PIN: u32 = 3;
const UNPIN: u32 = 4;
const TO_PINNED: u32 = 5;

/// Where the test maps its buffer: 4 writable pages, 1 read-only page, and
/// an IOVA with nothing mapped.
const IOVA_RW: u64 = 0x10_0000;
const IOVA_RO: u64 = 0x20_0000;
const IOVA_RW2: u64 = 0x30_0000;
const IOVA_NONE: u64 = 0x90_0000;
const RW_PAGES: usize = 4;
/// What the buffer holds where the device must not write.
const SENTINEL: u8 = 0xa5;

/// Anonymous memory of this process, unmapped on drop.
pub(crate) struct Buffer {
    ptr: *mut u8,
    len: usize,
}

impl Buffer {
    pub(crate) fn new(len: usize) -> Result<Buffer, String> {
        // SAFETY: An anonymous private mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let b = Buffer {
            ptr: ptr.cast(),
            len,
        };
        Ok(b)
    }

    pub(crate) fn addr(&self, offset: usize) -> u64 {
        self.ptr as u64 + offset as u64
    }

    /// The bytes, as the kernel left them (no system call runs while the
    /// slice lives).
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: The mapping is `len` bytes, readable and writable, and
        // only this process (through system calls it makes) writes it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The 32-bit word at `offset` while a device may be writing the
    /// buffer (a receive queue, from its interrupt): an atomic load with
    /// acquire ordering, so what the kernel wrote before the word (a frame
    /// before its descriptor's done bit) is seen after it.
    pub(crate) fn load32(&self, offset: usize) -> u32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "word at {offset}"
        );
        // SAFETY: In the mapping and aligned (the mapping is page-aligned);
        // the kernel writes it concurrently only through its own
        // accesses, hence the atomic.
        let word = unsafe { std::sync::atomic::AtomicU32::from_ptr(self.ptr.add(offset).cast()) };
        word.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A copy of `len` bytes at `offset`, without a slice over the whole
    /// buffer (a device may be writing elsewhere in it meanwhile).
    pub(crate) fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len, "read of {len} at {offset}");
        let mut v = vec![0u8; len];
        // SAFETY: In the mapping; `v` is `len` bytes and apart from it.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), v.as_mut_ptr(), len) };
        v
    }

    /// Writes `data` at `offset`, as `read` reads.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.len,
            "write of {} at {offset}",
            data.len()
        );
        // SAFETY: In the mapping, which is writable; `data` is apart from it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: The mapping made in `new`, unused from here on.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Runs DMA command `cmd`; its status (0 or a positive errno).
fn dma(dev: &Device, cmd: u32, iova: u64, len: u32, offset: u32) -> Result<i32, String> {
    let w = |reg, v| {
        ctx(
            dev.write_reg(reg, v),
            &format!("write DMA register {reg:#x}"),
        )
    };
    w(DMA_IOVA_LO, iova as u32)?;
    w(DMA_IOVA_HI, (iova >> 32) as u32)?;
    w(DMA_LEN, len)?;
    w(DMA_OFFSET, offset)?;
    w(DMA_CMD, cmd)?;
    Ok(ctx(dev.read_reg(DMA_STATUS), "read DMA_STATUS")? as i32)
}

fn reg(dev: &Device, r: u64) -> Result<u32, String> {
    ctx(dev.read_reg(r), &format!("read register {r:#x}"))
}

/// Expects DMA command `cmd` to end with `want` (0: success).
fn expect_dma(
    dev: &Device,
    (cmd, iova, len, offset): (u32, u64, u32, u32),
    want: i32,
    what: &str,
) -> TestResult {
    let got = dma(dev, cmd, iova, len, offset)?;
    ensure!(
        got == want,
        "{what}: status {}, expected {}",
        errno_name(got),
        errno_name(want)
    );
    Ok(())
}

/// The dirty bitmap of the test's writable range, as its low 4 bits.
fn report(dev: &Device) -> Result<u64, String> {
    let bits = ctx(
        dev.dma_logging_report(IOVA_RW, (RW_PAGES * PAGE) as u64, PAGE as u64),
        "DMA_LOGGING_REPORT",
    )?;
    Ok(bits[0])
}

/// How long pins into a range just unmapped are refused
/// (`rmdev::dma::FENCE_MS`).
const FENCE: std::time::Duration = std::time::Duration::from_millis(1000);

/// One thread pins and unpins the first page in a loop, the other unmaps
/// and maps the writable range again, 200 times. Every unmap must unmap it
/// all (type1 would crash the host if pins kept coming back); the pinning
/// thread sees successes, `-EBUSY`/`-EAGAIN` refusals and unmapped pages.
/// Returns with the range mapped and nothing pinned.
fn unmap_race(dev: &Device, buf: &Buffer) -> TestResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rw_len = (RW_PAGES * PAGE) as u64;
    let stop = AtomicBool::new(false);
    let (mut pins, mut refused) = (0u32, 0u32);
    std::thread::scope(|s| -> TestResult {
        let pinner = s.spawn(|| -> Result<(u32, u32), String> {
            let (mut pins, mut refused) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match dma(dev, PIN, IOVA_RW, 1, 0)? {
                    0 => pins += 1,
                    _ => refused += 1,
                }
                let _ = dma(dev, UNPIN, 0, 0, 0)?;
            }
            Ok((pins, refused))
        });
        let mut res = Ok(());
        for round in 0..200 {
            match dev.unmap_dma(IOVA_RW, rw_len) {
                Ok(n) if n == rw_len => {}
                Ok(n) => res = Err(format!("round {round}: unmapped {n} of {rw_len}")),
                Err(e) => res = Err(format!("round {round}: unmap: {e}")),
            }
            if res.is_ok() {
                if let Err(e) = dev.map_dma(IOVA_RW, buf.addr(0), rw_len, true) {
                    res = Err(format!("round {round}: map: {e}"));
                }
            }
            if res.is_err() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        (pins, refused) = pinner.join().map_err(|_| "the pinning thread panicked")??;
        res
    })?;
    let _ = dma(dev, UNPIN, 0, 0, 0)?;
    ensure!(reg(dev, DMA_PINNED)? == 0, "PINNED after the race");
    println!("  unmap race: 200 unmaps, {pins} pins, {refused} refused");
    Ok(())
}

/// The whole sequence on one backend; `open` gives a new user.
fn on_backend(backend: &str, open: &dyn Fn(&Mdev) -> Result<Device, String>) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = open(&m)?;
    let mut buf = Buffer::new((RW_PAGES + 1) * PAGE)?;
    buf.bytes().fill(SENTINEL);
    let rw_len = (RW_PAGES * PAGE) as u64;
    ctx(dev.map_dma(IOVA_RW, buf.addr(0), rw_len, true), "map RW")?;
    ctx(
        dev.map_dma(IOVA_RO, buf.addr(RW_PAGES * PAGE), PAGE as u64, false),
        "map RO",
    )?;
    let mem = pattern(71, m.size());
    ctx(dev.write_at(vfio::BAR2, 0, &mem), "write device memory")?;
    // Unmapped IOVAs: type1 finds no mapping (EINVAL), iommufd no area
    // (ENOENT).
    let unmapped = if backend == "type1" {
        libc::EINVAL
    } else {
        libc::ENOENT
    };

    // Device memory to guest memory, across two page boundaries.
    let (at, off, len) = (4000usize, 100usize, 2 * PAGE + 50);
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_RW + at as u64, len as u32, off as u32),
        0,
        "copy to guest",
    )?;
    let b = buf.bytes();
    ensure!(
        b[at..at + len] == mem[off..off + len],
        "guest memory after the copy differs from the device's"
    );
    ensure!(
        b[..at].iter().chain(&b[at + len..]).all(|&x| x == SENTINEL),
        "the copy wrote outside its range"
    );
    // Guest memory to device memory.
    let page = pattern(72, PAGE);
    buf.bytes()[..PAGE].copy_from_slice(&page);
    expect_dma(
        &dev,
        (FROM_GUEST, IOVA_RW, PAGE as u32, 2 * PAGE as u32),
        0,
        "copy from guest",
    )?;
    let mut got = vec![0u8; PAGE];
    ctx(
        dev.read_at(vfio::BAR2, 2 * PAGE as u64, &mut got),
        "read BAR2",
    )?;
    ensure!(got == page, "device memory after the copy from the guest");
    // Refused: writing a read-only mapping, reaching unmapped IOVAs,
    // a copy past the device memory; nothing written.
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_RO, 16, 0),
        libc::EPERM,
        "write read-only",
    )?;
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_NONE, 16, 0),
        unmapped,
        "write unmapped",
    )?;
    expect_dma(
        &dev,
        (FROM_GUEST, IOVA_NONE, 16, 0),
        unmapped,
        "read unmapped",
    )?;
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_RW, 2 * PAGE as u32, (m.size() - PAGE) as u32),
        libc::EINVAL,
        "copy past the device memory",
    )?;
    // Longer than the sample copies at once (1 MiB), in a device with
    // that much memory: refused before any allocation.
    let big = Mdev::create(TYPES[2].0)?;
    let big_dev = open(&big)?;
    expect_dma(
        &big_dev,
        (TO_GUEST, IOVA_NONE, (64 << 20) + 1, 0),
        libc::EINVAL,
        "a 64 MiB copy",
    )?;
    drop((big_dev, big));
    ensure!(
        buf.bytes()[RW_PAGES * PAGE..]
            .iter()
            .all(|&x| x == SENTINEL),
        "the read-only page was written"
    );

    // Pins: one at a time, reached through the pin.
    expect_dma(&dev, (PIN, IOVA_RW + PAGE as u64, 2, 0), 0, "pin 2 pages")?;
    ensure!(
        reg(&dev, DMA_PINNED)? == 2,
        "PINNED {}",
        reg(&dev, DMA_PINNED)?
    );
    expect_dma(&dev, (PIN, IOVA_RW, 1, 0), libc::EBUSY, "a second pin")?;
    expect_dma(&dev, (TO_PINNED, 0, 5000, 0), 0, "copy into the pin")?;
    ensure!(
        buf.bytes()[PAGE..PAGE + 5000] == mem[..5000],
        "guest memory after the copy through the pin"
    );
    expect_dma(&dev, (UNPIN, 0, 0, 0), 0, "unpin")?;
    ensure!(reg(&dev, DMA_PINNED)? == 0, "PINNED after unpin");
    expect_dma(&dev, (UNPIN, 0, 0, 0), libc::ENOENT, "unpin with no pin")?;
    expect_dma(
        &dev,
        (TO_PINNED, 0, 16, 0),
        libc::ENOENT,
        "copy with no pin",
    )?;
    for (iova, pages, want, what) in [
        (IOVA_RW + 1, 1, libc::EINVAL, "unaligned pin"),
        (IOVA_RW, 0, libc::EINVAL, "pin of 0 pages"),
        (IOVA_RW, 513, libc::EINVAL, "pin of 513 pages"),
        (IOVA_RO, 1, libc::EPERM, "writable pin of a read-only page"),
        (IOVA_NONE, 1, unmapped, "pin of an unmapped page"),
        (
            IOVA_RW + 3 * PAGE as u64,
            2,
            unmapped,
            "pin running past the mapping",
        ),
    ] {
        expect_dma(&dev, (PIN, iova, pages, 0), want, what)?;
        ensure!(reg(&dev, DMA_PINNED)? == 0, "PINNED after a {what}");
    }

    // Dirty logging: a written page once, a page pinned for writing in
    // every report while pinned.
    let size = ctx(
        dev.dma_logging_start(&[(IOVA_RW, rw_len)], PAGE as u64),
        "DMA_LOGGING_START",
    )?;
    ensure!(size == PAGE as u64, "logging page size {size}");
    ensure!(report(&dev)? == 0, "dirty pages before any write");
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_RW + 2 * PAGE as u64 + 5, 10, 0),
        0,
        "logged write",
    )?;
    ensure!(report(&dev)? == 0b0100, "report after a write to page 2");
    ensure!(report(&dev)? == 0, "second report after a write to page 2");
    expect_dma(
        &dev,
        (PIN, IOVA_RW + 3 * PAGE as u64, 1, 0),
        0,
        "pin page 3",
    )?;
    ensure!(report(&dev)? == 0b1000, "report with page 3 pinned");
    ensure!(report(&dev)? == 0b1000, "second report with page 3 pinned");
    expect_dma(&dev, (UNPIN, 0, 0, 0), 0, "unpin page 3")?;
    // Written through the pin since the last report, maybe: reported once
    // more after the unpin.
    ensure!(report(&dev)? == 0b1000, "report after the unpin");
    ensure!(report(&dev)? == 0, "second report after the unpin");
    // A write outside the logged range is not logged; a report of the
    // last page of the address space answers (nothing logged there).
    let top = u64::MAX - (PAGE as u64 - 1);
    expect_dma(
        &dev,
        (TO_GUEST, top, 16, 0),
        unmapped,
        "write at the top of the address space",
    )?;
    if let Ok(bits) = dev.dma_logging_report(top, PAGE as u64 - 1, PAGE as u64) {
        ensure!(bits[0] == 0, "the top page reported dirty");
    }
    ensure!(report(&dev)? == 0, "report after writes outside the range");
    ctx(dev.dma_logging_stop(), "DMA_LOGGING_STOP")?;

    // The user unmaps memory under the device's pin: the device is told,
    // the framework unpins, the unmap succeeds.
    expect_dma(&dev, (PIN, IOVA_RW, RW_PAGES as u32, 0), 0, "pin all")?;
    let unmaps = reg(&dev, DMA_UNMAPS)?;
    let n = ctx(dev.unmap_dma(IOVA_RW, rw_len), "unmap under a pin")?;
    ensure!(n == rw_len, "unmapped {n} bytes of {rw_len}");
    ensure!(reg(&dev, DMA_PINNED)? == 0, "PINNED after the unmap");
    ensure!(
        reg(&dev, DMA_UNMAPS)? == unmaps + 1,
        "the device was not told of the unmap"
    );
    expect_dma(
        &dev,
        (UNPIN, 0, 0, 0),
        libc::ENOENT,
        "unpin after the unmap",
    )?;
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_RW, 16, 0),
        unmapped,
        "write after the unmap",
    )?;

    // Mapped again, the range is pinned at once: an unmap that found only
    // pins made before it fences nothing.
    ctx(dev.map_dma(IOVA_RW, buf.addr(0), rw_len, true), "map again")?;
    expect_dma(&dev, (PIN, IOVA_RW, 2, 0), 0, "pin after mapping again")?;
    ensure!(reg(&dev, DMA_PINNED)? == 2, "PINNED after mapping again");

    // Unmapped again under a pin the device made since the last unmap:
    // on type1, pins into the range wait for the fence (1 s), even with
    // the range mapped again; iommufd needs none.
    let n = ctx(dev.unmap_dma(IOVA_RW, rw_len), "second unmap under a pin")?;
    ensure!(
        n == rw_len,
        "unmapped {n} bytes of {rw_len} the second time"
    );
    ensure!(reg(&dev, DMA_PINNED)? == 0, "PINNED after the second unmap");
    ensure!(
        reg(&dev, DMA_UNMAPS)? == unmaps + 2,
        "the device was not told of the second unmap"
    );
    ctx(
        dev.map_dma(IOVA_RW, buf.addr(0), rw_len, true),
        "map a third time",
    )?;
    if backend == "type1" {
        expect_dma(
            &dev,
            (PIN, IOVA_RW, 2, 0),
            libc::EAGAIN,
            "pin inside the fence",
        )?;
        std::thread::sleep(FENCE + std::time::Duration::from_millis(200));
    }
    expect_dma(&dev, (PIN, IOVA_RW, 2, 0), 0, "pin after the fence")?;
    ensure!(reg(&dev, DMA_PINNED)? == 2, "PINNED after the fence");

    // A user re-pinning from one thread while another unmaps and maps
    // again: every unmap goes through, nothing stays pinned.
    unmap_race(&dev, &buf)?;

    // A reset drops the pin; a close too, and the next user sees neither
    // the pin nor the registers nor the mappings.
    // (The writable range is fenced for a while after the race: these
    // pins use a second mapping of the buffer's first page.)
    ctx(
        dev.map_dma(IOVA_RW2, buf.addr(0), PAGE as u64, true),
        "map a second range",
    )?;
    expect_dma(&dev, (PIN, IOVA_RW2, 1, 0), 0, "pin before reset")?;
    ctx(dev.reset(), "RESET")?;
    ensure!(reg(&dev, DMA_PINNED)? == 0, "PINNED after reset");
    ensure!(reg(&dev, DMA_LEN)? == 0, "DMA_LEN after reset");
    expect_dma(&dev, (PIN, IOVA_RW2, 1, 0), 0, "pin before close")?;
    drop(dev);
    let dev = open(&m)?;
    ensure!(reg(&dev, DMA_PINNED)? == 0, "the next user sees a pin");
    ensure!(
        reg(&dev, DMA_LEN)? == 0 && reg(&dev, DMA_STATUS)? == 0,
        "the next user sees the DMA registers"
    );
    expect_dma(
        &dev,
        (TO_GUEST, IOVA_RW, 16, 0),
        unmapped,
        "the next user reaching the previous user's memory",
    )?;
    println!("  {backend}: copies, refusals, pins, dirty log, unmap under a pin, reset, reopen");
    Ok(())
}

/// The guest-memory API on the type1 container and on iommufd.
pub(crate) fn t_guest_memory(_flags: rmdev_logic::fsm::FlagSet) -> TestResult {
    on_backend("type1", &|m| m.open())?;
    on_backend("iommufd", &|m| {
        ctx(Device::open_cdev(&m.uuid), "open the cdev")
    })
}
