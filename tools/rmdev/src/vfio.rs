// SPDX-License-Identifier: GPL-2.0

//! The project's one VFIO client: the group/container (or iommufd cdev)
//! path to an mdev's device FD, the device ioctls, the migration features
//! and the migration data FDs.
//!
//! The uAPI's structures and constants come from rust-vmm's
//! `vfio-bindings`; only the ioctl numbers (C macros, which bindgen cannot
//! translate) are computed here from its `VFIO_TYPE` and `VFIO_BASE`. Every
//! call returns the kernel's errno as an `io::Error`, so callers (and the
//! in-VM tests) see exact error codes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use vfio_bindings::bindings::vfio as uapi;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO's ioctls carry no size or
/// direction bits.
const fn vfio_io(n: u32) -> u64 {
    ((uapi::VFIO_TYPE as u64) << 8) | (uapi::VFIO_BASE + n) as u64
}

/// `VFIO_GET_API_VERSION`.
pub const GET_API_VERSION: u64 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION`.
pub const CHECK_EXTENSION: u64 = vfio_io(1);
/// `VFIO_SET_IOMMU`.
pub const SET_IOMMU: u64 = vfio_io(2);
/// `VFIO_GROUP_GET_STATUS`.
pub const GROUP_GET_STATUS: u64 = vfio_io(3);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// `VFIO_GROUP_GET_DEVICE_FD`.
pub const GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
/// `VFIO_DEVICE_GET_INFO`.
pub const DEVICE_GET_INFO: u64 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub const DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub const DEVICE_SET_IRQS: u64 = vfio_io(10);
/// `VFIO_DEVICE_RESET`.
pub const DEVICE_RESET: u64 = vfio_io(11);
/// `VFIO_DEVICE_FEATURE`.
pub const DEVICE_FEATURE: u64 = vfio_io(17);
/// `VFIO_DEVICE_BIND_IOMMUFD`.
pub const DEVICE_BIND_IOMMUFD: u64 = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const DEVICE_ATTACH_IOMMUFD_PT: u64 = vfio_io(19);
/// `VFIO_MIG_GET_PRECOPY_INFO`.
pub const MIG_GET_PRECOPY_INFO: u64 = vfio_io(21);
/// `VFIO_IOMMU_MAP_DMA`.
pub const IOMMU_MAP_DMA: u64 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA`.
pub const IOMMU_UNMAP_DMA: u64 = vfio_io(14);
/// `IOMMU_IOAS_ALLOC` (iommufd's ioctls share VFIO's type, from 0x80; not
/// in `vfio-bindings`, which covers `vfio.h` only).
const IOMMU_IOAS_ALLOC: u64 = ((uapi::VFIO_TYPE as u64) << 8) | 0x81;
/// `IOMMU_IOAS_MAP`.
const IOMMU_IOAS_MAP: u64 = ((uapi::VFIO_TYPE as u64) << 8) | 0x85;
/// `IOMMU_IOAS_UNMAP`.
const IOMMU_IOAS_UNMAP: u64 = ((uapi::VFIO_TYPE as u64) << 8) | 0x86;

/// `struct iommu_ioas_map` (`include/uapi/linux/iommufd.h`).
#[repr(C)]
#[derive(Default)]
struct IoasMap {
    size: u32,
    flags: u32,
    ioas_id: u32,
    reserved: u32,
    user_va: u64,
    length: u64,
    iova: u64,
}

/// `struct iommu_ioas_unmap`.
#[repr(C)]
#[derive(Default)]
struct IoasUnmap {
    size: u32,
    ioas_id: u32,
    iova: u64,
    length: u64,
}

/// `IOMMU_IOAS_MAP_FIXED_IOVA`, `_WRITEABLE`, `_READABLE`.
const IOAS_MAP_FIXED_IOVA: u32 = 1;
const IOAS_MAP_WRITEABLE: u32 = 2;
const IOAS_MAP_READABLE: u32 = 4;

