// SPDX-License-Identifier: GPL-2.0
/*
 * The rmdev sample's timers: one-shot hrtimers that expire in hard
 * interrupt context (on a kernel without PREEMPT_RT, like the lab's; with
 * it, hrtimers not marked HARD expire in a softirq, where sleeping
 * spinlocks are allowed), as a hardware device's interrupt handler would
 * run. The CMD_CHECKSUM_TIMER command raises the device's interrupt from
 * one, CMD_ENGINE_TIMER finishes a run of the simulated engine and wakes
 * the pre-copy reader from another, so that the tests show the
 * framework's Interrupts::raise and SaveWaker::wake working there. C
 * because Rust in 6.12 has no hrtimer abstraction.
 *
 * A timer calls fired(ctx) when it expires; rmdev_sample_timer_cancel()
 * and rmdev_sample_timer_free() wait for a running callback, so the
 * caller (SampleTimer in sample.rs) may free ctx after either.
 */
#include <linux/hrtimer.h>
#include <linux/slab.h>

struct rmdev_sample_timer {
	struct hrtimer timer;
	void (*fired)(const void *ctx);
	const void *ctx;
};

struct rmdev_sample_timer *rmdev_sample_timer_new(void (*fired)(const void *ctx),
						  const void *ctx);
void rmdev_sample_timer_start(struct rmdev_sample_timer *st, unsigned long ns);
void rmdev_sample_timer_cancel(struct rmdev_sample_timer *st);
void rmdev_sample_timer_free(struct rmdev_sample_timer *st);

static enum hrtimer_restart rmdev_sample_timer_expired(struct hrtimer *t)
{
	struct rmdev_sample_timer *st = container_of(t, struct rmdev_sample_timer, timer);

	st->fired(st->ctx);
	return HRTIMER_NORESTART;
}

struct rmdev_sample_timer *rmdev_sample_timer_new(void (*fired)(const void *ctx),
						  const void *ctx)
{
	struct rmdev_sample_timer *st = kzalloc(sizeof(*st), GFP_KERNEL);

	if (!st)
		return NULL;
	hrtimer_init(&st->timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL);
	st->timer.function = rmdev_sample_timer_expired;
	st->fired = fired;
	st->ctx = ctx;
	return st;
}

void rmdev_sample_timer_start(struct rmdev_sample_timer *st, unsigned long ns)
{
	hrtimer_start(&st->timer, ns_to_ktime(ns), HRTIMER_MODE_REL);
}

void rmdev_sample_timer_cancel(struct rmdev_sample_timer *st)
{
	hrtimer_cancel(&st->timer);
}

void rmdev_sample_timer_free(struct rmdev_sample_timer *st)
{
	hrtimer_cancel(&st->timer);
	kfree(st);
}
