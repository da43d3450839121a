// SPDX-License-Identifier: GPL-2.0
/*
 * Module parameters of rmdev_igbvf. Rust modules cannot declare module
 * parameters in 6.12, so they live here; igbvf.rs reads them at each probe.
 */
#include <linux/moduleparam.h>

static unsigned int format_minor;
module_param(format_minor, uint, 0644);
MODULE_PARM_DESC(format_minor,
		 "Minor version of the migration data format (0 to 65535, default 0), read when a VF is bound: for testing version checks");

unsigned int rmdev_igbvf_format_minor(void);

unsigned int rmdev_igbvf_format_minor(void)
{
	return format_minor;
}
