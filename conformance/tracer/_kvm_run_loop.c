/*
 * The tracer's wait loop for KVM_RUN calls, compiled: Python's per-stop cost (~10 us) is what
 * made full mode slower than strace. See kvm_run_loop.py for the contract; in short:
 *
 * kvmc_wait() waits for tracee stops. A seccomp stop of ioctl(fd, KVM_RUN, 0) by a task whose
 * (task, fd) Python registered as a vCPU is handled here: one process_vm_readv copies the vCPU's
 * kvm_run header and PIO data (a "snapshot"); it is the exit of the task's previous KVM_RUN (read
 * at this, the task's next stop, as in the Python loop) and what the VMM wrote for this one; the
 * task resumes with PTRACE_CONT. Each finished call becomes a record (entry and exit snapshots);
 * a record equal to the batch's last one (same task, fd, bytes) only raises its repeat count.
 * Any other stop is returned to Python; a KVM_RUN of that task still pending goes with it as a
 * last record without exit (EXIT_LIVE): Python reads that exit from the stopped task, as its
 * own loop would.
 *
 * Failures: KVM_RUN's return value is not in kvm_run. Python reads KVM's kvm_userspace_exit
 * tracepoint; here, after each finished call, one non-blocking read of that trace_pipe tells
 * whether anything arrived. If so the bytes go to Python with a flush, and that record, like any
 * of a task Python marked, is flagged for Python to take its errno; flagged records never merge.
 *
 * The kernel ABI (kvm_run's offsets, KVM_EXIT_IO, KVM_RUN's number) comes from Python, which has
 * it from the generated headers: this file hard-codes none of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_HEADER 1024
#define MAX_IO 4096 /* KVM's PIO data is one page */
#define MAX_VCPUS_PER_TASK 8
#define FAILURE_BUFFER 65536

enum { KVMC_STOP = 0, KVMC_FLUSH = 1, KVMC_WAIT_ERROR = 2 };
enum { RECORD_ADOPTED = 1, RECORD_CHECK_FAILURE = 2, RECORD_EXIT_LIVE = 4 };

struct kvmc_layout {
    uint32_t header_size;      /* kvm_run up to the end of its exit union */
    uint32_t exit_reason;      /* offsetof(kvm_run, exit_reason) */
    uint32_t io;               /* offsetof(kvm_run, io) */
    uint32_t io_size;          /* offsetof(kvm_run.io, size) (u8) */
    uint32_t io_count;         /* offsetof(kvm_run.io, count) (u32) */
    uint32_t io_data_offset;   /* offsetof(kvm_run.io, data_offset) (u64) */
    uint32_t exit_io;          /* KVM_EXIT_IO */
    uint32_t pio_offset;       /* KVM_PIO_PAGE_OFFSET * page size */
    uint32_t io_guess;         /* PIO bytes always copied (the Python reader's guess) */
    uint32_t kvm_run;          /* KVM_RUN's request number */
    uint32_t ioctl_nr;         /* __NR_ioctl */
};

struct kvmc_snapshot {
    uint32_t io_length; /* bytes of io[] copied from run_address + pio_offset */
    uint8_t header[MAX_HEADER];
    uint8_t io[MAX_IO];
};

struct kvmc_record {
    int32_t tid, tgid, fd;
    uint32_t flags;
    uint64_t repeat;
    uint64_t run_address;
    struct kvmc_snapshot entry, exit;
};

struct kvmc_result {
    int32_t kind, tid, status, error;
    uint32_t records, failure_bytes;
};

struct vcpu {
    int fd;
    uint64_t run_address;
};

struct task {
    int tid, tgid;
    int in_use;
    int pending;         /* a KVM_RUN whose exit is read at the next stop */
    int adopted;         /* ... whose entry Python delivered */
    int failure_marked;  /* Python holds a failure for it */
    int pending_fd;
    uint64_t pending_run;
    struct vcpu vcpus[MAX_VCPUS_PER_TASK];
    int vcpu_count;
    struct kvmc_snapshot entry;
};

struct kvmc {
    struct kvmc_layout layout;
    int failure_fd;
    int signal_fd; /* Python's signal wakeup fd (read end), or -1 */
    struct task *tasks;
    int task_count, task_capacity;
    struct kvmc_record *records;
    uint32_t record_count, record_capacity;
    uint8_t failure_bytes[FAILURE_BUFFER];
    uint32_t failure_length;
    struct kvmc_snapshot scratch;
};

