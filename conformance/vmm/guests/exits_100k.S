/*
 * exits_100k: a real-mode guest that makes exactly ITERATIONS port-IO exits, for
 * measuring the cost of one KVM_RUN round trip.
 *
 * What the VMM must provide (the same load convention as `hello`):
 *   load gpa   0x1000; entry in real mode with CS selector 0, base 0, IP 0x1000.
 *   memory     RAM covering 0x1000 + the image's size (256 KiB as in `hello` is enough).
 *   registers  nothing besides CS:IP; the guest touches no memory and no stack.
 *   devices    port 0x80 (the POST-code port) swallows writes; port 0xf4 is the
 *              isa-debug-exit port that ends the run.
 *
 * Exits, in order:
 *   ITERATIONS (default 100000) IO outs of 1 byte, value 0x00, to port 0x80 -- always the
 *   same exit, so a trace can run-length encode them;
 *   then one IO out of 1 byte, value 0x00 (status 0), to port 0xf4.  The run ends there and
 *   not with HLT, because with an in-kernel irqchip HLT blocks inside KVM_RUN and never
 *   comes back to userspace.  A VMM that resumes the vCPU anyway sees HLT exits.
 *
 * ITERATIONS is the one build-time knob: `as --defsym ITERATIONS=N` (through
 * build.build("exits_100k", ITERATIONS=N)) makes the 10k or 1M variant.
 */

	.ifndef ITERATIONS
	.equ ITERATIONS, 100000
	.endif
	.if ITERATIONS < 1 || ITERATIONS > 0xffffffff
	.error "ITERATIONS must be between 1 and 2^32-1: the loop counts ECX down to zero"
	.endif

	.equ POST_PORT, 0x80		/* the exit being measured */
	.equ POST_VALUE, 0x00
	.equ DEBUG_EXIT_PORT, 0xf4	/* isa-debug-exit: ends the run */
	.equ DEBUG_EXIT_STATUS, 0x00

	.code16
	.text
	.globl _start
_start:
	/* 100000 does not fit in CX, so the counter is ECX (operand-size prefix in real mode). */
	mov $ITERATIONS, %ecx
	mov $POST_VALUE, %al
post_next:
	out %al, $POST_PORT
	dec %ecx
	jnz post_next

	mov $DEBUG_EXIT_STATUS, %al
	out %al, $DEBUG_EXIT_PORT

halted:
	hlt
	jmp halted
