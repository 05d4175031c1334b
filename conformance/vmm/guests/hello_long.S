/*
 * hello_long: the `hello` guest's output produced from 64-bit long mode.
 *
 * The guest has no real-mode trampoline: the VMM enters it already in long mode.
 * What the VMM must provide:
 *   load gpa   0x1000; the image is linked there.
 *   entry      RIP 0x1000 (a virtual address equal to the load gpa via the identity map).
 *   paging     CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CR3 -> a 4-level identity map of at least
 *              the first 1 GiB, writable, supervisor.  0xb8000 must be mapped in those
 *              tables but backed by no memory slot, so the text-screen writes reach the
 *              VMM as MMIO exits.  The page tables themselves live in RAM the VMM chooses.
 *   CS         a 64-bit code segment (L=1, D=0, DPL 0); CPL 0 is what lets the guest use
 *              in/out without an IO bitmap.  Data segment bases are ignored in long mode.
 *   memory     RAM at gpa 0 covering at least the image (0x1000 + its size); 256 KiB as
 *              in `hello` is enough.
 *   stack      none used: no call, push or interrupt, so RSP may hold anything
 *              (RFLAGS.IF must be 0, as after reset, so no interrupt needs a stack or IDT).
 *   devices    a 16550 UART at 0x3f8 whose LSR (0x3fd) reads with THRE (bit 5) set.
 *
 * Exits, in order (the same as `hello`):
 *   for each of the 16 bytes of "Hello from KVM!\n": IO in of 1 byte from 0x3fd
 *   (repeated while THRE reads clear), then IO out of that byte to 0x3f8;
 *   then 15 MMIO writes of 2 bytes at 0xb8000 ... 0xb801c holding (character, 0x07)
 *   for "Hello from KVM!";
 *   then HLT, and HLT again each time the VMM resumes the vCPU.
 */

	.include "uart.inc"
	.equ TEXT_SCREEN, 0xb8000	/* VGA text buffer, identity-mapped */
	.equ TEXT_ATTRIBUTE, 0x07	/* light grey on black */

	.code64
	.text
	.globl _start
_start:
	/* lodsb/stosw must walk upwards whatever RFLAGS the VMM set. */
	cld

	lea message(%rip), %rsi
	mov $message_length, %ecx
	serial_write_string

	/* RDI walks the text screen; AH holds the attribute for every stosw. */
	mov $TEXT_SCREEN, %edi
	lea message(%rip), %rsi
	mov $screen_length, %ecx
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
