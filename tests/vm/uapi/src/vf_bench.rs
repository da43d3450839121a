// SPDX-License-Identifier: GPL-2.0

//! `make bench`'s cost of the mediation: frames sent through
//! `rmdev_igbvf`'s shadowed transmit queue against the same driver on a
//! VF passed through whole (vfio-pci), in one boot.
//!
//! One driver for both: this process programs transmit queue 0 as a guest
//! driver does (a ring of advanced descriptors in its own memory, the tail
//! doorbell written through the device FD's BAR0 region) and sends
//! batches of prebuilt frames to the PF's MAC address, which QEMU's igb
//! switches to the PF, where an `AF_PACKET` socket counts what arrives. The
//! two paths differ only where the hardware must: the mdev's memory is
//! mapped into its type1 container at fixed IOVAs; the VF passed through
//! is in vfio-pci's no-IOMMU mode (the lab VM has no virtual IOMMU), so
//! the memory is locked and the device gets its physical addresses
//! (`/proc/self/pagemap`), and the driver resets the VF and makes the
//! `VF_RESET` handshake with the PF itself (on the mdev the vendor did it
//! at open), without which the PF keeps the VF's transmit pool disabled.
//!
//! Each round sends for a fixed time, then waits until the capture is
//! idle. A figure counts the frames that arrived on the PF, which drops
//! what comes faster than it receives (a VF passed through sends faster
//! than the lab's PF takes in), and those the VF completed (`sent`).
//! Rounds of the two paths and of the two frame sizes (60 bytes: frames
//! per second; 1514 bytes: bytes per second) take turns, so the machine's
//! drifts weigh on each alike; `rmdev-bench report` takes the median of
//! each round's ratio.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmdev::vfio::Device;

use super::guest_memory::Buffer;
use super::vf_traffic::{
    frame, mac_of, map, packet_socket, program_tx, read_reg, set_recv_timeout, set_socket_opt,
    tx_desc, write_reg, DD, DEXT, DTYP_DATA, EOP, ETHERTYPE, IFCS, IOVA_BUFS, IOVA_RING, MAP_LEN,
    MBX_PFACK, MBX_PFSTS, MBX_REQ, MBX_VFU, MSG_ACK, MSG_NACK, RING_DESCS, RS, SLOT, TDT,
    V2PMAILBOX, VF_RESET, VMBMEM,
};
use super::{ctx, TestResult, PAGE};

/// Frames a doorbell hands over (half the ring: a full ring would need
/// one descriptor kept free, and halves keep the slots simple).
const BATCH: u32 = RING_DESCS / 2;
/// How long a round sends.
const ROUND: Duration = Duration::from_millis(1500);
/// The capture is idle when nothing came for this long.
const IDLE: Duration = Duration::from_millis(300);
/// CTRL and its function-reset bit; the mailbox's ACK (the VF read the
/// reply) and reset bits.
const CTRL: u64 = 0x0000;
const CTRL_RST: u32 = 1 << 26;
const MBX_ACK: u32 = 1 << 1;
const MBX_RSTI: u32 = 1 << 6;
const MBX_RSTD: u32 = 1 << 7;
/// PCI_COMMAND and its memory-space and bus-master bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u32 = 1 << 1;
const PCI_COMMAND_MASTER: u32 = 1 << 2;

// `Path::Mdev`'s addresses: `map` puts the frames' pages right after the
// ring's.
const _: () = assert!(IOVA_BUFS == IOVA_RING + PAGE as u64);

/// Which way the device reaches this process's memory.
enum Path {
    /// The mdev's type1 container: the buffer mapped at `IOVA_RING` (the
    /// ring's page, then the frames' at `IOVA_BUFS`, right after it).
    Mdev,
    /// No IOMMU: the physical address of each page of the buffer.
    Physical(Vec<u64>),
}

/// One device and its queue: the ring in the buffer's first page, frame
/// slot `i` at `PAGE + i * SLOT`.
struct Tx {
    name: &'static str,
    dev: Device,
    mem: Buffer,
    path: Path,
    tail: u32,
}

impl Tx {
    /// The address the device uses for `offset` in the buffer.
    fn dma_addr(&self, offset: usize) -> u64 {
        match &self.path {
            Path::Mdev => IOVA_RING + offset as u64,
            Path::Physical(pages) => pages[offset / PAGE] + (offset % PAGE) as u64,
        }
    }

