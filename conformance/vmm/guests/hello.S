/*
 * hello: a 16-bit real-mode guest for the `hello` scenario.
 *
 * What the VMM must provide:
 *   load gpa   0x1000; the image is linked there (absolute addresses inside it).
 *   entry      real mode (CR0.PE = 0), CS selector 0 with base 0, IP 0x1000.
 *   memory     RAM at gpa 0x0-0x3ffff (256 KiB).  0xb8000 must NOT be RAM, so the
 *              text-screen writes below reach the VMM as MMIO exits.
 *   devices    a 16550 UART at 0x3f8.  Its LSR (0x3fd) must read with THRE (bit 5)
 *              set, or the guest polls it forever.
 *   registers  nothing besides CS:IP; the guest loads DS and ES itself, clears DF
 *              itself and uses no stack, so SP and the other segments may hold anything.
 *
 * Exits, in order:
 *   for each of the 16 bytes of "Hello from KVM!\n": IO in of 1 byte from 0x3fd
 *   (repeated while THRE reads clear), then IO out of that byte to 0x3f8;
 *   then 15 MMIO writes of 2 bytes at 0xb8000, 0xb8002, ... 0xb801c holding
 *   (character, attribute 0x07) for "Hello from KVM!" -- the newline is a line break
 *   for the serial console, not a screen cell;
 *   then HLT, and HLT again each time the VMM resumes the vCPU.
 */

	.include "uart.inc"
	.equ TEXT_SEGMENT, 0xb800	/* real-mode segment whose base is 0xb8000 */
	.equ TEXT_ATTRIBUTE, 0x07	/* light grey on black */

	.code16
	.text
	.globl _start
_start:
	/* The VMM only promises CS; the message is addressed through DS (base 0) and
	 * lodsb/stosw must walk upwards whatever RFLAGS the VMM set. */
	xor %ax, %ax
	mov %ax, %ds
	cld

	mov $message, %si
	mov $message_length, %cx
	serial_write_string

	/* ES:DI addresses the text screen; AH holds the attribute for every stosw. */
	mov $TEXT_SEGMENT, %ax
	mov %ax, %es
	xor %di, %di
	mov $message, %si
	mov $screen_length, %cx
	mov $TEXT_ATTRIBUTE, %ah
screen_next_cell:
	lodsb
	stosw
	loop screen_next_cell

halted:
	hlt
	jmp halted

message:
	.ascii "Hello from KVM!\n"
message_end:
	.equ message_length, message_end - message
	.equ screen_length, message_length - 1
