// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers for the rmdev framework: wrappers of static inline functions and
 * macros that Rust cannot call in 6.12 (see helpers.h).
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/iova_bitmap.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/ratelimit.h>
#include <linux/vfio.h>

#include "helpers.h"

void rmdev_init_waitqueue_head(struct wait_queue_head *wq, const char *name)
{
	/*
	 * One lock class for every data-file wait queue of this module. The
	 * caller names it after the module (this file's KBUILD_MODNAME is its
	 * own object name, not the module's), so that a lockdep report says
	 * which vendor it is about.
	 */
	static struct lock_class_key key;

	__init_waitqueue_head(wq, name, &key);
}

bool rmdev_warn_ratelimit(void)
{
	static DEFINE_RATELIMIT_STATE(rs, DEFAULT_RATELIMIT_INTERVAL,
				      DEFAULT_RATELIMIT_BURST);

	return __ratelimit(&rs);
}

void rmdev_wake_up_poll(struct wait_queue_head *wq, __poll_t mask)
{
	wake_up_interruptible_poll(wq, mask);
}

void rmdev_poll_wait(struct file *file, struct wait_queue_head *wq, poll_table *pt)
{
	poll_wait(file, wq, pt);
}

void rmdev_eventfd_signal(struct eventfd_ctx *ctx)
{
	eventfd_signal(ctx);
}

void rmdev_sysfs_attr_init(struct attribute *attr)
{
	/* Attributes outside static memory need a lockdep key: one for all. */
	sysfs_attr_init(attr);
}

void rmdev_vfio_put_device(struct vfio_device *vdev)
{
	vfio_put_device(vdev);
}

struct pci_dev *rmdev_pci_physfn(struct pci_dev *pdev)
{
	return pci_physfn(pdev);
}

bool rmdev_driver_override_is(struct device *dev, const struct device_driver *drv)
{
	return device_match_driver_override(dev, drv) > 0;
}

void rmdev_page_copy(struct page *page, size_t offset, void *buf, size_t len, bool to_page)
{
	if (to_page)
		memcpy_to_page(page, offset, buf, len);
	else
		memcpy_from_page(buf, page, offset, len);
}

/* iova_bitmap_set() is exported in the IOMMUFD namespace. */
MODULE_IMPORT_NS(IOMMUFD);

void rmdev_iova_bitmap_set(struct iova_bitmap *bitmap, unsigned long iova, size_t length)
{
	iova_bitmap_set(bitmap, iova, length);
}

unsigned long rmdev_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void rmdev_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

/*
 * DMA for a PCI function (core/pci.rs): dma_map_page(), dma_mapping_error()
 * and dma_alloc_coherent() are static inline or macros.
 */
int rmdev_dma_set_mask64(struct device *dev)
{
	return dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
}

int rmdev_dma_map_page(struct device *dev, struct page *page, bool to_device_only,
		       dma_addr_t *addr)
{
	dma_addr_t a = dma_map_page(dev, page, 0, PAGE_SIZE,
				    to_device_only ? DMA_TO_DEVICE : DMA_BIDIRECTIONAL);

	if (dma_mapping_error(dev, a))
		return -ENOMEM;
	*addr = a;
	return 0;
}

void rmdev_dma_unmap_page(struct device *dev, dma_addr_t addr, bool to_device_only)
{
	dma_unmap_page(dev, addr, PAGE_SIZE,
		       to_device_only ? DMA_TO_DEVICE : DMA_BIDIRECTIONAL);
}

bool rmdev_dma_need_sync(struct device *dev, dma_addr_t addr)
{
	return dma_need_sync(dev, addr);
}

void *rmdev_dma_alloc_coherent(struct device *dev, size_t size, dma_addr_t *addr)
{
	return dma_alloc_coherent(dev, size, addr, GFP_KERNEL);
}

void rmdev_dma_free_coherent(struct device *dev, size_t size, void *cpu, dma_addr_t addr)
{
	dma_free_coherent(dev, size, cpu, addr);
}

void rmdev_msleep(unsigned int ms)
{
	msleep(ms);
}

/*
 * Events (core/pci.rs): wait_event_timeout() is a macro, and only it
 * checks the condition again after queueing the waiter, so that a signal
 * between the caller's check and its sleep is not lost.
 */
void rmdev_event_init(struct rmdev_event *e, const char *name)
{
	/* One lock class for the events of this module (as above). */
	static struct lock_class_key key;

	__init_waitqueue_head(&e->wq, name, &key);
	atomic_set(&e->count, 0);
}

void rmdev_event_signal(struct rmdev_event *e)
{
	atomic_inc(&e->count);
	wake_up_all(&e->wq);
}

int rmdev_event_count(struct rmdev_event *e)
{
	/* Acquire: the caller's check of the hardware comes after it. */
	return atomic_read_acquire(&e->count);
}

bool rmdev_event_wait(struct rmdev_event *e, int seen, unsigned int ms)
{
	return wait_event_timeout(e->wq, atomic_read(&e->count) != seen,
				  msecs_to_jiffies(ms)) != 0;
}
