// SPDX-License-Identifier: GPL-2.0
/*
 * A guest for the nested QEMU of the lab (tests/vm/t-qemu.sh): a multiboot
 * kernel that maps the vfio-pci device's BAR2 (the rmdev sample's memory)
 * and keeps writing it, so that a migration runs while the device changes.
 *
 * It writes a counter to the first word of the memory, and the same counter
 * to one page after another of the first 64, forever: the device is dirtied
 * at the guest's pace, but the dirty set stays bounded, so pre-copy
 * converges. The device sits in slot 4 of bus 0 (tests/vm/qemu_vfio.py).
 *
 * Built in the lab with gcc -m32 -ffreestanding -nostdlib (see t-qemu.sh).
 */

#define MB_MAGIC 0x1BADB002u
#define SLOT 4
#define BAR2 0xD0000000u
#define PAGES 64
#define DELAY 2000

/* The multiboot header: magic, flags (none: the loader reads the ELF). */
__attribute__((section(".multiboot"), used, aligned(4)))
static const unsigned int multiboot_header[3] = { MB_MAGIC, 0, -MB_MAGIC };

static inline void outl(unsigned short port, unsigned int value)
{
	__asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

static void config_write(unsigned int reg, unsigned int value)
{
	outl(0xcf8, 0x80000000u | (SLOT << 11) | reg);
	outl(0xcfc, value);
}

void writer(void);

void writer(void)
{
	volatile unsigned int *mem = (volatile unsigned int *)BAR2;
	unsigned int i;

	/* BAR2 is 64-bit: low and high dwords; then memory decoding on. */
	config_write(0x18, BAR2);
	config_write(0x1c, 0);
	config_write(0x04, 0x0002);
	for (i = 1;; i++) {
		volatile unsigned int d;

		mem[0] = i;
		mem[(i % PAGES) * 1024 + 1] = i;
		for (d = 0; d < DELAY; d++)
			;
	}
}

/* Multiboot enters with no stack: set one up below 2 MiB, then write. */
__asm__(".globl start\n"
	"start:\n"
	"	mov $0x1ff000, %esp\n"
	"	call writer\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n");
