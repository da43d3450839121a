// SPDX-License-Identifier: GPL-2.0

//! Tools for the rmdev_igbvf tests (`tests/vm/t-igbvf.sh`): 32-bit accesses
//! to a VF's own BAR0 through its sysfs `resource0` (the hardware, seen
//! around the mdev), region accesses through an mdev's VFIO device, a whole
//! migration between two mdevs by the tool's engine, a load that says
//! where a stream was refused, and a user that holds an mdev open (with a
//! migration session) until the kernel asks for it back.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;

use rmdev_logic::fsm::State;

use super::{ctx, load_into, new_eventfd, TestResult};
use rmdev::migrate::{self, NoProgress, Options};
use rmdev::vfio::{self, Device};

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}': {e}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_u64(s)?).map_err(|e| format!("'{s}': {e}"))
}

/// A VF's BAR0, mapped from `/sys/bus/pci/devices/<pci>/resource0`.
pub(crate) struct HwBar {
    ptr: *mut u8,
    len: usize,
}

impl HwBar {
    pub(crate) fn map(pci: &str) -> Result<HwBar, String> {
        let path = format!("/sys/bus/pci/devices/{pci}/resource0");
        let f = ctx(OpenOptions::new().read(true).write(true).open(&path), &path)?;
        let len = ctx(f.metadata(), "stat resource0")?.len() as usize;
        // SAFETY: A shared mapping of the whole resource file; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(HwBar {
            ptr: ptr.cast(),
            len,
        })
    }

    fn at(&self, offset: u64) -> Result<*mut u32, String> {
        let off = offset as usize;
        if off % 4 != 0 || off + 4 > self.len {
            return Err(format!(
                "offset {offset:#x} outside the {}-byte BAR",
                self.len
            ));
        }
        // SAFETY: In bounds and aligned (checked above).
        Ok(unsafe { self.ptr.add(off) }.cast())
    }

    pub(crate) fn read(&self, offset: u64) -> Result<u32, String> {
        // SAFETY: A mapped, aligned register (`at`); volatile: device memory.
        Ok(unsafe { self.at(offset)?.read_volatile() })
    }

    fn write(&self, offset: u64, value: u32) -> TestResult {
        // SAFETY: As in `read`.
        unsafe { self.at(offset)?.write_volatile(value) };
        Ok(())
    }
}

impl Drop for HwBar {
    fn drop(&mut self) {
        // SAFETY: Mapped in `map` with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `vf-read PCI OFFSET`: prints the VF's register, read from the hardware.
pub(crate) fn vf_read(pci: &str, offset: &str) -> TestResult {
    let v = HwBar::map(pci)?.read(parse_u64(offset)?)?;
    println!("{v:#010x}");
    Ok(())
}

/// `vf-write PCI OFFSET VALUE`: writes the VF's register in the hardware.
pub(crate) fn vf_write(pci: &str, offset: &str, value: &str) -> TestResult {
    HwBar::map(pci)?.write(parse_u64(offset)?, parse_u32(value)?)
}

/// `region-read UUID INDEX OFFSET`: a 32-bit read of the mdev's region.
pub(crate) fn region_read(uuid: &str, index: &str, offset: &str) -> TestResult {
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    let mut b = [0u8; 4];
    ctx(
        dev.read_at(parse_u32(index)?, parse_u64(offset)?, &mut b),
        "read region",
    )?;
    println!("{:#010x}", u32::from_le_bytes(b));
    Ok(())
}

/// `region-write UUID INDEX OFFSET VALUE`: a 32-bit write of the region.
pub(crate) fn region_write(uuid: &str, index: &str, offset: &str, value: &str) -> TestResult {
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    ctx(
        dev.write_at(
            parse_u32(index)?,
            parse_u64(offset)?,
            &parse_u32(value)?.to_le_bytes(),
        ),
        "write region",
    )
}

/// `migrate-mdev SRC DST`: a migration between two mdevs by the tool's
/// engine (`rmdev::migrate`), the sequence `rmdev migrate` runs; the
/// source back to RUNNING afterwards. Prints the stream size.
pub(crate) fn migrate_mdev(src: &str, dst: &str) -> TestResult {
    let s = ctx(Device::open(src), &format!("open {src}"))?;
    let d = ctx(Device::open(dst), &format!("open {dst}"))?;
    let sum =
        migrate::migrate(&s, &d, &Options::default(), &NoProgress).map_err(|e| e.to_string())?;
    ctx(s.set_state(vfio::state::RUNNING), "SET RUNNING (source)")?;
    println!(
        "{} stream bytes ({})",
        sum.bytes,
        vfio::flags_name(sum.flags)
    );
    Ok(())
}

/// `load-mdev UUID FILE`: loads FILE into the mdev, saying at which write
/// (64 KiB each) or SET it was refused.
pub(crate) fn load_mdev(uuid: &str, file: &str) -> TestResult {
    let stream = ctx(std::fs::read(file), "read file")?;
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    load_into(&dev, &stream)
}

/// `hold UUID STATE`: opens the mdev, registers the request eventfd, moves
/// it to STATE (keeping the data FD of a session state), prints `holding`
/// and waits up to 300 s for the kernel's release request; then closes
/// everything and prints `released on request`. Exits non-zero if no
/// request came.
pub(crate) fn hold(uuid: &str, state: &str) -> TestResult {
    let state = State::from_name(state).ok_or_else(|| format!("unknown state '{state}'"))?;
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    let efd = new_eventfd()?;
    ctx(dev.set_req_eventfd(efd.as_raw_fd()), "SET_IRQS request")?;
    let data = if state == State::Running {
        None
    } else {
        ctx(dev.set_state(state.raw()), &format!("SET {state}"))?
    };
    println!("holding {uuid} in {state} (data FD: {})", data.is_some());
    let _ = std::io::stdout().flush();
    let revents = ctx(
        vfio::poll_fd(efd.as_raw_fd(), libc::POLLIN, 300_000),
        "poll",
    )?;
    if revents & libc::POLLIN == 0 {
        return Err("no release request within 300 s".into());
    }
    drop(data);
    drop(dev);
    println!("released on request");
    Ok(())
}
