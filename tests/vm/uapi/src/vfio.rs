// SPDX-License-Identifier: GPL-2.0

//! A minimal VFIO client: the group/container path to an mdev's device FD,
//! the device ioctls, the migration features and the data FD ioctl.
//!
//! Every call returns the kernel's errno as an `io::Error`, so tests can
//! assert exact error codes.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

const VFIO_TYPE: u64 = b';' as u64;
const fn io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | nr
}
const SET_IOMMU: u64 = io(102);
const GROUP_GET_STATUS: u64 = io(103);
const GROUP_SET_CONTAINER: u64 = io(104);
const GROUP_GET_DEVICE_FD: u64 = io(106);
pub(crate) const DEVICE_GET_INFO: u64 = io(107);
pub(crate) const DEVICE_GET_REGION_INFO: u64 = io(108);
pub(crate) const DEVICE_GET_IRQ_INFO: u64 = io(109);
pub(crate) const DEVICE_SET_IRQS: u64 = io(110);
const DEVICE_RESET: u64 = io(111);
pub(crate) const DEVICE_FEATURE: u64 = io(117);
pub(crate) const MIG_GET_PRECOPY_INFO: u64 = io(121);
const DEVICE_BIND_IOMMUFD: u64 = io(118);
const DEVICE_ATTACH_IOMMUFD_PT: u64 = io(119);
/// `IOMMU_IOAS_ALLOC` (iommufd's ioctls share VFIO's type, from 0x80).
const IOMMU_IOAS_ALLOC: u64 = io(0x81);

const TYPE1V2_IOMMU: libc::c_ulong = 3;
const GROUP_FLAGS_VIABLE: u32 = 1;

pub(crate) const FEATURE_GET: u32 = 1 << 16;
pub(crate) const FEATURE_SET: u32 = 1 << 17;
pub(crate) const FEATURE_PROBE: u32 = 1 << 18;
pub(crate) const FEATURE_MIGRATION: u32 = 1;
pub(crate) const FEATURE_MIG_DEVICE_STATE: u32 = 2;
pub(crate) const FEATURE_MIG_DATA_SIZE: u32 = 9;

pub(crate) const IRQ_SET_DATA_NONE: u32 = 1;
pub(crate) const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub(crate) const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub(crate) const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub(crate) const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub(crate) const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
pub(crate) const REQ_IRQ_INDEX: u32 = 4;

/// Region indexes of the sample (vfio-pci layout).
pub(crate) const BAR0: u32 = 0;
pub(crate) const BAR2: u32 = 2;
pub(crate) const CONFIG: u32 = 7;

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// `ioctl(fd, req, arg)`; the errno on failure.
///
/// # Safety
///
/// `arg` must be what the kernel expects for `req` (a pointer to a large
/// enough buffer, or an integer).
pub(crate) unsafe fn ioctl(fd: RawFd, req: u64, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: By the function's contract.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `ioctl` with a pointer to `T`.
fn ioctl_with<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a valid, exclusive `T` for the call's duration; the
    // callers pair each request with its structure.
    unsafe { ioctl(fd, req, arg as *mut T as libc::c_ulong) }
}

/// A VFIO feature request: the 8-byte header and a payload.
#[repr(C, align(8))]
struct Feature<const N: usize> {
    argsz: u32,
    flags: u32,
    data: [u8; N],
}

impl<const N: usize> Feature<N> {
    fn new(flags: u32) -> Self {
        Self {
            argsz: (8 + N) as u32,
            flags,
            data: [0; N],
        }
    }
}

/// An open mdev: its device FD and what keeps it usable (container and
/// group, or the iommufd).
pub(crate) struct Device {
    pub(crate) fd: OwnedFd,
    _keep: Vec<OwnedFd>,
}

fn open_rw(path: &str) -> io::Result<OwnedFd> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    Ok(OwnedFd::from(f))
}

