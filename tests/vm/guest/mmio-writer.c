// SPDX-License-Identifier: GPL-2.0
/*
 * A guest for nested QEMUs that libvirt starts in the lab (tests/vm/
 * t-libvirt.sh): a multiboot kernel that finds the vfio-pci device in slot
 * SLOT of bus 0, reports on the first serial port what it sees there, and
 * then keeps writing one of its BARs, so that saves and migrations run while
 * the device changes.
 *
 * Serial lines (COM1), in this order:
 *   rmdev-guest: id VVVVDDDD            vendor and device ID from config space
 *   rmdev-guest: bar BBBBBBBB           the word at WORD in the BAR, as found
 *   rmdev-guest: writing                the writes begin
 * then it writes the counter i * STEP to the word at WORD, and, with PAGES,
 * to the word after it in one page after another of the first PAGES, until
 * COUNT writes (0: forever); then "rmdev-guest: done N" with the last value.
 *
 * Built with gcc -m32 -ffreestanding -nostdlib and these -D settings:
 *   BAR_REG   config offset of the BAR (0x10 BAR0, 0x18 BAR2)
 *   BAR_64    1 if the BAR is 64-bit
 *   WORD      byte offset of the counter in the BAR
 *   STEP      what each write adds to the counter
 *   PAGES     how many pages get the stride writes (0: none)
 *   COUNT     how many writes (0: forever)
 */

#ifndef SLOT
#define SLOT 4
#endif
#ifndef BAR_REG
#define BAR_REG 0x18
#endif
#ifndef BAR_64
#define BAR_64 1
#endif
#ifndef WORD
#define WORD 0
#endif
#ifndef STEP
#define STEP 1
#endif
#ifndef PAGES
#define PAGES 64
#endif
#ifndef COUNT
#define COUNT 0
#endif
#define MB_MAGIC 0x1BADB002u
#define BAR_ADDR 0xD0000000u
#define DELAY 2000
#define COM1 0x3f8

/* The multiboot header: magic, flags (none: the loader reads the ELF). */
__attribute__((section(".multiboot"), used, aligned(4)))
static const unsigned int multiboot_header[3] = { MB_MAGIC, 0, -MB_MAGIC };

static inline void outl(unsigned short port, unsigned int value)
{
	__asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

static inline unsigned int inl(unsigned short port)
{
	unsigned int v;

	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void outb(unsigned short port, unsigned char value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline unsigned char inb(unsigned short port)
{
	unsigned char v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void config_write(unsigned int reg, unsigned int value)
{
	outl(0xcf8, 0x80000000u | (SLOT << 11) | reg);
	outl(0xcfc, value);
}

static unsigned int config_read(unsigned int reg)
{
	outl(0xcf8, 0x80000000u | (SLOT << 11) | reg);
	return inl(0xcfc);
}

static void putc_serial(char c)
{
	/* Wait for the transmit holding register to be empty. */
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, c);
}

static void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void puthex(unsigned int v)
{
	int i;

	for (i = 28; i >= 0; i -= 4)
		putc_serial("0123456789abcdef"[(v >> i) & 0xf]);
}

static void report(const char *what, unsigned int v)
{
	puts_serial("rmdev-guest: ");
	puts_serial(what);
	puthex(v);
	puts_serial("\n");
}

void guest_main(void);

void guest_main(void)
{
	volatile unsigned int *bar = (volatile unsigned int *)BAR_ADDR;
	unsigned int id, i, v = 0;

	id = config_read(0x00);
	report("id ", (id << 16) | (id >> 16));
	config_write(BAR_REG, BAR_ADDR);
	if (BAR_64)
		config_write(BAR_REG + 4, 0);
	/* Memory decoding on. */
	config_write(0x04, 0x0002);
	report("bar ", bar[WORD / 4]);
	puts_serial("rmdev-guest: writing\n");
	for (i = 1; COUNT == 0 || i <= COUNT; i++) {
		volatile unsigned int d;

		v = i * STEP;
		bar[WORD / 4] = v;
		if (PAGES)
			bar[(i % (PAGES ? PAGES : 1)) * 1024 + WORD / 4 + 1] = v;
		for (d = 0; d < DELAY; d++)
			;
	}
	report("done ", v);
}

/* Multiboot enters with no stack: set one up below 2 MiB. */
__asm__(".globl start\n"
	"start:\n"
	"	mov $0x1ff000, %esp\n"
	"	call guest_main\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n");