    /// Programs transmit queue 0 (disabled first), head and tail 0.
    fn program(&mut self) -> TestResult {
        program_tx(&self.dev, self.dma_addr(0))?;
        self.tail = 0;
        Ok(())
    }

    /// Puts frame `f` in every slot (each frame within one page).
    fn fill(&mut self, f: &[u8]) {
        for slot in 0..RING_DESCS as usize {
            self.mem.write(PAGE + slot * SLOT, f);
        }
    }

    /// Hands over `BATCH` frames of `len` bytes with one doorbell and
    /// waits until the device completed the last.
    fn batch(&mut self, len: usize) -> TestResult {
        let first = self.tail;
        for _ in 0..BATCH {
            let i = self.tail;
            let addr = self.dma_addr(PAGE + i as usize * SLOT);
            let cmd = len as u32 | DTYP_DATA | DEXT | IFCS | EOP | RS;
            self.mem
                .write(i as usize * 16, &tx_desc(addr, cmd, (len as u32) << 14));
            self.tail = (self.tail + 1) % RING_DESCS;
        }
        write_reg(&self.dev, TDT, self.tail)?;
        let last = (first + BATCH - 1) % RING_DESCS;
        let start = Instant::now();
        while self.mem.load32(last as usize * 16 + 12) & DD == 0 {
            ensure!(
                start.elapsed() < Duration::from_secs(2),
                "{}: descriptor {last} not done after 2 s",
                self.name
            );
            std::hint::spin_loop();
        }
        Ok(())
    }
}

/// The mdev `uuid`, its memory mapped into its container.
fn open_mdev(uuid: &str) -> Result<Tx, String> {
    let dev = ctx(Device::open(uuid), "open the mdev")?;
    let mem = Buffer::new(MAP_LEN)?;
    map(&dev, &mem, false)?;
    Ok(Tx {
        name: "mdev",
        dev,
        mem,
        path: Path::Mdev,
        tail: 0,
    })
}

/// The physical address of each page of `mem`, locked in memory first
/// (and kept out of transparent huge pages, which would move it).
fn lock_physical(mem: &Buffer) -> Result<Vec<u64>, String> {
    let (addr, len) = (mem.addr(0), MAP_LEN);
    // SAFETY: The buffer's own mapping, `len` bytes from `addr`.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
    // EINVAL: a kernel without transparent huge pages (the lab's).
    let e = std::io::Error::last_os_error();
    ensure!(
        r == 0 || e.raw_os_error() == Some(libc::EINVAL),
        "madvise: {e}"
    );
    // Touch every page, then lock it: it stays at its physical address
    // (the bench's script turns off compaction of locked pages).
    for p in 0..len / PAGE {
        mem.write(p * PAGE, &[0]);
    }
    // SAFETY: As above.
    let r = unsafe { libc::mlock(addr as *const libc::c_void, len) };
    ensure!(r == 0, "mlock: {}", std::io::Error::last_os_error());
    physical_pages(mem)
}

/// The physical address of each page of `mem` (`/proc/self/pagemap`).
fn physical_pages(mem: &Buffer) -> Result<Vec<u64>, String> {
    let (addr, len) = (mem.addr(0), MAP_LEN);
    let pagemap = ctx(
        std::fs::File::open("/proc/self/pagemap"),
        "/proc/self/pagemap",
    )?;
    let mut pages = Vec::new();
    for p in 0..len / PAGE {
        let mut e = [0u8; 8];
        let at = (addr / PAGE as u64 + p as u64) * 8;
        ctx(
            std::os::unix::fs::FileExt::read_exact_at(&pagemap, &mut e, at),
            "read /proc/self/pagemap",
        )?;
        let e = u64::from_le_bytes(e);
        let pfn = e & ((1 << 55) - 1);
        ensure!(
            e & (1 << 63) != 0 && pfn != 0,
            "page {p} of the buffer: no physical address in the page map ({e:#x})"
        );
        pages.push(pfn * PAGE as u64);
    }
    Ok(pages)
}

