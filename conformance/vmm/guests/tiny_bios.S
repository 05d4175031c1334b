/*
 * tiny_bios: a 64 KiB firmware image with code at the reset vector, run unchanged by QEMU
 * (`-bios IMAGE`) and by our VMM, so the two VMMs can be compared on the same guest bytes.
 *
 * What the VMM must provide:
 *   mapping    the 65536-byte image at gpa 0xf0000-0xfffff and again at
 *              0xffff0000-0xffffffff (as a PC chipset decodes the BIOS ROM); read-only is fine,
 *              the guest never writes to it.
 *   entry      the x86 reset state: real mode, CS selector 0xf000 with base 0xffff0000,
 *              IP 0xfff0, i.e. the first instruction is at gpa 0xfffffff0 (image offset
 *              0xfff0).  This is the state KVM gives a freshly created vCPU.
 *   memory     no RAM is read or written and no stack is used, so the guest relies on no
 *              RAM contents.
 *   devices    a 16550 UART at 0x3f8 whose LSR (0x3fd) reads with THRE (bit 5) set;
 *              isa-debug-exit at 0xf4 (QEMU: -device isa-debug-exit,iobase=0xf4,iosize=0x04).
 *
 * Exits, in order:
 *   for each of the 39 bytes of "tiny-bios: hello from the reset vector\n": IO in of 1 byte
 *   from 0x3fd (repeated while THRE reads clear), then IO out of that byte to 0x3f8;
 *   then IO out of 1 byte, value 0x10, to 0xf4 -- QEMU exits with status (0x10 << 1) | 1 = 33;
 *   a VMM that resumes the vCPU afterwards sees HLT exits (interrupts off, so HLT is final).
 */

	.include "uart.inc"
	.equ DEBUG_EXIT_PORT, 0xf4	/* isa-debug-exit */
	.equ DEBUG_EXIT_STATUS, 0x10
	.equ BIOS_SEGMENT, 0xf000	/* real-mode segment whose base is 0xf0000, the image's start */
	.equ IMAGE_SIZE, 0x10000
	.equ RESET_VECTOR, 0xfff0	/* image offset of the reset vector: 16 bytes below the top */
	.equ ERASED_ROM, 0xff		/* unused ROM bytes, as in erased flash */

	.code16
	.text
	/* The image is linked at 0, so every label is its offset from the image start, which is
	 * also its IP with CS = BIOS_SEGMENT. */
main:
	/* The far jump below made CS = 0xf000; the message is in the image, so DS follows CS.
	 * lodsb must walk upwards whatever the reset RFLAGS were. */
	mov %cs, %ax
	mov %ax, %ds
	cld

	mov $message, %si
	mov $message_length, %cx
	serial_write_string

	mov $DEBUG_EXIT_STATUS, %al
	out %al, $DEBUG_EXIT_PORT

	/* Only reached under a VMM without isa-debug-exit: stop for good. */
	cli
halted:
	hlt
	jmp halted

message:
	.ascii "tiny-bios: hello from the reset vector\n"
message_end:
	.equ message_length, message_end - message

	/* At reset CS has base 0xffff0000 but selector 0xf000; the far jump reloads CS so that
	 * its base (0xf0000) matches its selector and the code runs from the low alias. */
	.org RESET_VECTOR, ERASED_ROM
	.globl _start
_start:
	ljmp $BIOS_SEGMENT, $main
	.org IMAGE_SIZE, ERASED_ROM
