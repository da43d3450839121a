/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C API the rmdev framework binds to. bindgen turns this header into
 * Rust declarations at build time (see rmdev.mk), against the very kernel
 * tree the module is built for, so a kernel whose structures or prototypes
 * changed fails to build instead of misbehaving. Only `core/bindings.rs`
 * includes the result.
 */
#include <linux/anon_inodes.h>
#include <linux/device.h>
#include <linux/eventfd.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/interrupt.h>
#include <linux/interval_tree.h>
#include <linux/iova_bitmap.h>
#include <linux/mdev.h>
#include <linux/pagemap.h>
#include <linux/pci.h>
#include <linux/io.h>
#include <linux/poll.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/uuid.h>
#include <linux/vfio.h>
#include <linux/wait.h>

#include "helpers.h"

/* Constants behind macros that bindgen cannot evaluate. */
const size_t RMDEV_PAGE_SIZE = PAGE_SIZE;
const unsigned int RMDEV_EPOLLIN = EPOLLIN | EPOLLRDNORM;
const unsigned int RMDEV_EPOLLHUP = EPOLLHUP;
const unsigned int RMDEV_O_RDONLY = O_RDONLY;
const unsigned int RMDEV_O_WRONLY = O_WRONLY;
const unsigned int RMDEV_PCI_IRQ_MSIX = PCI_IRQ_MSIX;
const unsigned long RMDEV_IRQF_ONESHOT = IRQF_ONESHOT;

/* ioctl numbers: _IO() is a function-like macro bindgen cannot expand. */
const unsigned int RMDEV_VFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
const unsigned int RMDEV_VFIO_DEVICE_GET_REGION_INFO = VFIO_DEVICE_GET_REGION_INFO;
const unsigned int RMDEV_VFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
const unsigned int RMDEV_VFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;
const unsigned int RMDEV_VFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
const unsigned int RMDEV_VFIO_MIG_GET_PRECOPY_INFO = VFIO_MIG_GET_PRECOPY_INFO;