/// Resets the VF and makes the `VF_RESET` handshake with its PF, as
/// `vendors/igbvf/mailbox.rs` does for the mdev.
fn vf_reset(dev: &Device) -> TestResult {
    write_reg(dev, CTRL, CTRL_RST)?;
    let mut seen = 0;
    let bits = |dev: &Device, seen: &mut u32| -> Result<u32, String> {
        let v = read_reg(dev, V2PMAILBOX)?;
        // PFSTS, PFACK and RSTD clear when read: keep what was seen.
        *seen |= v & (MBX_PFSTS | MBX_PFACK | MBX_RSTD);
        Ok(v | *seen)
    };
    let wait = |what: &str, cond: &mut dyn FnMut() -> Result<bool, String>| -> TestResult {
        let start = Instant::now();
        while !cond()? {
            ensure!(
                start.elapsed() < Duration::from_secs(2),
                "the VF's reset: no {what} from the PF after 2 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    };
    // The PF sees the reset and resets the VF's state; no message may go
    // before it completed.
    std::thread::sleep(Duration::from_millis(1));
    wait("end of the reset", &mut || {
        let b = bits(dev, &mut seen)?;
        seen &= !(MBX_RSTI | MBX_RSTD);
        Ok(b & (MBX_RSTI | MBX_RSTD) == 0)
    })?;
    let lock = |seen: &mut u32| -> TestResult {
        for _ in 0..10 {
            write_reg(dev, V2PMAILBOX, MBX_VFU)?;
            if bits(dev, seen)? & MBX_VFU != 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err("the VF's mailbox: the buffer stays the PF's".into())
    };
    lock(&mut seen)?;
    // Stale acknowledgements would answer this message.
    seen &= !(MBX_PFSTS | MBX_PFACK);
    write_reg(dev, VMBMEM, VF_RESET)?;
    write_reg(dev, V2PMAILBOX, MBX_REQ)?;
    wait("acknowledgement", &mut || {
        Ok(bits(dev, &mut seen)? & MBX_PFACK != 0)
    })?;
    wait("reply", &mut || Ok(bits(dev, &mut seen)? & MBX_PFSTS != 0))?;
    lock(&mut seen)?;
    let w0 = read_reg(dev, VMBMEM)?;
    write_reg(dev, V2PMAILBOX, MBX_ACK)?;
    ensure!(
        w0 == VF_RESET | MSG_ACK || w0 == VF_RESET | MSG_NACK,
        "the PF's reply to VF_RESET: {w0:#x}"
    );
    Ok(())
}

/// The VF `bdf`, bound to vfio-pci in no-IOMMU mode, reset and ready.
fn open_passthrough(bdf: &str) -> Result<Tx, String> {
    let dev = ctx(
        Device::open_pci_noiommu(bdf),
        &format!("open {bdf} (vfio-pci, no IOMMU)"),
    )?;
    let cmd = ctx(dev.config32(PCI_COMMAND), "read PCI_COMMAND")?;
    // The command word alone: the status word above it clears the bits
    // written as 1.
    ctx(
        dev.set_config32(
            PCI_COMMAND,
            (cmd & 0xffff) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        ),
        "enable memory and bus mastering",
    )?;
    vf_reset(&dev)?;
    let mem = Buffer::new(MAP_LEN)?;
    let pages = lock_physical(&mem)?;
    Ok(Tx {
        name: "vfio-pci",
        dev,
        mem,
        path: Path::Physical(pages),
        tail: 0,
    })
}

/// What the capture thread counted.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    /// When the thread last read a frame, in µs since the counter's epoch.
    last_us: AtomicU64,
    stop: AtomicBool,
}

/// Counts the test's frames arriving on the PF, in a thread of its own.
struct Counter {
    fd: Arc<OwnedFd>,
    counts: Arc<Counts>,
    epoch: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    fn start(pf_if: &str) -> Result<Counter, String> {
        let fd = packet_socket(pf_if, ETHERTYPE)?;
        set_socket_opt(&fd, libc::SO_RCVBUFFORCE, &(32i32 << 20))?;
        set_recv_timeout(&fd, 100)?;
        let fd = Arc::new(fd);
        let counts = Arc::new(Counts::default());
        let epoch = Instant::now();
        let (c, sock) = (counts.clone(), fd.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !c.stop.load(Ordering::Relaxed) {
                // SAFETY: `buf` is writable for its length.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    c.frames.fetch_add(1, Ordering::Relaxed);
                    c.last_us
                        .store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Counter {
            fd,
            counts,
            epoch,
            thread: Some(thread),
        })
    }

    /// Waits until the thread read nothing for `IDLE`; the frames it
    /// read so far.
    fn settle(&self) -> u64 {
        let c = &self.counts;
        loop {
            let last = Duration::from_micros(c.last_us.load(Ordering::Relaxed));
            if self.epoch.elapsed() > last + IDLE {
                return c.frames.load(Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The frames the socket dropped (its buffer full: they reached the
    /// PF's netdev, the thread did not read them) since the last call.
    fn socket_drops(&self) -> Result<u64, String> {
        // struct tpacket_stats: packets, drops; reading resets them.
        let mut st = [0u32; 2];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes, which the kernel
        // writes at most.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        ensure!(
            r == 0,
            "PACKET_STATISTICS: {}",
            std::io::Error::last_os_error()
        );
        Ok(u64::from(st[1]))
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.counts.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A counter of the PF's netdev (`/sys/class/net/IF/statistics/NAME`).
fn pf_stat(pf_if: &str, name: &str) -> Result<u64, String> {
    let path = format!("/sys/class/net/{pf_if}/statistics/{name}");
    let v = ctx(std::fs::read_to_string(&path), &path)?;
    v.trim().parse().map_err(|e| format!("{path}: {e}"))
}

/// Round `n`: frames of `len` bytes through `tx` for `ROUND`; prints the
/// figure's JSON line.
fn round(
    tx: &mut Tx,
    counter: &Counter,
    n: u32,
    len: usize,
    dst: &[u8; 6],
    pf_if: &str,
) -> TestResult {
    tx.fill(&frame(dst, 0, len));
    let read0 = counter.settle();
    counter.socket_drops()?;
    let (rx0, missed0) = (
        pf_stat(pf_if, "rx_packets")?,
        pf_stat(pf_if, "rx_missed_errors")?,
    );
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < ROUND {
        tx.batch(len)?;
        sent += u64::from(BATCH);
    }
    let seconds = start.elapsed().as_secs_f64();
    let read = counter.settle() - read0;
    let drops = counter.socket_drops()?;
    let (rx, missed) = (
        pf_stat(pf_if, "rx_packets")? - rx0,
        pf_stat(pf_if, "rx_missed_errors")? - missed0,
    );
    // What reached the PF's netdev: read by the capture thread, or
    // dropped by its socket. The PF itself may drop what comes faster
    // than it receives (rx_missed_errors); that nothing arrived is a
    // failure.
    let frames = read + drops;
    ensure!(
        frames > 0 && frames <= sent,
        "{}: {sent} frames of {len} bytes sent, {frames} arrived on the PF",
        tx.name
    );
    println!(
        "{{\"figure\": \"vf-tx\", \"round\": {n}, \"path\": \"{}\", \"frame_bytes\": {len}, \
         \"sent\": {sent}, \"frames\": {frames}, \"bytes\": {}, \"socket_drops\": {drops}, \
         \"pf_rx_packets\": {rx}, \"pf_rx_missed\": {missed}, \"seconds\": {seconds:.6}}}",
        tx.name,
        frames * len as u64
    );
    Ok(())
}

/// `vf-bench MDEV BDF PF_IF ROUNDS`: frames through the mdev `MDEV` and
/// through the VF `BDF` on vfio-pci, counted on `PF_IF`, `ROUNDS` rounds
/// of each path and frame size; one JSON line per round.
pub(crate) fn vf_bench(mdev: &str, bdf: &str, pf_if: &str, rounds: &str) -> TestResult {
    let rounds: u32 = rounds
        .parse()
        .map_err(|e| format!("rounds {rounds}: {e}"))?;
    let dst = mac_of(pf_if)?;
    let counter = Counter::start(pf_if)?;
    let mut paths = [open_mdev(mdev)?, open_passthrough(bdf)?];
    for tx in &mut paths {
        tx.program()?;
    }
    for n in 0..rounds {
        for len in [60, 1514] {
            for tx in &mut paths {
                round(tx, &counter, n, len, &dst, pf_if)?;
            }
        }
    }
    // The pages the device was given are still where they were.
    for tx in &paths {
        if let Path::Physical(pages) = &tx.path {
            ensure!(
                &physical_pages(&tx.mem)? == pages,
                "{}: the locked buffer moved during the rounds",
                tx.name
            );
        }
    }
    Ok(())
}