struct kvmc *kvmc_new(const struct kvmc_layout *layout, int failure_fd, uint32_t record_capacity)
{
    if (layout->header_size > MAX_HEADER || layout->io_guess > MAX_IO || record_capacity == 0)
        return NULL;
    struct kvmc *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return NULL;
    ctx->records = calloc(record_capacity, sizeof *ctx->records);
    if (ctx->records == NULL) {
        free(ctx);
        return NULL;
    }
    ctx->layout = *layout;
    ctx->failure_fd = failure_fd;
    ctx->signal_fd = -1;
    ctx->record_capacity = record_capacity;
    return ctx;
}

void kvmc_free(struct kvmc *ctx)
{
    if (ctx == NULL)
        return;
    free(ctx->tasks);
    free(ctx->records);
    free(ctx);
}

/* Python checks its mirror of struct kvmc_record against this. */
size_t kvmc_record_size(void) { return sizeof(struct kvmc_record); }

const struct kvmc_record *kvmc_records(const struct kvmc *ctx) { return ctx->records; }
const uint8_t *kvmc_failure_bytes(const struct kvmc *ctx) { return ctx->failure_bytes; }

static struct task *find_task(struct kvmc *ctx, int tid)
{
    for (int i = 0; i < ctx->task_count; i++)
        if (ctx->tasks[i].in_use && ctx->tasks[i].tid == tid)
            return &ctx->tasks[i];
    return NULL;
}

static struct task *task_for(struct kvmc *ctx, int tid, int tgid)
{
    struct task *task = find_task(ctx, tid);
    if (task != NULL)
        return task;
    for (int i = 0; i < ctx->task_count; i++)
        if (!ctx->tasks[i].in_use) {
            task = &ctx->tasks[i];
            break;
        }
    if (task == NULL) {
        if (ctx->task_count == ctx->task_capacity) {
            int capacity = ctx->task_capacity ? 2 * ctx->task_capacity : 8;
            struct task *grown = realloc(ctx->tasks, capacity * sizeof *grown);
            if (grown == NULL)
                return NULL;
            ctx->tasks = grown;
            ctx->task_capacity = capacity;
        }
        task = &ctx->tasks[ctx->task_count++];
    }
    memset(task, 0, sizeof *task);
    task->in_use = 1;
    task->tid = tid;
    task->tgid = tgid;
    return task;
}

/* Python: KVM_RUN on `fd` by `tid` may be handled here. Returns 0, or -1 (out of memory/room). */
int kvmc_register(struct kvmc *ctx, int tid, int tgid, int fd, uint64_t run_address)
{
    struct task *task = task_for(ctx, tid, tgid);
    if (task == NULL)
        return -1;
    for (int i = 0; i < task->vcpu_count; i++)
        if (task->vcpus[i].fd == fd) {
            task->vcpus[i].run_address = run_address;
            return 0;
        }
    if (task->vcpu_count == MAX_VCPUS_PER_TASK)
        return -1;
    task->vcpus[task->vcpu_count++] = (struct vcpu){fd, run_address};
    return 0;
}

/* Python: `tid` was resumed inside a KVM_RUN whose entry Python delivered; finish it here. */
int kvmc_adopt(struct kvmc *ctx, int tid, int tgid, int fd, uint64_t run_address)
{
    struct task *task = task_for(ctx, tid, tgid);
    if (task == NULL)
        return -1;
    task->pending = 1;
    task->adopted = 1;
    task->pending_fd = fd;
    task->pending_run = run_address;
    return 0;
}

/*
 * Python's signal handlers run only when this loop returns. Python writes a byte to its wakeup fd
 * (signal.set_wakeup_fd) when a signal arrives; with its read end here, the loop returns before
 * each waitpid once one has, as it does when waitpid itself is interrupted (EINTR).
 */
void kvmc_set_signal_fd(struct kvmc *ctx, int fd) { ctx->signal_fd = fd; }

static int signal_arrived(const struct kvmc *ctx)
{
    uint8_t drained[64];
    return ctx->signal_fd >= 0 && read(ctx->signal_fd, drained, sizeof drained) > 0;
}

/* Python is about to let a call of process `tgid` change fds or mappings: forget its vCPUs. */
void kvmc_forget_process(struct kvmc *ctx, int tgid)
{
    for (int i = 0; i < ctx->task_count; i++)
        if (ctx->tasks[i].in_use && ctx->tasks[i].tgid == tgid)
            ctx->tasks[i].vcpu_count = 0;
}