impl Device {
    /// Opens the mdev `uuid` through its IOMMU group.
    pub(crate) fn open(uuid: &str) -> io::Result<Device> {
        let link = fs::read_link(format!("/sys/bus/mdev/devices/{uuid}/iommu_group"))?;
        let group_nr = link
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("bad iommu_group link"))?
            .to_string();
        let container = open_rw("/dev/vfio/vfio")?;
        let group = open_rw(&format!("/dev/vfio/{group_nr}"))?;
        let mut status = [8u32, 0u32];
        ioctl_with(group.as_raw_fd(), GROUP_GET_STATUS, &mut status)?;
        if status[1] & GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other("group not viable"));
        }
        let mut cfd: i32 = container.as_raw_fd();
        ioctl_with(group.as_raw_fd(), GROUP_SET_CONTAINER, &mut cfd)?;
        // SAFETY: SET_IOMMU takes an integer.
        unsafe { ioctl(container.as_raw_fd(), SET_IOMMU, TYPE1V2_IOMMU) }?;
        let name = CString::new(uuid).map_err(|_| io::Error::other("bad uuid"))?;
        // SAFETY: GET_DEVICE_FD takes a NUL-terminated string.
        let fd = unsafe { ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD, name.as_ptr() as _) }?;
        Ok(Device {
            // SAFETY: The kernel returned a new descriptor we now own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            _keep: vec![group, container],
        })
    }

    /// Opens the mdev `uuid` through its device cdev
    /// (`/dev/vfio/devices/vfioN`) bound to a new iommufd with an IOAS.
    pub(crate) fn open_cdev(uuid: &str) -> io::Result<Device> {
        let dir = format!("/sys/bus/mdev/devices/{uuid}/vfio-dev");
        let name = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("vfio"))
            .ok_or_else(|| io::Error::other(format!("no vfioN in {dir}")))?;
        let fd = open_rw(&format!("/dev/vfio/devices/{name}"))?;
        let iommufd = open_rw("/dev/iommu")?;
        // struct vfio_device_bind_iommufd: argsz, flags, iommufd, out_devid.
        let mut bind = [16u32, 0, iommufd.as_raw_fd() as u32, 0];
        ioctl_with(fd.as_raw_fd(), DEVICE_BIND_IOMMUFD, &mut bind)?;
        // struct iommu_ioas_alloc: size, flags, out_ioas_id.
        let mut ioas = [12u32, 0, 0];
        ioctl_with(iommufd.as_raw_fd(), IOMMU_IOAS_ALLOC, &mut ioas)?;
        // struct vfio_device_attach_iommufd_pt: argsz, flags, pt_id.
        let mut attach = [12u32, 0, ioas[2]];
        ioctl_with(fd.as_raw_fd(), DEVICE_ATTACH_IOMMUFD_PT, &mut attach)?;
        Ok(Device {
            fd,
            _keep: vec![iommufd],
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `VFIO_DEVICE_FEATURE_MIGRATION`: the flag set.
    pub(crate) fn migration_flags(&self) -> io::Result<u64> {
        let mut f = Feature::<8>::new(FEATURE_GET | FEATURE_MIGRATION);
        ioctl_with(self.raw(), DEVICE_FEATURE, &mut f)?;
        Ok(u64::from_ne_bytes(f.data))
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
    pub(crate) fn data_size(&self) -> io::Result<u64> {
        let mut f = Feature::<8>::new(FEATURE_GET | FEATURE_MIG_DATA_SIZE);
        ioctl_with(self.raw(), DEVICE_FEATURE, &mut f)?;
        Ok(u64::from_ne_bytes(f.data))
    }

    /// A PROBE of `feature`.
    pub(crate) fn probe(&self, feature: u32, get_set: u32) -> io::Result<()> {
        let mut f = Feature::<8>::new(FEATURE_PROBE | get_set | feature);
        ioctl_with(self.raw(), DEVICE_FEATURE, &mut f).map(|_| ())
    }

    /// GET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`.
    pub(crate) fn state(&self) -> io::Result<u32> {
        let mut f = Feature::<8>::new(FEATURE_GET | FEATURE_MIG_DEVICE_STATE);
        ioctl_with(self.raw(), DEVICE_FEATURE, &mut f)?;
        Ok(u32::from_ne_bytes([
            f.data[0], f.data[1], f.data[2], f.data[3],
        ]))
    }

    /// SET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`: the data FD, if any.
    pub(crate) fn set_state(&self, state: u32) -> io::Result<Option<OwnedFd>> {
        let mut f = Feature::<8>::new(FEATURE_SET | FEATURE_MIG_DEVICE_STATE);
        f.data[..4].copy_from_slice(&state.to_ne_bytes());
        f.data[4..].copy_from_slice(&(-1i32).to_ne_bytes());
        ioctl_with(self.raw(), DEVICE_FEATURE, &mut f)?;
        let fd = i32::from_ne_bytes([f.data[4], f.data[5], f.data[6], f.data[7]]);
        // SAFETY: A non-negative data_fd is a new descriptor we now own.
        Ok((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `VFIO_DEVICE_RESET`.
    pub(crate) fn reset(&self) -> io::Result<()> {
        // SAFETY: RESET takes no argument.
        unsafe { ioctl(self.raw(), DEVICE_RESET, 0) }.map(|_| ())
    }

    /// `VFIO_DEVICE_GET_REGION_INFO`: (flags, size, offset).
    pub(crate) fn region(&self, index: u32) -> io::Result<(u32, u64, u64)> {
        let mut info = [0u32; 8];
        info[0] = 32;
        info[2] = index;
        ioctl_with(self.raw(), DEVICE_GET_REGION_INFO, &mut info)?;
        let size = u64::from(info[4]) | (u64::from(info[5]) << 32);
        let offset = u64::from(info[6]) | (u64::from(info[7]) << 32);
        Ok((info[1], size, offset))
    }

    fn file(&self) -> std::mem::ManuallyDrop<fs::File> {
        // SAFETY: A borrowed view of our descriptor, never closed by it.
        std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(self.raw()) })
    }

    /// Reads region `index` at `offset`.
    pub(crate) fn read_at(&self, index: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file()
            .read_exact_at(buf, (u64::from(index) << 40) + offset)
    }

    /// Writes region `index` at `offset`.
    pub(crate) fn write_at(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file()
            .write_all_at(data, (u64::from(index) << 40) + offset)
    }

    pub(crate) fn read_reg(&self, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_at(BAR0, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn write_reg(&self, offset: u64, value: u32) -> io::Result<()> {
        self.write_at(BAR0, offset, &value.to_le_bytes())
    }

    /// A 32-bit read of the configuration space.
    pub(crate) fn config32(&self, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_at(CONFIG, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A 32-bit write of the configuration space.
    pub(crate) fn set_config32(&self, offset: u64, value: u32) -> io::Result<()> {
        self.write_at(CONFIG, offset, &value.to_le_bytes())
    }

    /// `VFIO_DEVICE_SET_IRQS` on the request index with an eventfd (or -1).
    pub(crate) fn set_req_eventfd(&self, efd: i32) -> io::Result<()> {
        self.set_irqs(
            REQ_IRQ_INDEX,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &efd.to_ne_bytes(),
        )
    }

    /// `VFIO_DEVICE_SET_IRQS` with `data` after the header; argsz covers it.
    pub(crate) fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let argsz = 20 + data.len();
        let mut set = vec![0u8; argsz];
        set[0..4].copy_from_slice(&(argsz as u32).to_ne_bytes());
        set[4..8].copy_from_slice(&flags.to_ne_bytes());
        set[8..12].copy_from_slice(&index.to_ne_bytes());
        set[12..16].copy_from_slice(&start.to_ne_bytes());
        set[16..20].copy_from_slice(&count.to_ne_bytes());
        set[20..].copy_from_slice(data);
        // SAFETY: `set` is a SET_IRQS header and its data, as argsz says.
        unsafe {
            ioctl(
                self.raw(),
                DEVICE_SET_IRQS,
                set.as_mut_ptr() as libc::c_ulong,
            )
        }
        .map(|_| ())
    }
}

/// `VFIO_MIG_GET_PRECOPY_INFO` on a save FD: (initial_bytes, dirty_bytes).
pub(crate) fn precopy_info(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let mut info = [0u64; 3];
    info[0] = 24;
    ioctl_with(fd.as_raw_fd(), MIG_GET_PRECOPY_INFO, &mut info)?;
    Ok((info[1], info[2]))
}

/// One `pwrite(2)` into region `index` at `offset`: the count written.
pub(crate) fn pwrite(dev: &Device, index: u32, offset: u64, data: &[u8]) -> io::Result<usize> {
    dev.file().write_at(data, (u64::from(index) << 40) + offset)
}

/// One `read(2)` on a data FD.
pub(crate) fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// One `write(2)` on a data FD.
pub(crate) fn write_fd(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for `data.len()` bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// `poll(2)` for `events` on one FD; the returned events.
pub(crate) fn poll_fd(fd: RawFd, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: One valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(p.revents)
    }
}
