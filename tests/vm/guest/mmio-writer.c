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
 * With DMA_PAGE (the sample's device only), each round also has the device
 * copy the counter into guest memory: the guest maps BAR0 (the sample's
 * registers) too, enables bus mastering, and after writing the word at WORD
 * (X) programs the sample's DMA registers to copy those 4 bytes of device
 * memory to guest-physical DMA_PAGE (B; no vIOMMU, so the IOVA is the
 * guest-physical address), then writes the counter to the word at WORD + 8
 * (Z). The vCPU never writes B: only the device's dirty log can tell QEMU
 * that B changed. Whenever the guest is stopped, Z <= B <= X and X - Z <= 1
 * (with STEP 1), on a correctly migrated target too. "rmdev-guest: dma"
 * with the first DMA command's status (0: it worked) follows "writing".
 *
 * With NIC_DST (an 82576 VF's mdev, vendors/igbvf.rs: BAR_REG 0x10, WORD a
 * forwarded register), the guest is also a minimal driver of the VF's
 * transmit queue 0: it enables bus mastering, programs a ring of TX_DESCS
 * advanced descriptors at guest-physical TX_RING (no vIOMMU: the IOVA is
 * the guest-physical address) and, each round, sends one frame to the MAC
 * address NIC_DST: EtherType 0x88b5, then "RMDV", the round number i
 * (little endian) and FRAME_LEN - 22 bytes of (i * 7 + k) & 0xff, so a
 * capture can check every frame's bytes and the sequence. Before it
 * reuses a descriptor it checks that the device completed it (DD); one
 * that is not is reported once as "rmdev-guest: stuck" with the round.
 *
 * Pacing. COUNT writes follow each other with a short busy delay, so that
 * the tests waiting for "done" wait little. Forever, the guest does one
 * round of writes per tick of the local APIC timer (TICK_NS, 20 ms: 50
 * rounds a second, enough for the tests to see the device change during a
 * migration) and sleeps in hlt between ticks: a busy loop takes a whole
 * vCPU of the lab VM, which has two, for as long as the guest runs
 * (minutes in tests/vm/libvirt-pair), and slows everything else there.
 * Each tick (a wake-up, the writes, the interrupt) costs the nested QEMU
 * under TCG 4 to 6 ms of the lab VM's CPU (measured 2026-12-03, QEMU's CPU
 * time over 20 s with a sample mdev: busy loop 102% of a vCPU; ticks of
 * 1 ms 94 to 118%, 10 ms 44%, 20 ms 28%, 50 ms 17%; halted 7%).
 * QEMU's local APIC timer counts at 1 GHz with the divider at 1 (hw/intc/
 * apic.c: one count per nanosecond of the virtual clock), as KVM's does,
 * so TICK_NS is the initial count. The virtual clock stops with the VM, so
 * a paused or migrated guest resumes its ticks where it was.
 *
 * Built with gcc -m32 -ffreestanding -nostdlib and these -D settings:
 *   BAR_REG   config offset of the BAR (0x10 BAR0, 0x18 BAR2)
 *   BAR_64    1 if the BAR is 64-bit
 *   WORD      byte offset of the counter in the BAR
 *   STEP      what each write adds to the counter
 *   PAGES     how many pages get the stride writes (0: none)
 *   COUNT     how many writes (0: forever)
 *   TICK_NS   forever: the time from one round of writes to the next
 *   DMA_PAGE  guest-physical address of the page the device copies into
 *             (0: no DMA)
 *   NIC_DST   the MAC address the frames go to, as a 48-bit number
 *             (0: no frames)
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
#ifndef TICK_NS
#define TICK_NS 20000000
#endif
#ifndef DMA_PAGE
#define DMA_PAGE 0
#endif
#ifndef NIC_DST
#define NIC_DST 0
#endif
/* The VF's transmit queue 0 (82576 datasheet) and the guest's ring. */
#define TDBAL 0x3800
#define TDBAH 0x3804
#define TDLEN 0x3808
#define TDH 0x3810
#define TDT 0x3818
#define TXDCTL 0x3828
#define TXDCTL_ENABLE (1u << 25)
#define TX_RING 0x300000u
#define TX_BUFS 0x301000u
#define TX_DESCS 16
#define FRAME_LEN 114
#define DTYP_DATA (3u << 20)
#define CMD_EOP (1u << 24)
#define CMD_IFCS (1u << 25)
#define CMD_RS (1u << 27)
#define CMD_DEXT (1u << 29)
#define STA_DD 1u
/* The sample's registers (samples/sample.rs, reg) and DMA_TO_GUEST. */
#define REGS_ADDR 0xD8000000u
#define DMA_IOVA_LO 0x20
#define DMA_IOVA_HI 0x24
#define DMA_LEN 0x28
#define DMA_OFFSET 0x2c
#define DMA_CMD 0x30
#define DMA_STATUS 0x34
#define DMA_TO_GUEST 1
#define MB_MAGIC 0x1BADB002u
#define BAR_ADDR 0xD0000000u
#define DELAY 2000
#define COM1 0x3f8
/* The local APIC (no paging: its registers are where they are). */
#define LAPIC 0xFEE00000u
#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3E0
#define LVT_PERIODIC (1u << 17)
#define TIMER_VECTOR 0x30

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