/* Python holds a failure of `tid`'s pending KVM_RUN: flag its record. */
void kvmc_mark_failure(struct kvmc *ctx, int tid)
{
    struct task *task = find_task(ctx, tid);
    if (task != NULL)
        task->failure_marked = 1;
}

static uint32_t read_u32(const uint8_t *at) { uint32_t v; memcpy(&v, at, 4); return v; }
static uint64_t read_u64(const uint8_t *at) { uint64_t v; memcpy(&v, at, 8); return v; }

/* kvm_run header and PIO data of a stopped task. Returns 0 or -1 (errno from the read). */
static int take_snapshot(struct kvmc *ctx, int tid, uint64_t run, struct kvmc_snapshot *into)
{
    const struct kvmc_layout *l = &ctx->layout;
    struct iovec local[2] = {{into->header, l->header_size}, {into->io, l->io_guess}};
    struct iovec remote[2] = {{(void *)run, l->header_size},
                              {(void *)(run + l->pio_offset), l->io_guess}};
    ssize_t copied = process_vm_readv(tid, local, 2, remote, 2, 0);
    if (copied < (ssize_t)l->header_size)
        return -1;
    into->io_length = (uint32_t)(copied - l->header_size);
    if (read_u32(into->header + l->exit_reason) != l->exit_io)
        return 0;
    const uint8_t *io = into->header + l->io;
    uint64_t length = (uint64_t)io[l->io_size] * read_u32(io + l->io_count);
    if (read_u64(io + l->io_data_offset) != l->pio_offset || length <= into->io_length)
        return 0;
    if (length > MAX_IO)
        length = MAX_IO;
    struct iovec rest_local = {into->io + into->io_length, length - into->io_length};
    struct iovec rest_remote = {(void *)(run + l->pio_offset + into->io_length),
                                length - into->io_length};
    copied = process_vm_readv(tid, &rest_local, 1, &rest_remote, 1, 0);
    if (copied > 0)
        into->io_length += (uint32_t)copied;
    return 0;
}

/* Copies the part of a snapshot that holds bytes: kvm_run's header and the PIO data read (a few
 * hundred bytes, not the 5 KiB of the buffers), once per KVM_RUN. */
static void copy_snapshot(struct kvmc_snapshot *to, const struct kvmc_snapshot *from,
                          uint32_t header_size)
{
    to->io_length = from->io_length;
    memcpy(to->header, from->header, header_size);
    memcpy(to->io, from->io, from->io_length);
}

static int same_snapshot(const struct kvmc_snapshot *a, const struct kvmc_snapshot *b,
                         uint32_t header_size)
{
    return a->io_length == b->io_length && memcmp(a->header, b->header, header_size) == 0 &&
           memcmp(a->io, b->io, a->io_length) == 0;
}

/* Did a failure event arrive? Its bytes are kept for Python. */
static int failure_bytes_arrived(struct kvmc *ctx)
{
    if (ctx->failure_fd < 0 || ctx->failure_length == FAILURE_BUFFER)
        return ctx->failure_length > 0;
    ssize_t got = read(ctx->failure_fd, ctx->failure_bytes + ctx->failure_length,
                       FAILURE_BUFFER - ctx->failure_length);
    if (got > 0)
        ctx->failure_length += (uint32_t)got;
    return got > 0;
}

/* The task's pending KVM_RUN ends with `exit` as its exit snapshot, or with none (NULL): Python
 * reads it at the stop returned with this record. Returns 1 when the batch must go to Python. */