/// The size of Linux 6.12's `vfio_device_bind_iommufd`, which ends at
/// `out_devid` (the bindings carry a newer, larger structure; 6.12 refuses
/// no larger argsz, but tells only what it knows).
const BIND_IOMMUFD_ARGSZ: u32 =
    (std::mem::offset_of!(uapi::vfio_device_bind_iommufd, out_devid) + 4) as u32;
/// The size of Linux 6.12's `vfio_device_attach_iommufd_pt`, which ends at
/// `pt_id`.
const ATTACH_IOMMUFD_PT_ARGSZ: u32 =
    (std::mem::offset_of!(uapi::vfio_device_attach_iommufd_pt, pt_id) + 4) as u32;

/// `VFIO_DEVICE_FEATURE_GET`.
pub const FEATURE_GET: u32 = uapi::VFIO_DEVICE_FEATURE_GET;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const FEATURE_SET: u32 = uapi::VFIO_DEVICE_FEATURE_SET;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const FEATURE_PROBE: u32 = uapi::VFIO_DEVICE_FEATURE_PROBE;
/// `VFIO_DEVICE_FEATURE_MIGRATION`.
pub const FEATURE_MIGRATION: u32 = uapi::VFIO_DEVICE_FEATURE_MIGRATION;
/// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`.
pub const FEATURE_MIG_DEVICE_STATE: u32 = uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
pub const FEATURE_MIG_DATA_SIZE: u32 = uapi::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`.
pub const FEATURE_DMA_LOGGING_START: u32 = uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`.
pub const FEATURE_DMA_LOGGING_STOP: u32 = uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP;
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`.
pub const FEATURE_DMA_LOGGING_REPORT: u32 = uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT;

/// `VFIO_MIGRATION_STOP_COPY`.
pub const MIGRATION_STOP_COPY: u64 = uapi::VFIO_MIGRATION_STOP_COPY as u64;
/// `VFIO_MIGRATION_P2P`.
pub const MIGRATION_P2P: u64 = uapi::VFIO_MIGRATION_P2P as u64;
/// `VFIO_MIGRATION_PRE_COPY`.
pub const MIGRATION_PRE_COPY: u64 = uapi::VFIO_MIGRATION_PRE_COPY as u64;

/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = uapi::VFIO_IRQ_SET_DATA_NONE;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const IRQ_SET_DATA_BOOL: u32 = uapi::VFIO_IRQ_SET_DATA_BOOL;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = uapi::VFIO_IRQ_SET_DATA_EVENTFD;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = uapi::VFIO_IRQ_SET_ACTION_MASK;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = uapi::VFIO_IRQ_SET_ACTION_UNMASK;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = uapi::VFIO_IRQ_SET_ACTION_TRIGGER;
/// `VFIO_PCI_REQ_IRQ_INDEX`.
pub const REQ_IRQ_INDEX: u32 = uapi::VFIO_PCI_REQ_IRQ_INDEX;

/// Region index of BAR0 (vfio-pci layout).
pub const BAR0: u32 = uapi::VFIO_PCI_BAR0_REGION_INDEX;
/// Region index of BAR2.
pub const BAR2: u32 = uapi::VFIO_PCI_BAR2_REGION_INDEX;
/// Region index of the configuration space.
pub const CONFIG: u32 = uapi::VFIO_PCI_CONFIG_REGION_INDEX;

/// The uAPI's device states (`enum vfio_device_mig_state`).
pub mod state {
    use super::uapi;
    /// `VFIO_DEVICE_STATE_ERROR`.
    pub const ERROR: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR;
    /// `VFIO_DEVICE_STATE_STOP`.
    pub const STOP: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP;
    /// `VFIO_DEVICE_STATE_RUNNING`.
    pub const RUNNING: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING;
    /// `VFIO_DEVICE_STATE_STOP_COPY`.
    pub const STOP_COPY: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY;
    /// `VFIO_DEVICE_STATE_RESUMING`.
    pub const RESUMING: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING;
    /// `VFIO_DEVICE_STATE_RUNNING_P2P`.
    pub const RUNNING_P2P: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P;
    /// `VFIO_DEVICE_STATE_PRE_COPY`.
    pub const PRE_COPY: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY;
    /// `VFIO_DEVICE_STATE_PRE_COPY_P2P`.
    pub const PRE_COPY_P2P: u32 = uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// `ioctl(fd, req, arg)`; the errno on failure.
///
/// # Safety
///
/// `arg` must be what the kernel expects for `req` (a pointer to a large
/// enough buffer, or an integer).
pub unsafe fn ioctl(fd: RawFd, req: u64, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: By the function's contract.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `ioctl` with a pointer to `T`.
///
/// # Safety
///
/// `T` must be the structure the kernel reads and writes for `req`, with
/// any size field in it telling no more than `size_of::<T>()`.
unsafe fn ioctl_with<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a valid, exclusive `T` for the call's duration, and
    // by the function's contract the kernel accesses no more than a `T`.
    unsafe { ioctl(fd, req, arg as *mut T as libc::c_ulong) }
}

/// A `VFIO_DEVICE_FEATURE` request: the uAPI header, then the feature's
/// own structure.
#[repr(C)]
struct Feature<T> {
    hdr: uapi::vfio_device_feature,
    data: T,
}

impl<T: Default> Feature<T> {
    fn new(flags: u32) -> Self {
        Self {
            hdr: uapi::vfio_device_feature {
                argsz: size_of::<Self>() as u32,
                flags,
                ..Default::default()
            },
            data: T::default(),
        }
    }
}

/// Where a device's user maps its memory for the device to reach.
#[derive(Clone, Copy, Debug)]
enum IommuCtx {
    /// A type1 container (the FD is in `Device::_keep`).
    Container(RawFd),
    /// An iommufd (in `_keep`) and the IOAS the device is attached to.
    Iommufd { fd: RawFd, ioas: u32 },
    /// A no-IOMMU container: the device reaches physical addresses, and
    /// nothing is mapped for it.
    NoIommu,
}

/// An open VFIO device (an mdev; for a benchmark's reference, a PCI
/// function on vfio-pci): its device FD and what keeps it usable
/// (container and group, or the iommufd).
pub struct Device {
    /// The device FD.
    pub fd: OwnedFd,
    _keep: Vec<OwnedFd>,
    iommu: IommuCtx,
    /// Region index → its offset in the device FD, as the kernel's region
    /// info gives it (asked once per region, on first use).
    offsets: Mutex<BTreeMap<u32, u64>>,
}

/// The IOMMU group number of the device whose sysfs directory is `dir`.
fn group_of(dir: &Path) -> io::Result<String> {
    let link = fs::read_link(dir.join("iommu_group"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::other("bad iommu_group link"))
}

fn open_rw(path: &str) -> io::Result<OwnedFd> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    Ok(OwnedFd::from(f))
}

impl Device {
    /// Opens the mdev `uuid` through its IOMMU group, under `/sys/bus/mdev`.
    pub fn open(uuid: &str) -> io::Result<Device> {
        Self::open_in(Path::new("/sys/bus/mdev/devices"), uuid)
    }

    /// Opens the mdev `uuid` whose sysfs directory is in `devices` (the
    /// device nodes are always the host's `/dev/vfio`).
    pub fn open_in(devices: &Path, uuid: &str) -> io::Result<Device> {
        let group_nr = group_of(&devices.join(uuid))?;
        Self::open_group(
            &format!("/dev/vfio/{group_nr}"),
            uuid,
            uapi::VFIO_TYPE1v2_IOMMU,
        )
    }

    /// Opens the PCI function `bdf` (`0000:00:0b.1`), bound to vfio-pci in
    /// the kernel's no-IOMMU mode (`vfio.enable_unsafe_noiommu_mode`):
    /// the device reaches physical memory, [`Device::map_dma`] is refused
    /// (`EINVAL`), and the user hands it physical addresses of memory it
    /// locked. Needs `CAP_SYS_RAWIO`; taints the kernel. For a benchmark's
    /// reference on a lab VM without a virtual IOMMU, nothing else.
    pub fn open_pci_noiommu(bdf: &str) -> io::Result<Device> {
        let group_nr = group_of(&Path::new("/sys/bus/pci/devices").join(bdf))?;
        Self::open_group(
            &format!("/dev/vfio/noiommu-{group_nr}"),
            bdf,
            uapi::VFIO_NOIOMMU_IOMMU,
        )
    }

    /// Opens device `name` of the group at `group_path` in a new container
    /// of IOMMU type `iommu_type`.
    fn open_group(group_path: &str, name: &str, iommu_type: u32) -> io::Result<Device> {
        let container = open_rw("/dev/vfio/vfio")?;
        // SAFETY: GET_API_VERSION takes no argument.
        let api = unsafe { ioctl(container.as_raw_fd(), GET_API_VERSION, 0) }?;
        if api != uapi::VFIO_API_VERSION as i32 {
            return Err(io::Error::other(format!(
                "VFIO API version {api}, not {}",
                uapi::VFIO_API_VERSION
            )));
        }
        // SAFETY: CHECK_EXTENSION takes an integer.
        let offered = unsafe { ioctl(container.as_raw_fd(), CHECK_EXTENSION, iommu_type.into()) }?;
        if offered != 1 {
            let name = if iommu_type == uapi::VFIO_NOIOMMU_IOMMU {
                "no-IOMMU (is vfio.enable_unsafe_noiommu_mode set?)"
            } else {
                "Type1v2"
            };
            return Err(io::Error::other(format!(
                "the VFIO container offers no {name} IOMMU"
            )));
        }
        let group = open_rw(group_path)?;
        let mut status = uapi::vfio_group_status {
            argsz: size_of::<uapi::vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: GROUP_GET_STATUS takes `struct vfio_group_status`, whose argsz is set.
        unsafe { ioctl_with(group.as_raw_fd(), GROUP_GET_STATUS, &mut status) }?;
        if status.flags & uapi::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other("IOMMU group not viable"));
        }
        let mut cfd: i32 = container.as_raw_fd();
        // SAFETY: GROUP_SET_CONTAINER takes a pointer to the container FD (an `i32`).
        unsafe { ioctl_with(group.as_raw_fd(), GROUP_SET_CONTAINER, &mut cfd) }?;
        // SAFETY: SET_IOMMU takes an integer.
        unsafe { ioctl(container.as_raw_fd(), SET_IOMMU, iommu_type.into()) }?;
        let name = CString::new(name).map_err(|_| io::Error::other("bad device name"))?;
        // SAFETY: GET_DEVICE_FD takes a NUL-terminated string.
        let fd = unsafe { ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD, name.as_ptr() as _) }?;
        let iommu = if iommu_type == uapi::VFIO_NOIOMMU_IOMMU {
            IommuCtx::NoIommu
        } else {
            IommuCtx::Container(container.as_raw_fd())
        };
        Ok(Device {
            // SAFETY: The kernel returned a new descriptor we now own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            _keep: vec![group, container],
            iommu,
            offsets: Mutex::default(),
        })
    }

    /// Opens the mdev `uuid` through its device cdev
    /// (`/dev/vfio/devices/vfioN`) bound to a new iommufd with an IOAS.
    pub fn open_cdev(uuid: &str) -> io::Result<Device> {
        let dir = format!("/sys/bus/mdev/devices/{uuid}/vfio-dev");
        let name = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("vfio"))
            .ok_or_else(|| io::Error::other(format!("no vfioN in {dir}")))?;
        let fd = open_rw(&format!("/dev/vfio/devices/{name}"))?;
        let iommufd = open_rw("/dev/iommu")?;
        let mut bind = uapi::vfio_device_bind_iommufd {
            argsz: BIND_IOMMUFD_ARGSZ,
            iommufd: iommufd.as_raw_fd(),
            ..Default::default()
        };
        // SAFETY: DEVICE_BIND_IOMMUFD takes `struct vfio_device_bind_iommufd`; argsz is 6.12's
        // size, within the bindings' larger structure.
        unsafe { ioctl_with(fd.as_raw_fd(), DEVICE_BIND_IOMMUFD, &mut bind) }?;
        // struct iommu_ioas_alloc: size, flags, out_ioas_id.
        let mut ioas = [12u32, 0, 0];
        // SAFETY: IOMMU_IOAS_ALLOC takes `struct iommu_ioas_alloc` (three `u32`s, size set).
        unsafe { ioctl_with(iommufd.as_raw_fd(), IOMMU_IOAS_ALLOC, &mut ioas) }?;
        let mut attach = uapi::vfio_device_attach_iommufd_pt {
            argsz: ATTACH_IOMMUFD_PT_ARGSZ,
            pt_id: ioas[2],
            ..Default::default()
        };
        // SAFETY: DEVICE_ATTACH_IOMMUFD_PT takes `struct vfio_device_attach_iommufd_pt`; argsz is
        // 6.12's size, within the structure.
        unsafe { ioctl_with(fd.as_raw_fd(), DEVICE_ATTACH_IOMMUFD_PT, &mut attach) }?;
        let iommu = IommuCtx::Iommufd {
            fd: iommufd.as_raw_fd(),
            ioas: ioas[2],
        };
        Ok(Device {
            fd,
            _keep: vec![iommufd],
            iommu,
            offsets: Mutex::default(),
        })
    }

    /// The device FD's number.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `VFIO_DEVICE_FEATURE_MIGRATION`: the flag set.
    pub fn migration_flags(&self) -> io::Result<u64> {
        let mut f =
            Feature::<uapi::vfio_device_feature_migration>::new(FEATURE_GET | FEATURE_MIGRATION);
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both (`Feature::new`).
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }?;
        Ok(f.data.flags)
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
    pub fn data_size(&self) -> io::Result<u64> {
        let mut f = Feature::<uapi::vfio_device_feature_mig_data_size>::new(
            FEATURE_GET | FEATURE_MIG_DATA_SIZE,
        );
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both (`Feature::new`).
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }?;
        Ok(f.data.stop_copy_length)
    }

    /// A PROBE of `feature`.
    pub fn probe(&self, feature: u32, get_set: u32) -> io::Result<()> {
        let mut f = Feature::<u64>::new(FEATURE_PROBE | get_set | feature);
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both (`Feature::new`).
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }.map(|_| ())
    }

    /// GET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`.
    pub fn state(&self) -> io::Result<u32> {
        let mut f = Feature::<uapi::vfio_device_feature_mig_state>::new(
            FEATURE_GET | FEATURE_MIG_DEVICE_STATE,
        );
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both (`Feature::new`).
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }?;
        Ok(f.data.device_state)
    }

    /// SET of `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`: the data FD, if any.
    pub fn set_state(&self, state: u32) -> io::Result<Option<OwnedFd>> {
        let mut f = Feature::<uapi::vfio_device_feature_mig_state>::new(
            FEATURE_SET | FEATURE_MIG_DEVICE_STATE,
        );
        f.data.device_state = state;
        f.data.data_fd = -1;
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both (`Feature::new`).
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }?;
        let fd = f.data.data_fd;
        // SAFETY: A non-negative data_fd is a new descriptor we now own.
        Ok((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `VFIO_DEVICE_RESET`.
    pub fn reset(&self) -> io::Result<()> {
        // SAFETY: RESET takes no argument.
        unsafe { ioctl(self.raw(), DEVICE_RESET, 0) }.map(|_| ())
    }

    /// `VFIO_DEVICE_GET_REGION_INFO`: (flags, size, offset).
    pub fn region(&self, index: u32) -> io::Result<(u32, u64, u64)> {
        let mut info = uapi::vfio_region_info {
            argsz: size_of::<uapi::vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: DEVICE_GET_REGION_INFO takes `struct vfio_region_info`, whose argsz is set.
        unsafe { ioctl_with(self.raw(), DEVICE_GET_REGION_INFO, &mut info) }?;
        Ok((info.flags, info.size, info.offset))
    }

    fn file(&self) -> std::mem::ManuallyDrop<fs::File> {
        // SAFETY: A borrowed view of our descriptor, never closed by it.
        std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(self.raw()) })
    }

    /// Where `offset` of region `index` is in the device FD: the region's
    /// offset from the kernel's region info (vfio-pci's layout is the
    /// driver's choice, not the uAPI's), plus `offset`. A region the
    /// kernel does not know fails with its errno.
    pub fn region_offset(&self, index: u32, offset: u64) -> io::Result<u64> {
        let known = self
            .offsets
            .lock()
            .map_err(|_| io::Error::other("region offsets lock poisoned"))?
            .get(&index)
            .copied();
        let base = match known {
            Some(base) => base,
            None => {
                let (_, _, base) = self.region(index)?;
                if let Ok(mut map) = self.offsets.lock() {
                    map.insert(index, base);
                }
                base
            }
        };
        base.checked_add(offset)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Reads region `index` at `offset`.
    pub fn read_at(&self, index: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.region_offset(index, offset)?;
        self.file().read_exact_at(buf, at)
    }

    /// Writes region `index` at `offset`.
    pub fn write_at(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = self.region_offset(index, offset)?;
        self.file().write_all_at(data, at)
    }

    /// A 32-bit read of BAR0.
    pub fn read_reg(&self, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_at(BAR0, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A 32-bit write of BAR0.
    pub fn write_reg(&self, offset: u64, value: u32) -> io::Result<()> {
        self.write_at(BAR0, offset, &value.to_le_bytes())
    }

    /// A 32-bit read of the configuration space.
    pub fn config32(&self, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_at(CONFIG, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A 32-bit write of the configuration space.
    pub fn set_config32(&self, offset: u64, value: u32) -> io::Result<()> {
        self.write_at(CONFIG, offset, &value.to_le_bytes())
    }

    /// Maps `size` bytes of this process's memory at `vaddr` at `iova` in
    /// the device's IOMMU context (`VFIO_IOMMU_MAP_DMA` on the container,
    /// `IOMMU_IOAS_MAP` on the iommufd), readable, and writable if
    /// `writable`. The memory must stay mapped in the process until it is
    /// unmapped here.
    pub fn map_dma(&self, iova: u64, vaddr: u64, size: u64, writable: bool) -> io::Result<()> {
        match self.iommu {
            IommuCtx::Container(fd) => {
                let mut map = uapi::vfio_iommu_type1_dma_map {
                    argsz: size_of::<uapi::vfio_iommu_type1_dma_map>() as u32,
                    flags: uapi::VFIO_DMA_MAP_FLAG_READ
                        | if writable {
                            uapi::VFIO_DMA_MAP_FLAG_WRITE
                        } else {
                            0
                        },
                    vaddr,
                    iova,
                    size,
                };
                // SAFETY: MAP_DMA takes `struct vfio_iommu_type1_dma_map`, argsz set.
                unsafe { ioctl_with(fd, IOMMU_MAP_DMA, &mut map) }.map(|_| ())
            }
            IommuCtx::Iommufd { fd, ioas } => {
                let mut map = IoasMap {
                    size: size_of::<IoasMap>() as u32,
                    flags: IOAS_MAP_FIXED_IOVA
                        | IOAS_MAP_READABLE
                        | if writable { IOAS_MAP_WRITEABLE } else { 0 },
                    ioas_id: ioas,
                    user_va: vaddr,
                    length: size,
                    iova,
                    ..Default::default()
                };
                // SAFETY: IOAS_MAP takes `struct iommu_ioas_map`, size set.
                unsafe { ioctl_with(fd, IOMMU_IOAS_MAP, &mut map) }.map(|_| ())
            }
            IommuCtx::NoIommu => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Unmaps `[iova, iova + size)` from the device's IOMMU context; the
    /// bytes unmapped.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<u64> {
        match self.iommu {
            IommuCtx::Container(fd) => {
                let mut unmap = uapi::vfio_iommu_type1_dma_unmap {
                    argsz: size_of::<uapi::vfio_iommu_type1_dma_unmap>() as u32,
                    iova,
                    size,
                    ..Default::default()
                };
                // SAFETY: UNMAP_DMA takes `struct vfio_iommu_type1_dma_unmap`, argsz set
                // (no bitmap flag, so nothing past it).
                unsafe { ioctl_with(fd, IOMMU_UNMAP_DMA, &mut unmap) }?;
                Ok(unmap.size)
            }
            IommuCtx::Iommufd { fd, ioas } => {
                let mut unmap = IoasUnmap {
                    size: size_of::<IoasUnmap>() as u32,
                    ioas_id: ioas,
                    iova,
                    length: size,
                };
                // SAFETY: IOAS_UNMAP takes `struct iommu_ioas_unmap`, size set.
                unsafe { ioctl_with(fd, IOMMU_IOAS_UNMAP, &mut unmap) }?;
                Ok(unmap.length)
            }
            IommuCtx::NoIommu => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_START` for `ranges` (IOVA,
    /// length) at `page_size`; the page size the device chose.
    pub fn dma_logging_start(&self, ranges: &[(u64, u64)], page_size: u64) -> io::Result<u64> {
        let ranges: Vec<uapi::vfio_device_feature_dma_logging_range> = ranges
            .iter()
            .map(|&(iova, length)| uapi::vfio_device_feature_dma_logging_range { iova, length })
            .collect();
        let mut f = Feature::<uapi::vfio_device_feature_dma_logging_control>::new(
            FEATURE_SET | FEATURE_DMA_LOGGING_START,
        );
        f.data.page_size = page_size;
        f.data.num_ranges = ranges.len() as u32;
        f.data.ranges = ranges.as_ptr() as u64;
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both; `ranges` points at `num_ranges` ranges that outlive
        // the call.
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }?;
        Ok(f.data.page_size)
    }

    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`.
    pub fn dma_logging_stop(&self) -> io::Result<()> {
        let mut f = Feature::<()>::new(FEATURE_SET | FEATURE_DMA_LOGGING_STOP);
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header; STOP has no data.
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }.map(|_| ())
    }

    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT` of `[iova, iova + length)`
    /// at `page_size`: one bit per page, set for the dirty ones (and
    /// cleared in the device's log).
    pub fn dma_logging_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> io::Result<Vec<u64>> {
        let pages = length.div_ceil(page_size);
        let mut bitmap = vec![0u64; pages.div_ceil(64) as usize];
        let mut f = Feature::<uapi::vfio_device_feature_dma_logging_report>::new(
            FEATURE_GET | FEATURE_DMA_LOGGING_REPORT,
        );
        f.data.iova = iova;
        f.data.length = length;
        f.data.page_size = page_size;
        f.data.bitmap = bitmap.as_mut_ptr() as u64;
        // SAFETY: DEVICE_FEATURE takes a `vfio_device_feature` header followed by the feature's
        // structure, argsz covering both; `bitmap` has a bit for each page of the range and
        // outlives the call.
        unsafe { ioctl_with(self.raw(), DEVICE_FEATURE, &mut f) }?;
        Ok(bitmap)
    }

    /// `VFIO_DEVICE_SET_IRQS` on the request index with an eventfd (or -1).
    pub fn set_req_eventfd(&self, efd: i32) -> io::Result<()> {
        self.set_irqs(
            REQ_IRQ_INDEX,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &efd.to_ne_bytes(),
        )
    }

    /// `VFIO_DEVICE_SET_IRQS` with `data` after the header; argsz covers it.
    pub fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let hdr = size_of::<uapi::vfio_irq_set>();
        let argsz = hdr + data.len();
        // u32 words keep the header aligned.
        let mut set = vec![0u32; argsz.div_ceil(4)];
        let head = uapi::vfio_irq_set {
            argsz: argsz as u32,
            flags,
            index,
            start,
            count,
            ..Default::default()
        };
        // SAFETY: `set` holds at least `hdr + data.len()` bytes, is 4-byte
        // aligned (what `vfio_irq_set` needs) and nothing else refers to it.
        unsafe {
            std::ptr::write(set.as_mut_ptr().cast::<uapi::vfio_irq_set>(), head);
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                set.as_mut_ptr().cast::<u8>().add(hdr),
                data.len(),
            );
        }
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
pub fn precopy_info(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let mut info = uapi::vfio_precopy_info {
        argsz: size_of::<uapi::vfio_precopy_info>() as u32,
        ..Default::default()
    };
    // SAFETY: MIG_GET_PRECOPY_INFO takes `struct vfio_precopy_info`, whose argsz is set.
    unsafe { ioctl_with(fd.as_raw_fd(), MIG_GET_PRECOPY_INFO, &mut info) }?;
    Ok((info.initial_bytes, info.dirty_bytes))
}

/// One `pwrite(2)` into region `index` at `offset`: the count written.
pub fn pwrite(dev: &Device, index: u32, offset: u64, data: &[u8]) -> io::Result<usize> {
    let at = dev.region_offset(index, offset)?;
    dev.file().write_at(data, at)
}

/// One `read(2)` on a data FD.
pub fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// One `write(2)` on a data FD.
pub fn write_fd(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for `data.len()` bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `data` to a data FD, retrying short writes.
pub fn write_all_fd(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match write_fd(fd, &data[off..])? {
            0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
            n => off += n,
        }
    }
    Ok(())
}

/// `poll(2)` for `events` on one FD; the returned events.
pub fn poll_fd(fd: RawFd, events: i16, timeout_ms: i32) -> io::Result<i16> {
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

/// The name of a uAPI device state.
pub fn state_name(s: u32) -> &'static str {
    match s {
        state::ERROR => "ERROR",
        state::STOP => "STOP",
        state::RUNNING => "RUNNING",
        state::STOP_COPY => "STOP_COPY",
        state::RESUMING => "RESUMING",
        state::RUNNING_P2P => "RUNNING_P2P",
        state::PRE_COPY => "PRE_COPY",
        state::PRE_COPY_P2P => "PRE_COPY_P2P",
        _ => "unknown",
    }
}

/// The names of the bits of a migration flag set, `|`-separated.
pub fn flags_name(flags: u64) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (MIGRATION_STOP_COPY, "STOP_COPY"),
        (MIGRATION_P2P, "P2P"),
        (MIGRATION_PRE_COPY, "PRE_COPY"),
    ] {
        if flags & bit != 0 {
            v.push(name);
        }
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The ioctl numbers against the values `<linux/vfio.h>` gives them
    /// (`_IO(';', 100 + n)`), written out, not computed.
    #[test]
    fn ioctl_numbers() {
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(CHECK_EXTENSION, 0x3b65);
        assert_eq!(GROUP_GET_STATUS, 0x3b67);
        assert_eq!(DEVICE_FEATURE, 0x3b75);
        assert_eq!(MIG_GET_PRECOPY_INFO, 0x3b79);
        assert_eq!(DEVICE_RESET, 0x3b6f);
        assert_eq!(DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
        assert_eq!(IOMMU_IOAS_ALLOC, 0x3b81);
        assert_eq!(BIND_IOMMUFD_ARGSZ, 16);
        assert_eq!(ATTACH_IOMMUFD_PT_ARGSZ, 12);
        assert_eq!(
            size_of::<Feature<uapi::vfio_device_feature_mig_state>>(),
            16
        );
        assert_eq!(
            size_of::<Feature<uapi::vfio_device_feature_migration>>(),
            16
        );
    }

    #[test]
    fn names() {
        assert_eq!(flags_name(7), "STOP_COPY|P2P|PRE_COPY");
        assert_eq!(flags_name(0), "none");
        assert_eq!(state_name(3), "STOP_COPY");
        assert_eq!(state_name(99), "unknown");
    }
}
