// SPDX-License-Identifier: GPL-2.0
/*
 * Module parameters of the rmdev sample. Rust modules cannot declare module
 * parameters in 6.12, so they live here; sample.rs reads them through the
 * functions below: migration_flags and max_record at load time,
 * format_version at load time and at each mdev's creation,
 * precopy_dirty_pages each time the device uses it.
 */
#include <linux/compiler.h>
#include <linux/moduleparam.h>

static unsigned int migration_flags = 7;
module_param(migration_flags, uint, 0444);
MODULE_PARM_DESC(migration_flags,
		 "VFIO migration flag set: 1 (STOP_COPY), 3 (+P2P), 5 (+PRE_COPY), 7 (all, default), 0 (no migration)");

static unsigned int format_version = 1;
module_param(format_version, uint, 0644);
MODULE_PARM_DESC(format_version,
		 "Major version of the sample's migration data format (1 to 65535, default 1); a change applies to mdevs created afterwards");

static unsigned int max_record;
module_param(max_record, uint, 0444);
MODULE_PARM_DESC(max_record,
		 "For tests: the largest record payload the mdevs declare (0: default, 65544 bytes; smaller values make smaller records)");

static unsigned int precopy_dirty_pages;
module_param(precopy_dirty_pages, uint, 0644);
MODULE_PARM_DESC(precopy_dirty_pages,
		 "For tests: pages the device writes and dirties each time a pre-copy read finds nothing left to send (0: none, the default; capped at the device's pages)");

unsigned int rmdev_sample_migration_flags(void);
unsigned int rmdev_sample_format_version(void);
unsigned int rmdev_sample_max_record(void);
unsigned int rmdev_sample_precopy_dirty_pages(void);

unsigned int rmdev_sample_max_record(void)
{
	return max_record;
}

unsigned int rmdev_sample_migration_flags(void)
{
	return migration_flags;
}

unsigned int rmdev_sample_format_version(void)
{
	return format_version;
}

unsigned int rmdev_sample_precopy_dirty_pages(void)
{
	/* Writable at any time through sysfs. */
	return READ_ONCE(precopy_dirty_pages);
}