static int finish_pending(struct kvmc *ctx, struct task *task, const struct kvmc_snapshot *exit)
{
    uint32_t flags = task->adopted ? RECORD_ADOPTED : 0;
    int flush = 0;
    if (exit == NULL)
        flags |= RECORD_EXIT_LIVE; /* Python reads its errno too */
    else if ((flush = failure_bytes_arrived(ctx)) || task->failure_marked)
        flags |= RECORD_CHECK_FAILURE;
    task->failure_marked = 0;
    task->pending = 0;
    task->adopted = 0;
    if (flags == 0 && ctx->record_count > 0) {
        struct kvmc_record *last = &ctx->records[ctx->record_count - 1];
        if (last->flags == 0 && last->tid == task->tid && last->fd == task->pending_fd &&
            same_snapshot(&last->entry, &task->entry, ctx->layout.header_size) &&
            same_snapshot(&last->exit, exit, ctx->layout.header_size)) {
            last->repeat++;
            return 0;
        }
    }
    struct kvmc_record *record = &ctx->records[ctx->record_count++];
    record->tid = task->tid;
    record->tgid = task->tgid;
    record->fd = task->pending_fd;
    record->flags = flags;
    record->repeat = 1;
    record->run_address = task->pending_run;
    if (!(flags & RECORD_ADOPTED))
        copy_snapshot(&record->entry, &task->entry, ctx->layout.header_size);
    if (exit != NULL)
        copy_snapshot(&record->exit, exit, ctx->layout.header_size);
    return flush || ctx->record_count == ctx->record_capacity;
}

static struct vcpu *kvm_run_vcpu(struct kvmc *ctx, struct task *task, int tid)
{
    struct __ptrace_syscall_info info; /* glibc's name for struct ptrace_syscall_info */
    if (ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof info, &info) <= 0 ||
        info.op != PTRACE_SYSCALL_INFO_SECCOMP || info.seccomp.nr != ctx->layout.ioctl_nr ||
        (uint32_t)info.seccomp.args[1] != ctx->layout.kvm_run || info.seccomp.args[2] != 0)
        return NULL;
    for (int i = 0; i < task->vcpu_count; i++)
        if (task->vcpus[i].fd == (int)info.seccomp.args[0])
            return &task->vcpus[i];
    return NULL;
}

/*
 * Wait until Python must act: a stop not handled here (KVMC_STOP: tid, status), records to
 * take or a signal handler to run (KVMC_FLUSH: the batch is full, failure bytes arrived, a
 * signal arrived), or waitpid failed (KVMC_WAIT_ERROR: errno in `error`; EINTR when a signal
 * reached the tracer).
 * Records and failure bytes start anew at each call: Python takes them before calling again.
 */
int kvmc_wait(struct kvmc *ctx, struct kvmc_result *result)
{
    ctx->record_count = 0;
    ctx->failure_length = 0;
    memset(result, 0, sizeof *result);
    for (;;) {
        int status;
        if (signal_arrived(ctx)) {
            result->kind = KVMC_FLUSH;
            break;
        }
        pid_t tid = waitpid(-1, &status, __WALL);
        if (tid < 0) {
            result->kind = KVMC_WAIT_ERROR;
            result->error = errno;
            break;
        }
        struct task *task = find_task(ctx, tid);
        int seccomp_stop =
            WIFSTOPPED(status) && status >> 8 == (SIGTRAP | PTRACE_EVENT_SECCOMP << 8);
        struct vcpu *vcpu = task != NULL && seccomp_stop ? kvm_run_vcpu(ctx, task, tid) : NULL;
        /* A thread that runs another vCPU than its pending call's goes through Python once: the
         * snapshot below is the exit of the pending call only when both use one kvm_run. */
        if (vcpu != NULL && task->pending && task->pending_run != vcpu->run_address)
            vcpu = NULL;
        if (vcpu != NULL && take_snapshot(ctx, tid, vcpu->run_address, &ctx->scratch) == 0) {
            int flush = task->pending ? finish_pending(ctx, task, &ctx->scratch) : 0;
            copy_snapshot(&task->entry, &ctx->scratch, ctx->layout.header_size);
            task->pending = 1;
            task->pending_fd = vcpu->fd;
            task->pending_run = vcpu->run_address;
            if (ptrace(PTRACE_CONT, tid, NULL, NULL) != 0) {
                /* Gone (SIGKILL): its end comes from waitpid and goes to Python. */
                task->pending = 0;
            }
            if (flush) {
                result->kind = KVMC_FLUSH;
                break;
            }
            continue;
        }
        if (task != NULL && task->pending) {
            if (WIFSTOPPED(status))
                finish_pending(ctx, task, NULL);
            task->pending = 0; /* a task that ended takes its KVM_RUN along, as in Python */
        }
        if (task != NULL && !WIFSTOPPED(status))
            task->in_use = 0;
        result->kind = KVMC_STOP;
        result->tid = tid;
        result->status = status;
        break;
    }
    result->records = ctx->record_count;
    result->failure_bytes = ctx->failure_length;
    return result->kind;
}
