// stuckargv is a process whose /proc/PID/cmdline cannot be read for as long as it lives: the
// read blocks on the process's mmap lock, as it does in production when a process is stuck in a
// page fault on a hung FUSE or NFS mount.
//
//	stuckargv MOUNTPOINT READYFILE
//
// It serves a FUSE file system at MOUNTPOINT (an empty directory; run it in a private mount
// namespace) whose one file, "f", never answers a read, and maps that file. Its child then reads
// the mapping through /proc/PARENT/mem: the kernel holds the parent's mmap lock for reading while
// it waits for the FUSE read (once a fatal signal arrives, uninterruptibly). A thread of the parent
// then calls mmap(2), which queues for the mmap lock as a writer, so every later reader of the lock
// (a read of /proc/PARENT/cmdline or /proc/PARENT/environ, which waits killably) queues behind it
// for good, while /proc/PARENT/comm, stat and status still read at once. Once both are stuck it
// creates READYFILE and sleeps. It does not handle SIGTERM: dying closes /dev/fuse, which aborts
// the FUSE connection, fails the pending read, and so lets the child and every blocked reader go
// (the child then dies of the signal it got meanwhile, or exits).
//
// Why not userfaultfd: a read of /proc/PID/cmdline faults in the target's memory without
// FAULT_FLAG_ALLOW_RETRY, and a userfaultfd then fails the fault (SIGBUS) rather than waiting; nor
// a file mapping under argv: the kernel reads command lines only from anonymous mappings
// (FOLL_ANON). Needs root (mount, /dev/fuse, /proc/PID/mem, mlockall). Build it with
// -pthread -Wl,-z,now (no lazy binding: see mlockall below).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FILE_INO 2
#define FILE_SIZE (1 << 20)

static int fuse_fd;
static long page_size;

static void die(const char *what) {
	fprintf(stderr, "stuckargv: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void reply(uint64_t unique, int error, const void *out, size_t len) {
	static char buf[4096];
	struct fuse_out_header h = {.len = sizeof h + len, .error = error, .unique = unique};
	memcpy(buf, &h, sizeof h);
	if (len)
		memcpy(buf + sizeof h, out, len);
	if (write(fuse_fd, buf, h.len) < 0 && errno != ENOENT) // ENOENT: the request was interrupted
		perror("stuckargv: reply");
}

static void fill_attr(uint64_t ino, struct fuse_attr *a) {
	memset(a, 0, sizeof *a);
	a->ino = ino;
	a->nlink = 1;
	a->blksize = 4096;
	if (ino == FUSE_ROOT_ID) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | 0444;
		a->size = FILE_SIZE;
		a->blocks = FILE_SIZE / 512;
	}
}

