/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers for what Rust cannot reach in 6.12: static inline functions and
 * macros that need a call site (lock class keys). Each is a one-line wrapper.
 */
#ifndef RMDEV_HELPERS_H
#define RMDEV_HELPERS_H

#include <linux/eventfd.h>
#include <linux/poll.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/wait.h>

struct vfio_device;
struct pci_dev;
struct page;
struct iova_bitmap;
struct device;

void rmdev_init_waitqueue_head(struct wait_queue_head *wq, const char *name);
void rmdev_wake_up_poll(struct wait_queue_head *wq, __poll_t mask);
void rmdev_poll_wait(struct file *file, struct wait_queue_head *wq, poll_table *pt);
void rmdev_eventfd_signal(struct eventfd_ctx *ctx);
void rmdev_vfio_put_device(struct vfio_device *vdev);
void rmdev_sysfs_attr_init(struct attribute *attr);
bool rmdev_warn_ratelimit(void);
struct pci_dev *rmdev_pci_physfn(struct pci_dev *pdev);
bool rmdev_driver_override_is(struct device *dev, const struct device_driver *drv);
void rmdev_page_copy(struct page *page, size_t offset, void *buf, size_t len, bool to_page);
unsigned long rmdev_spin_lock_irqsave(spinlock_t *lock);
void rmdev_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);
void rmdev_iova_bitmap_set(struct iova_bitmap *bitmap, unsigned long iova, size_t length);
int rmdev_dma_set_mask64(struct device *dev);
int rmdev_dma_map_page(struct device *dev, struct page *page, bool to_device_only,
		       dma_addr_t *addr);
void rmdev_dma_unmap_page(struct device *dev, dma_addr_t addr, bool to_device_only);
bool rmdev_dma_need_sync(struct device *dev, dma_addr_t addr);
void *rmdev_dma_alloc_coherent(struct device *dev, size_t size, dma_addr_t *addr);
void rmdev_dma_free_coherent(struct device *dev, size_t size, void *cpu, dma_addr_t addr);
void rmdev_msleep(unsigned int ms);

/* An event a hardware interrupt signals and a driver waits for (pci.rs). */
struct rmdev_event {
	struct wait_queue_head wq;
	atomic_t count;
};
void rmdev_event_init(struct rmdev_event *e, const char *name);
void rmdev_event_signal(struct rmdev_event *e);
int rmdev_event_count(struct rmdev_event *e);
bool rmdev_event_wait(struct rmdev_event *e, int seen, unsigned int ms);

#endif
