// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers for the rmdev framework: wrappers of static inline functions and
 * macros that Rust cannot call in 6.12 (see helpers.h).
 */
#include <linux/vfio.h>

#include "helpers.h"

void rmdev_init_waitqueue_head(struct wait_queue_head *wq)
{
	/* One lock class for every rmdev data-file wait queue. */
	init_waitqueue_head(wq);
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