// serve answers everything the kernel needs to open and map "f", and never answers a read.
static void *serve(void *arg) {
	static char buf[FUSE_MIN_READ_BUFFER + (1 << 20)];
	(void)arg;
	for (;;) {
		ssize_t n = read(fuse_fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
				continue;
			if (errno == ENODEV) // unmounted
				return NULL;
			die("read /dev/fuse");
		}
		struct fuse_in_header *in = (struct fuse_in_header *)buf;
		void *body = buf + sizeof *in;
		switch (in->opcode) {
		case FUSE_INIT: {
			struct fuse_init_in *init = body;
			struct fuse_init_out out = {
				.major = FUSE_KERNEL_VERSION,
				.minor = FUSE_KERNEL_MINOR_VERSION,
				.max_readahead = init->max_readahead,
				.max_write = 4096,
				.time_gran = 1,
			};
			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_LOOKUP:
			if (in->nodeid == FUSE_ROOT_ID && strcmp(body, "f") == 0) {
				struct fuse_entry_out out = {
					.nodeid = FILE_INO, .entry_valid = 3600, .attr_valid = 3600};
				fill_attr(FILE_INO, &out.attr);
				reply(in->unique, 0, &out, sizeof out);
			} else {
				reply(in->unique, -ENOENT, NULL, 0);
			}
			break;
		case FUSE_GETATTR: {
			struct fuse_attr_out out = {.attr_valid = 3600};
			fill_attr(in->nodeid, &out.attr);
			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_OPEN: {
			struct fuse_open_out out = {.fh = 1};
			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_READ:      // the hung mount
		case FUSE_INTERRUPT: // of the read: not answered either
		case FUSE_FORGET:
		case FUSE_BATCH_FORGET:
		case FUSE_DESTROY:
			break;
		case FUSE_FLUSH:
			// ENOSYS turns flushes off: a close would otherwise wait for an answer, and a
			// close while dying, with this thread gone, would wait for good.
			reply(in->unique, -ENOSYS, NULL, 0);
			break;
		case FUSE_RELEASE:
			reply(in->unique, 0, NULL, 0);
			break;
		default:
			reply(in->unique, -ENOSYS, NULL, 0);
		}
	}
}

static pid_t mapper_tid;
static int go[2]; // the mapper starts when a byte arrives

// mapper calls mmap(2) until a call blocks, queued for the mmap lock behind the child's read.
static void *mapper(void *arg) {
	(void)arg;
	__atomic_store_n(&mapper_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	char c;
	while (read(go[0], &c, 1) != 1)
		;
	for (;;) {
		void *p = mmap(NULL, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED)
			munmap(p, page_size);
	}
	return NULL;
}

// state returns the state letter of /proc/PATH/stat, or 0.
static char state(const char *path) {
	char buf[512];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

static void sleep_ms(long ms) {
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

// wait_stuck waits until the task at path has been in uninterruptible (or killable) sleep for a
// while: until the child holds the mmap lock, the mapper's mmap calls go through.
static void wait_stuck(const char *path, const char *what) {
	int seen = 0;
	for (int i = 0; i < 1000; i++) {
		seen = state(path) == 'D' ? seen + 1 : 0;
		if (seen == 20)
			return;
		sleep_ms(5);
	}
	fprintf(stderr, "stuckargv: %s (%s) never got stuck\n", what, path);
	exit(1);
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: stuckargv MOUNTPOINT READYFILE\n");
		return 2;
	}
	page_size = sysconf(_SC_PAGESIZE);
	fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fuse_fd < 0)
		die("open /dev/fuse");
	char opts[128];
	snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0", fuse_fd);
	if (mount("stuckargv", argv[1], "fuse", MS_NOSUID | MS_NODEV, opts) < 0)
		die("mount");
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 << 10);
	pthread_t t;
	if (pthread_create(&t, &attr, serve, NULL) != 0)
		die("start the FUSE server");
	if (pipe2(go, O_CLOEXEC) < 0)
		die("pipe");
	if (pthread_create(&t, &attr, mapper, NULL) != 0)
		die("start the mapper");
	while (__atomic_load_n(&mapper_tid, __ATOMIC_ACQUIRE) == 0)
		sleep_ms(1);
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task/%d/stat", getpid(), (int)mapper_tid);
	char mem[64];
	snprintf(mem, sizeof mem, "/proc/%d/mem", getpid());
	int addr[2];
	if (pipe2(addr, O_CLOEXEC) < 0)
		die("pipe");
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(fuse_fd); // the connection must end with the parent
		int m = open(mem, O_RDONLY | O_CLOEXEC);
		uintptr_t region;
		if (m < 0 || read(addr[0], &region, sizeof region) != sizeof region)
			_exit(1);
		char c;
		pread(m, &c, 1, (off_t)region); // waits until the connection is aborted
		_exit(0);
	}
	// Once the mapper is queued, a page fault of this process that needs the mmap lock (a page
	// of the program or a library touched for the first time, a stack that grows, a write to a
	// page shared copy-on-write with the child) would queue as well, and so would the FUSE server
	// reading a request into a buffer that is not mapped writable yet: fault everything in (and
	// unshare it from the child) now. Not the FUSE mapping, made after, and never touched here.
	if (mlockall(MCL_CURRENT) < 0)
		die("mlockall");

	char file[4096];
	snprintf(file, sizeof file, "%s/f", argv[1]);
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open the FUSE file");
	char *region = mmap(NULL, 4 * page_size, PROT_READ, MAP_SHARED, fd, 0);
	if (region == MAP_FAILED)
		die("mmap the FUSE file");
	close(fd); // now, while the server answers (the mapping keeps the file)

	uintptr_t at = (uintptr_t)region;
	if (write(addr[1], &at, sizeof at) != sizeof at)
		die("start the child");
	char one = 1;
	if (write(go[1], &one, 1) != 1)
		die("start the mapper");
	wait_stuck(path, "the mmap(2) caller");

	int ready = open(argv[2], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (ready < 0)
		die("create the ready file");
	close(ready);
	for (;;)
		pause();
}