static void lapic_write(unsigned int reg, unsigned int value)
{
	*(volatile unsigned int *)(LAPIC + reg) = value;
}

static unsigned int lapic_read(unsigned int reg)
{
	return *(volatile unsigned int *)(LAPIC + reg);
}

/* 32-bit interrupt gates, and what lidt loads. */
static unsigned int idt[256][2];
static struct {
	unsigned short limit;
	unsigned int base;
} __attribute__((packed)) idtr;

/* The handler of every vector (below, next to start). */
void tick(void);

/*
 * Forever mode's timer: the local APIC interrupts every TICK_NS, and every
 * vector ends in tick, which only acknowledges it: the ticks just end the
 * main loop's hlt. Every vector, not just the timer's: the BIOS left the
 * 8259s at vectors 8 to 15, among the exceptions, and an interrupt already
 * on its way when they are masked arrives as one of those (or as the local
 * APIC's spurious vector), which must return like a tick does.
 */
static void timer_start(void)
{
	unsigned int handler = (unsigned int)tick;
	unsigned int cs, n;

	/* Mask both 8259s: the BIOS started the PIT on IRQ 0. */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	/* Multiboot promises a flat code segment, not its selector. */
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (n = 0; n < 256; n++) {
		idt[n][0] = (cs << 16) | (handler & 0xffff);
		/* Present, ring 0, 32-bit interrupt gate (IF off inside). */
		idt[n][1] = (handler & 0xffff0000) | 0x8e00;
	}
	idtr.limit = sizeof(idt) - 1;
	idtr.base = (unsigned int)idt;
	__asm__ volatile("lidt %0" : : "m"(idtr));
	/* Software enable, spurious vector 0xff. */
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x1ff);
	/* Divide by 1: one count per nanosecond in QEMU (see the top). */
	lapic_write(LAPIC_TIMER_DIV, 0xb);
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
	/* The initial count starts the timer. */
	lapic_write(LAPIC_TIMER_INIT, TICK_NS);
}

/*
 * Sleeps until the next tick. Interrupts are on only here: sti lets the
 * next instruction run before any interrupt, so a tick cannot come
 * between them and leave hlt waiting for the one after.
 */
static void wait_tick(void)
{
	__asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
}

/* Has the device copy the word at WORD of its memory to DMA_PAGE. */
static unsigned int dma_to_guest(void)
{
	volatile unsigned int *regs = (volatile unsigned int *)REGS_ADDR;

	regs[DMA_IOVA_LO / 4] = DMA_PAGE;
	regs[DMA_IOVA_HI / 4] = 0;
	regs[DMA_LEN / 4] = 4;
	regs[DMA_OFFSET / 4] = WORD;
	regs[DMA_CMD / 4] = DMA_TO_GUEST;
	return regs[DMA_STATUS / 4];
}

