// SPDX-License-Identifier: GPL-2.0
/*
 * The rmdev sample's interrupt timer: the CMD_CHECKSUM_TIMER command
 * raises the device's interrupt from an hrtimer, which expires in hard
 * interrupt context (on a kernel without PREEMPT_RT, like the lab's; with
 * it, hrtimers not marked HARD expire in a softirq, where sleeping
 * spinlocks are allowed), as a hardware device's interrupt handler would,
 * so that the tests show the framework's Interrupts::raise working there.
 * C because Rust in 6.12 has no hrtimer abstraction.
 *
 * The timer owns the pointer it is given (a boxed Interrupts handle of the
 * device, see SampleTimer in sample.rs) only in the sense that it passes it
 * to rmdev_sample_timer_fired(); rmdev_sample_timer_free() cancels the
 * timer, waiting for a running callback, before the caller frees it.
 */
#include <linux/hrtimer.h>
#include <linux/slab.h>

struct rmdev_sample_timer {
	struct hrtimer timer;
	const void *irqs;
};

/* Implemented in sample.rs: raises the interrupts `irqs` points to. */
void rmdev_sample_timer_fired(const void *irqs);

struct rmdev_sample_timer *rmdev_sample_timer_new(const void *irqs);
void rmdev_sample_timer_start(struct rmdev_sample_timer *st, unsigned long ns);
void rmdev_sample_timer_free(struct rmdev_sample_timer *st);

static enum hrtimer_restart rmdev_sample_timer_expired(struct hrtimer *t)
{
	struct rmdev_sample_timer *st = container_of(t, struct rmdev_sample_timer, timer);

	rmdev_sample_timer_fired(st->irqs);
	return HRTIMER_NORESTART;
}

struct rmdev_sample_timer *rmdev_sample_timer_new(const void *irqs)
{
	struct rmdev_sample_timer *st = kzalloc(sizeof(*st), GFP_KERNEL);

	if (!st)
		return NULL;
	hrtimer_init(&st->timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL);
	st->timer.function = rmdev_sample_timer_expired;
	st->irqs = irqs;
	return st;
}

void rmdev_sample_timer_start(struct rmdev_sample_timer *st, unsigned long ns)
{
	hrtimer_start(&st->timer, ns_to_ktime(ns), HRTIMER_MODE_REL);
}

void rmdev_sample_timer_free(struct rmdev_sample_timer *st)
{
	hrtimer_cancel(&st->timer);
	kfree(st);
}
