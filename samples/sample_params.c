// SPDX-License-Identifier: GPL-2.0
/*
 * Module parameters of the rmdev sample. Rust modules cannot declare module
 * parameters in 6.12, so they live here; sample.rs reads them through the
 * functions below: migration_flags and format_version at load time and at
 * each mdev's creation, max_record at each mdev's creation,
 * precopy_dirty_pages each time the device uses it.
 *
 * A change of migration_flags, format_version or max_record applies to the
 * mdevs created afterwards, so that tests try every flag set, format and
 * record size on one load of the module: each unload waits for the kobject
 * releases the lab's debug kernel delays by seconds.
 */
#include <linux/compiler.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

static unsigned int migration_flags = 7;

/* Implemented in sample.rs: whether a flag set is one the uAPI defines. */
bool rmdev_sample_flag_set_valid(unsigned int bits);

/*
 * At load, any number is stored and the module's init refuses a bad one,
 * saying why. Once the module runs, a write must be a valid flag set, and
 * may not switch between migrating (a flag set) and not (0): whether the
 * types carry a migration_version is fixed when they are registered. The
 * current value tells which the load chose, as no write can change that.
 */
static int migration_flags_set(const char *val, const struct kernel_param *kp)
{
	unsigned int bits;
	int ret;

	ret = kstrtouint(val, 0, &bits);
	if (ret)
		return ret;
	if (READ_ONCE(THIS_MODULE->state) == MODULE_STATE_LIVE) {
		if ((bits == 0) != (migration_flags == 0))
			return -EINVAL;
		if (bits && !rmdev_sample_flag_set_valid(bits))
			return -EINVAL;
	}
	WRITE_ONCE(migration_flags, bits);
	return 0;
}

static const struct kernel_param_ops migration_flags_ops = {
	.set = migration_flags_set,
	.get = param_get_uint,
};
module_param_cb(migration_flags, &migration_flags_ops, &migration_flags, 0644);
MODULE_PARM_DESC(migration_flags,
		 "VFIO migration flag set: 1 (STOP_COPY), 3 (+P2P), 5 (+PRE_COPY), 7 (all, default), 0 (no migration); a change between flag sets applies to mdevs created afterwards");

static unsigned int format_version = 1;
module_param(format_version, uint, 0644);
MODULE_PARM_DESC(format_version,
		 "Major version of the sample's migration data format (1 to 65535, default 1); a change applies to mdevs created afterwards");

static unsigned int max_record;
module_param(max_record, uint, 0644);
MODULE_PARM_DESC(max_record,
		 "For tests: the largest record payload the mdevs declare (0: default, 65544 bytes; smaller values make smaller records); a change applies to mdevs created afterwards");

static unsigned int precopy_dirty_pages;
module_param(precopy_dirty_pages, uint, 0644);
MODULE_PARM_DESC(precopy_dirty_pages,
		 "For tests: pages the device writes and dirties each time a pre-copy read finds nothing left to send (0: none, the default; capped at the device's pages)");

unsigned int rmdev_sample_migration_flags(void);
unsigned int rmdev_sample_format_version(void);
unsigned int rmdev_sample_max_record(void);
unsigned int rmdev_sample_precopy_dirty_pages(void);

/* The writable parameters are read with READ_ONCE: sysfs may write them at any time. */
unsigned int rmdev_sample_max_record(void)
{
	return READ_ONCE(max_record);
}

unsigned int rmdev_sample_migration_flags(void)
{
	return READ_ONCE(migration_flags);
}

unsigned int rmdev_sample_format_version(void)
{
	return READ_ONCE(format_version);
}

unsigned int rmdev_sample_precopy_dirty_pages(void)
{
	return READ_ONCE(precopy_dirty_pages);
}
