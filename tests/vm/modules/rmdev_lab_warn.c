// SPDX-License-Identifier: GPL-2.0
/*
 * A lab fixture: loading this module fires one kernel WARNING, so a test can
 * prove that `tools/lab run` fails when the guest kernel log shows one.
 *
 * It is C because Linux 6.12's Rust has no WARN_ON: the warning needs the
 * architecture's __WARN_FLAGS trap, which only the C macro can emit.
 */
#include <linux/bug.h>
#include <linux/module.h>

static int __init rmdev_lab_warn_init(void)
{
	WARN(1, "rmdev_lab_warn: deliberate warning for the lab's log check\n");
	/* Refuse to stay loaded: the fixture leaves nothing behind. */
	return -EAGAIN;
}
module_init(rmdev_lab_warn_init);

MODULE_DESCRIPTION("rmdev lab fixture: fires a kernel WARNING on load");
MODULE_LICENSE("GPL");