/* Programs the VF's transmit ring: disabled, base, length, head 0. */
static void nic_start(volatile unsigned int *bar)
{
	volatile unsigned int *ring = (volatile unsigned int *)TX_RING;
	unsigned int n;

	for (n = 0; n < TX_DESCS * 4; n++)
		ring[n] = 0;
	bar[TXDCTL / 4] = 0;
	bar[TDBAL / 4] = TX_RING;
	bar[TDBAH / 4] = 0;
	bar[TDLEN / 4] = TX_DESCS * 16;
	bar[TDH / 4] = 0;
	bar[TDT / 4] = 0;
	bar[TXDCTL / 4] = TXDCTL_ENABLE;
}

/* Sends frame number i (from 1) from descriptor (i - 1) % TX_DESCS. */
static void nic_send(volatile unsigned int *bar, unsigned int i)
{
	static int stuck;
	unsigned int slot = (i - 1) % TX_DESCS;
	volatile unsigned int *d = (volatile unsigned int *)(TX_RING + slot * 16);
	volatile unsigned char *f = (volatile unsigned char *)(TX_BUFS + slot * 256);
	unsigned long long dst = NIC_DST;
	unsigned int k;

	/* A descriptor used before must be done (DD) before it is reused. */
	if (i > TX_DESCS && !(d[3] & STA_DD) && !stuck) {
		report("stuck ", i);
		stuck = 1;
	}
	for (k = 0; k < 6; k++)
		f[k] = dst >> (8 * (5 - k));
	/* A locally administered source address. */
	f[6] = 0x02; f[7] = 0x52; f[8] = 0x4d; f[9] = 0x47; f[10] = 0x53; f[11] = 0x54;
	f[12] = 0x88; f[13] = 0xb5;
	f[14] = 'R'; f[15] = 'M'; f[16] = 'D'; f[17] = 'V';
	for (k = 0; k < 4; k++)
		f[18 + k] = i >> (8 * k);
	for (k = 22; k < FRAME_LEN; k++)
		f[k] = (i * 7 + k) & 0xff;
	d[0] = TX_BUFS + slot * 256;
	d[1] = 0;
	d[2] = FRAME_LEN | DTYP_DATA | CMD_DEXT | CMD_IFCS | CMD_EOP | CMD_RS;
	d[3] = FRAME_LEN << 14;
	/* The descriptor and frame in memory before the doorbell. */
	__asm__ volatile("" : : : "memory");
	bar[TDT / 4] = (slot + 1) % TX_DESCS;
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
	if (DMA_PAGE) {
		config_write(0x10, REGS_ADDR);
		/* Memory decoding and bus mastering on. */
		config_write(0x04, 0x0006);
	} else if (NIC_DST) {
		config_write(0x04, 0x0006);
		nic_start(bar);
	} else {
		/* Memory decoding on. */
		config_write(0x04, 0x0002);
	}
	report("bar ", bar[WORD / 4]);
	puts_serial("rmdev-guest: writing\n");
	if (COUNT == 0)
		timer_start();
	for (i = 1; COUNT == 0 || i <= COUNT; i++) {
		volatile unsigned int d;

		v = i * STEP;
		bar[WORD / 4] = v;
		if (DMA_PAGE) {
			unsigned int status = dma_to_guest();

			if (i == 1)
				report("dma ", status);
			bar[WORD / 4 + 2] = v;
		}
		if (PAGES)
			bar[(i % (PAGES ? PAGES : 1)) * 1024 + WORD / 4 + 1] = v;
		if (NIC_DST)
			nic_send(bar, i);
		if (COUNT == 0)
			wait_tick();
		else
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
	"	jmp 1b\n"
	"\n"
	/* Any interrupt (timer_start): acknowledge it, return. */
	".globl tick\n"
	"tick:\n"
	"	movl $0, 0xfee000b0\n"
	"	iret\n");
